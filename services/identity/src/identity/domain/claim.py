"""IdentifierClaim: who holds an identifier. One aggregate per ``(kind, blind index)``.

Saving a claim together with the customers it concerns, in one atomic save, makes
"each identifier resolves to one customer" a real invariant under concurrency: two
processes linking the same new identifier conflict on the claim's version, and one of
them retries. Its history answers "who held this identifier on a given day".

Over-merge protection lives here: an identifier held by more than one customer is
ambiguous and never links anyone; one held by more than ``max_owners`` is marked shared
for good (a store's phone number typed for every walk-in customer).
"""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Aggregate, event

CLAIM_NAMESPACE = uuid.UUID("b7a1f1d2-9d4e-4c1e-8f0a-2f6d8c1e5a33")


def claim_id(kind: str, hash_: str) -> uuid.UUID:
    return uuid.uuid5(CLAIM_NAMESPACE, f"{kind}:{hash_}")


class IdentifierClaim(Aggregate):
    class Created(Aggregate.Created):
        kind: str
        hash: str

    @event(Created)
    def __init__(self, kind: str, hash: str) -> None:
        self.kind = kind
        self.hash = hash
        self.owners: list[str] = []
        self.shared = False

    @classmethod
    def open(cls, kind: str, hash_: str) -> IdentifierClaim:
        return cls._create(cls.Created, id=claim_id(kind, hash_), kind=kind, hash=hash_)

    @property
    def sole_owner(self) -> uuid.UUID | None:
        """The one customer this identifier resolves to, or None when ambiguous/unclaimed."""
        if self.shared or len(self.owners) != 1:
            return None
        return uuid.UUID(self.owners[0])

    class Claimed(Aggregate.Event):
        customer_id: uuid.UUID
        evidence: dict[str, Any]

    def claim(self, customer_id: uuid.UUID, evidence: dict[str, Any], max_owners: int) -> None:
        if customer_id.hex in self.owners:
            return
        self._claim(customer_id=customer_id, evidence=evidence)
        if len(self.owners) > max_owners and not self.shared:
            self._mark_shared(owners=len(self.owners))

    @event(Claimed)
    def _claim(self, customer_id: uuid.UUID, evidence: dict[str, Any]) -> None:
        self.owners.append(customer_id.hex)

    class Released(Aggregate.Event):
        customer_id: uuid.UUID
        reason: str

    def release(self, customer_id: uuid.UUID, reason: str) -> None:
        if customer_id.hex in self.owners:
            self._release(customer_id=customer_id, reason=reason)

    @event(Released)
    def _release(self, customer_id: uuid.UUID, reason: str) -> None:
        self.owners.remove(customer_id.hex)

    class MarkedShared(Aggregate.Event):
        owners: int

    @event(MarkedShared)
    def _mark_shared(self, owners: int) -> None:
        self.shared = True
