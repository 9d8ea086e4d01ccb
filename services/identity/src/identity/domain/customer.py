"""The Customer aggregate: one person, with the personal data only identity may hold."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from eventsourcing.domain import Aggregate

#: Namespace of deterministic customer ids: the same first identifier always yields the
#: same customer_id, so replaying the log reproduces the same ids.
CUSTOMER_NAMESPACE = uuid.UUID("5b0c3b8e-5f1e-4f5a-9a55-6d2b1c0f7a10")

IDENTIFIER_KINDS = ("member_no", "pos_card", "ec_account", "line_id", "email", "phone", "device")
GENDERS = ("female", "male", "other", "unknown")
CONSENT_CHANNELS = ("email", "sms", "line", "app_push", "postal")


class DomainError(Exception):
    """Base of the identity domain's errors."""


class InvalidCustomerData(DomainError):
    pass


class CustomerAlreadyRegistered(DomainError):
    def __init__(self, customer_id: uuid.UUID) -> None:
        super().__init__(f"a customer with this identifier exists: {customer_id}")
        self.customer_id = customer_id


@dataclass(frozen=True)
class ObservedIdentifier:
    """An identifier in normalised form (normalisation happens at the edge)."""

    kind: str
    value: str

    def __post_init__(self) -> None:
        if self.kind not in IDENTIFIER_KINDS:
            raise InvalidCustomerData(f"unknown identifier kind {self.kind!r}")
        if not self.value:
            raise InvalidCustomerData(f"empty {self.kind}")

    @property
    def priority(self) -> int:
        return IDENTIFIER_KINDS.index(self.kind)


def customer_id_for(identifiers: list[ObservedIdentifier]) -> uuid.UUID | None:
    """The deterministic id a new customer gets: UUIDv5 of its strongest identifier."""
    if not identifiers:
        return None
    strongest = min(identifiers, key=lambda i: (i.priority, i.value))
    return uuid.uuid5(CUSTOMER_NAMESPACE, f"{strongest.kind}:{strongest.value}")


@dataclass(frozen=True)
class PersonalData:
    """Personal fields in clear. Never leaves the identity service unsealed."""

    name_kanji: str | None = None
    name_kana: str | None = None
    birthday: date | None = None
    postal_code: str | None = None
    address: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name_kanji": self.name_kanji,
            "name_kana": self.name_kana,
            "birthday": self.birthday.isoformat() if self.birthday else None,
            "postal_code": self.postal_code,
            "address": self.address,
        }


class Customer(Aggregate):
    """A customer. Identifiers are held as ``(kind, normalised value)`` pairs."""

    def __init__(
        self,
        *,
        channel: str,
        identifiers: list[dict[str, str]],
        name_kanji: str | None,
        name_kana: str | None,
        birthday: date | None,
        gender: str,
        prefecture: str | None,
        postal_code: str | None,
        address: str | None,
        consents: dict[str, bool],
        registered_at: datetime,
    ) -> None:
        self.channel = channel
        self.identifiers = [dict(i) for i in identifiers]
        self.name_kanji = name_kanji
        self.name_kana = name_kana
        self.birthday = birthday
        self.gender = gender
        self.prefecture = prefecture
        self.postal_code = postal_code
        self.address = address
        self.consents = {k: {"granted": v, "at": registered_at} for k, v in consents.items()}
        self.registered_at = registered_at

    @classmethod
    def register(
        cls,
        *,
        channel: str,
        identifiers: list[ObservedIdentifier],
        personal: PersonalData,
        gender: str = "unknown",
        prefecture: str | None = None,
        consents: dict[str, bool] | None = None,
        registered_at: datetime,
    ) -> Customer:
        if gender not in GENDERS:
            raise InvalidCustomerData(f"gender must be one of {GENDERS}")
        unknown = set(consents or {}) - set(CONSENT_CHANNELS)
        if unknown:
            raise InvalidCustomerData(f"unknown consent channels {sorted(unknown)}")
        if not identifiers and not personal.name_kanji and not personal.name_kana:
            raise InvalidCustomerData("a customer needs at least a name or one identifier")
        customer_id = customer_id_for(identifiers) or uuid.uuid4()
        return cls._create(
            cls.Registered,
            id=customer_id,
            channel=channel,
            identifiers=[{"kind": i.kind, "value": i.value} for i in dict.fromkeys(identifiers)],
            name_kanji=personal.name_kanji,
            name_kana=personal.name_kana,
            birthday=personal.birthday,
            gender=gender,
            prefecture=prefecture,
            postal_code=personal.postal_code,
            address=personal.address,
            consents=dict(consents or {}),
            registered_at=registered_at,
        )

    class Registered(Aggregate.Created):
        channel: str
        identifiers: list[dict[str, str]]
        name_kanji: str | None
        name_kana: str | None
        birthday: date | None
        gender: str
        prefecture: str | None
        postal_code: str | None
        address: str | None
        consents: dict[str, bool]
        registered_at: datetime

    @property
    def personal(self) -> PersonalData:
        return PersonalData(self.name_kanji, self.name_kana, self.birthday, self.postal_code, self.address)
