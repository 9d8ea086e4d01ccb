"""Stored identity domain events → published contract events (the only such mapping).

Identifiers leave as blind indexes (they are stored that way); personal fields leave
sealed with the customer's data key, bound to the contract event type. Event ids are
derived from the store position, so relay retries are recognised downstream. Claims,
merge records and review items are internal bookkeeping and publish nothing of their
own: the customer events carry every decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from crm_contracts.envelope import Event, Identifier, IdentifierKind, SealedValue, deterministic_event_id
from crm_contracts.events.identity import (
    Channel,
    Consent,
    ConsentChanged,
    ConsentChangedPayload,
    ConsentChannel,
    ConsentProof,
    CustomerAttributes,
    CustomerErased,
    CustomerErasedPayload,
    CustomerProfileChanged,
    CustomerProfileChangedPayload,
    CustomerRegistered,
    CustomerRegisteredPayload,
    CustomersMerged,
    CustomersMergedPayload,
    Gender,
    IdentifiersLinked,
    IdentifiersLinkedPayload,
    IdentifiersUnlinked,
    IdentifiersUnlinkedPayload,
    LinkEvidence,
    MergeUndone,
    MergeUndonePayload,
)
from crm_platform.crypto import seal
from crm_platform.relay import StoredFact
from identity.adapters.keystore import DataKeyStore, KeyErased
from identity.domain.customer import Customer

PRODUCER = "identity.relay"


def _identifiers(items: Sequence[dict[str, Any]]) -> tuple[Identifier, ...]:
    return tuple(Identifier(kind=IdentifierKind(i["kind"]), hash=i["hash"]) for i in items)


def _evidence(evidence: dict[str, Any]) -> LinkEvidence:
    return LinkEvidence(
        rule=str(evidence.get("rule") or "unknown")[:64],
        score=evidence.get("score"),
        matched_fields=tuple(evidence.get("matched_fields") or ()),
        decided_by=evidence.get("decided_by"),
    )


def _attributes(personal: dict[str, Any], attributes: dict[str, Any]) -> CustomerAttributes:
    birthday = personal.get("birthday")
    year = int(birthday[:4]) if birthday else attributes.get("birth_year")
    month = int(birthday[5:7]) if birthday else attributes.get("birth_month")
    return CustomerAttributes(
        gender=Gender(attributes.get("gender", "unknown")),
        birth_year=year,
        birth_month=month,
        prefecture=attributes.get("prefecture"),
        tags=tuple(attributes.get("tags") or ()),
    )


def _consents(consents: dict[str, dict[str, Any]]) -> tuple[Consent, ...]:
    return tuple(
        Consent(channel=ConsentChannel(ch), granted=c["granted"], at=datetime.fromisoformat(c["at"]))
        for ch, c in sorted(consents.items())
    )


class IdentityTranslator:
    def __init__(self, keys: DataKeyStore) -> None:
        self._keys = keys

    def __call__(self, fact: StoredFact) -> Sequence[Event]:
        event: Any = fact.domain_event
        common = {
            "event_id": deterministic_event_id(event.timestamp, fact.source, fact.notification_id),
            "occurred_at": event.timestamp,
            "recorded_at": event.timestamp,
            "producer": PRODUCER,
            "customer_key": str(event.originator_id),
            "trace": fact.trace,
        }
        customer_id: uuid.UUID = event.originator_id
        if isinstance(event, Customer.Registered):
            return [
                CustomerRegistered(
                    **{**common, "occurred_at": event.registered_at},
                    identifiers=_identifiers(event.identifiers),
                    payload=CustomerRegisteredPayload(
                        customer_id=customer_id,
                        channel=Channel(event.channel),
                        attributes=_attributes(event.personal, event.attributes),
                        consents=_consents(event.consents),
                        personal=self._seal(customer_id, event.personal, "customer.registered"),
                    ),
                )
            ]
        if isinstance(event, Customer.ProfileChanged):
            return [
                CustomerProfileChanged(
                    **common,
                    payload=CustomerProfileChangedPayload(
                        customer_id=customer_id,
                        attributes=_attributes(event.personal, event.attributes),
                        personal=self._seal(customer_id, event.personal, "customer.profile_changed"),
                        changed_fields=tuple(event.changed),
                    ),
                )
            ]
        if isinstance(event, Customer.ConsentChanged):
            return [
                ConsentChanged(
                    **common,
                    payload=ConsentChangedPayload(
                        customer_id=customer_id,
                        consent=Consent(
                            channel=ConsentChannel(event.channel), granted=event.granted, at=event.at
                        ),
                        proof=ConsentProof.model_validate(event.proof) if event.proof else None,
                    ),
                )
            ]
        if isinstance(event, Customer.IdentifierLinked):
            linked = _identifiers([{"kind": event.kind, "hash": event.hash}])
            return [
                IdentifiersLinked(
                    **common,
                    identifiers=linked,
                    payload=IdentifiersLinkedPayload(
                        customer_id=customer_id, linked=linked, evidence=_evidence(event.evidence)
                    ),
                )
            ]
        if isinstance(event, Customer.IdentifierUnlinked):
            unlinked = _identifiers([{"kind": event.kind, "hash": event.hash}])
            return [
                IdentifiersUnlinked(
                    **common,
                    payload=IdentifiersUnlinkedPayload(
                        customer_id=customer_id, unlinked=unlinked, reason=event.reason[:256]
                    ),
                )
            ]
        if isinstance(event, Customer.Absorbed):
            moved = _identifiers(event.identifiers)
            return [
                CustomersMerged(
                    **common,
                    identifiers=moved,
                    payload=CustomersMergedPayload(
                        merge_id=event.merge_id,
                        survivor_id=customer_id,
                        merged_id=event.merged_id,
                        moved=moved,
                        evidence=_evidence(event.evidence),
                    ),
                )
            ]
        if isinstance(event, Customer.AbsorptionUndone):
            restored = _identifiers(event.identifiers)
            return [
                MergeUndone(
                    **common,
                    identifiers=restored,
                    payload=MergeUndonePayload(
                        merge_id=event.merge_id,
                        survivor_id=customer_id,
                        restored_id=event.merged_id,
                        restored=restored,
                        reason="merge undone",
                    ),
                )
            ]
        if isinstance(event, Customer.Erased):
            return [
                CustomerErased(
                    **common,
                    payload=CustomerErasedPayload(
                        customer_id=customer_id,
                        requested_at=event.at,
                        tombstoned=_identifiers(event.identifiers),
                    ),
                )
            ]
        return []  # MergedInto / Restored: carried by the survivor's events

    def _seal(self, customer_id: uuid.UUID, personal: dict[str, Any], context: str) -> SealedValue | None:
        if not personal:
            return None
        try:
            found = self._keys.get(customer_id)
        except KeyErased:
            return None  # erased since: publish nothing personal
        if found is None:
            return None
        key_id, key = found
        return seal(key, key_id, personal, context=context)
