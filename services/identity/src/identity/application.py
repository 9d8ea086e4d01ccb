"""The identity application service: commands and queries on customers.

It takes and returns IDs and primitives; infrastructure errors are translated into the
domain's own (``AggregateNotFoundError`` becomes ``CustomerNotFound``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Transcoding

from identity.domain.customer import (
    Customer,
    CustomerAlreadyRegistered,
    DomainError,
    ObservedIdentifier,
    PersonalData,
    customer_id_for,
)


class CustomerNotFound(DomainError):
    def __init__(self, customer_id: uuid.UUID) -> None:
        super().__init__(f"no customer {customer_id}")
        self.customer_id = customer_id


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


@dataclass(frozen=True)
class RegisterCustomer:
    channel: str
    identifiers: list[ObservedIdentifier]
    personal: PersonalData = field(default_factory=PersonalData)
    gender: str = "unknown"
    prefecture: str | None = None
    consents: dict[str, bool] = field(default_factory=dict)
    registered_at: datetime | None = None


class DataKeys(Protocol):
    """Where per-customer data keys live (see ``adapters.keystore``)."""

    def get_or_create(self, customer_id: uuid.UUID) -> tuple[str, bytes]: ...


class IdentityApplication(Application[uuid.UUID]):
    name = "identity"

    def __init__(self, env: Mapping[str, str] | None = None, *, keys: DataKeys | None = None) -> None:
        super().__init__(env=env)
        self.keys = keys

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())

    def register_customer(self, cmd: RegisterCustomer) -> uuid.UUID:
        candidate = customer_id_for(cmd.identifiers)
        if candidate is not None and candidate in self.repository:
            raise CustomerAlreadyRegistered(candidate)
        customer = Customer.register(
            channel=cmd.channel,
            identifiers=cmd.identifiers,
            personal=cmd.personal,
            gender=cmd.gender,
            prefecture=cmd.prefecture,
            consents=cmd.consents,
            registered_at=cmd.registered_at or datetime.now(UTC),
        )
        if self.keys is not None:
            # The data key exists before any event that will be sealed with it.
            self.keys.get_or_create(customer.id)
        try:
            self.save(customer)
        except IntegrityError:
            # Registered concurrently by another request: the first one wins.
            raise CustomerAlreadyRegistered(customer.id) from None
        return customer.id

    def get_customer(self, customer_id: uuid.UUID) -> dict[str, Any]:
        try:
            customer: Customer = self.repository.get(customer_id)
        except AggregateNotFoundError:
            raise CustomerNotFound(customer_id) from None
        return {
            "customer_id": customer.id,
            "version": customer.version,
            "channel": customer.channel,
            "identifiers": list(customer.identifiers),
            **customer.personal.as_dict(),
            "gender": customer.gender,
            "prefecture": customer.prefecture,
            "consents": {k: v["granted"] for k, v in customer.consents.items()},
            "registered_at": customer.registered_at,
        }
