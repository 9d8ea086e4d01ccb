"""Stored identity domain events → published contract events (the only such mapping).

Identifiers leave as blind indexes; personal fields leave sealed with the customer's
data key. Event ids are derived from the store position so relay retries are recognised.
"""

from __future__ import annotations

from collections.abc import Sequence

from crm_contracts.envelope import Event, deterministic_event_id
from crm_contracts.events.identity import (
    Channel,
    Consent,
    ConsentChannel,
    CustomerAttributes,
    CustomerRegistered,
    CustomerRegisteredPayload,
    Gender,
)
from crm_platform.crypto import BlindIndexer, seal
from crm_platform.relay import StoredFact

from identity.adapters.keystore import DataKeyStore
from identity.domain.customer import Customer

PRODUCER = "identity.relay"


class IdentityTranslator:
    def __init__(self, indexer: BlindIndexer, keys: DataKeyStore) -> None:
        self._indexer = indexer
        self._keys = keys

    def __call__(self, fact: StoredFact) -> Sequence[Event]:
        event = fact.domain_event
        if isinstance(event, Customer.Registered):
            return [self._registered(event, fact)]
        return []

    def _registered(self, event: Customer.Registered, fact: StoredFact) -> CustomerRegistered:
        customer_id = event.originator_id
        key_id, key = self._keys.get_or_create(customer_id)
        personal = {
            "name_kanji": event.name_kanji,
            "name_kana": event.name_kana,
            "birthday": event.birthday.isoformat() if event.birthday else None,
            "postal_code": event.postal_code,
            "address": event.address,
            "identifiers": event.identifiers,
        }
        return CustomerRegistered(
            event_id=deterministic_event_id(event.timestamp, fact.source, fact.notification_id, 0),
            occurred_at=event.registered_at,
            recorded_at=event.timestamp,
            producer=PRODUCER,
            customer_key=str(customer_id),
            identifiers=tuple(self._indexer.identifier(i["kind"], i["value"]) for i in event.identifiers),
            trace=fact.trace,
            payload=CustomerRegisteredPayload(
                customer_id=customer_id,
                channel=Channel(event.channel),
                attributes=CustomerAttributes(
                    gender=Gender(event.gender),
                    birth_year=event.birthday.year if event.birthday else None,
                    birth_month=event.birthday.month if event.birthday else None,
                    prefecture=event.prefecture,
                ),
                consents=tuple(
                    Consent(channel=ConsentChannel(ch), granted=granted, at=event.registered_at)
                    for ch, granted in sorted(event.consents.items())
                ),
                personal=seal(key, key_id, personal, context=CustomerRegistered.type_key()[0]),
            ),
        )
