"""ReviewItem: a pair of customers that may be one person, waiting for a human."""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

from identity.domain.customer import DomainError

REVIEW_NAMESPACE = uuid.UUID("9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")


class ReviewNotFound(DomainError):
    pass


class ReviewAlreadyDecided(DomainError):
    pass


def review_id_for(a: uuid.UUID, b: uuid.UUID) -> uuid.UUID:
    first, second = sorted((a, b))
    return uuid.uuid5(REVIEW_NAMESPACE, f"{first}:{second}")


class ReviewItem(Aggregate):
    class Opened(Aggregate.Created):
        customer_a: uuid.UUID
        customer_b: uuid.UUID
        score: float
        evidence: dict[str, Any]

    @event(Opened)
    def __init__(
        self, customer_a: uuid.UUID, customer_b: uuid.UUID, score: float, evidence: dict[str, Any]
    ) -> None:
        self.customer_a = customer_a
        self.customer_b = customer_b
        self.score = score
        self.evidence = evidence
        self.status = "open"
        self.decision: dict[str, Any] | None = None

    @classmethod
    def open(cls, a: uuid.UUID, b: uuid.UUID, score: float, evidence: dict[str, Any]) -> ReviewItem:
        first, second = sorted((a, b))
        return cls._create(
            cls.Opened,
            id=review_id_for(a, b),
            customer_a=first,
            customer_b=second,
            score=score,
            evidence=evidence,
        )

    class Approved(Aggregate.Event):
        decided_by: str
        merge_id: uuid.UUID

    class Rejected(Aggregate.Event):
        decided_by: str
        reason: str

    def _require_open(self) -> None:
        if self.status != "open":
            raise ReviewAlreadyDecided(f"review {self.id} is already {self.status}")

    def approve(self, decided_by: str, merge_id: uuid.UUID) -> None:
        self._require_open()
        self._approve(decided_by=decided_by, merge_id=merge_id)

    @event(Approved)
    def _approve(self, decided_by: str, merge_id: uuid.UUID) -> None:
        self.status = "approved"
        self.decision = {"decided_by": decided_by, "merge_id": merge_id.hex}

    def reject(self, decided_by: str, reason: str) -> None:
        self._require_open()
        self._reject(decided_by=decided_by, reason=reason)

    @event(Rejected)
    def _reject(self, decided_by: str, reason: str) -> None:
        self.status = "rejected"
        self.decision = {"decided_by": decided_by, "reason": reason}


INTAKE_NAMESPACE = uuid.UUID("4f1f3c2e-8a5b-4d6e-9c7a-2b1e0d9f8a7c")


def intake_claim_id(customer_id: uuid.UUID, source_key: str, identifiers: list[dict[str, str]]) -> uuid.UUID:
    """One claim per (customer, public submission, identifiers): a retried submission
    files the same claim again, which changes nothing."""
    idents = ",".join(sorted(f"{i['kind']}:{i['hash']}" for i in identifiers))
    return uuid.uuid5(INTAKE_NAMESPACE, f"{customer_id}|{source_key}|{idents}")


class IntakeClaim(Aggregate):
    """Identifiers an unverified public source (a web form anyone can submit) presented
    together with an identifier an existing customer already holds.

    Nothing is linked: whoever knows someone's e-mail must not be able to attach their
    own phone to that person's profile. A human approves (the identifiers are linked to
    the customer, if nobody holds them by then) or rejects. Only blind indexes are kept:
    the clear values are not needed to decide and would be personal data outside the
    customer's sealed profile."""

    class Opened(Aggregate.Created):
        customer_id: uuid.UUID
        identifiers: list[dict[str, str]]
        evidence: dict[str, Any]

    @event(Opened)
    def __init__(
        self, customer_id: uuid.UUID, identifiers: list[dict[str, str]], evidence: dict[str, Any]
    ) -> None:
        self.customer_id = customer_id
        self.identifiers = [dict(i) for i in identifiers]
        self.evidence = dict(evidence)
        self.status = "open"
        self.decision: dict[str, Any] | None = None

    @classmethod
    def open(
        cls,
        customer_id: uuid.UUID,
        source_key: str,
        identifiers: list[dict[str, str]],
        evidence: dict[str, Any],
    ) -> IntakeClaim:
        return cls._create(
            cls.Opened,
            id=intake_claim_id(customer_id, source_key, identifiers),
            customer_id=customer_id,
            identifiers=identifiers,
            evidence=evidence,
        )

    class Approved(Aggregate.Event):
        decided_by: str
        linked: list[dict[str, str]]

    class Rejected(Aggregate.Event):
        decided_by: str
        reason: str

    def _require_open(self) -> None:
        if self.status != "open":
            raise ReviewAlreadyDecided(f"review {self.id} is already {self.status}")

    def approve(self, decided_by: str, linked: list[dict[str, str]]) -> None:
        self._require_open()
        self._approve(decided_by=decided_by, linked=linked)

    @event(Approved)
    def _approve(self, decided_by: str, linked: list[dict[str, str]]) -> None:
        self.status = "approved"
        self.decision = {"decided_by": decided_by, "linked": [dict(i) for i in linked]}

    def reject(self, decided_by: str, reason: str) -> None:
        self._require_open()
        self._reject(decided_by=decided_by, reason=reason)

    @event(Rejected)
    def _reject(self, decided_by: str, reason: str) -> None:
        self.status = "rejected"
        self.decision = {"decided_by": decided_by, "reason": reason}
