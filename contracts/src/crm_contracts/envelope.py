"""The envelope every published event shares, and the value types it carries.

Published events are *contracts*: other teams and BI tools depend on them. Rules:

* Within a ``schema_version`` changes are additive only (new optional fields).
  ``crm_contracts.compat`` checks this against the committed JSON Schemas.
* Consumers are tolerant readers (unknown fields are ignored), producers are strict.
* No raw personal data: identifiers travel as keyed hashes (a blind index, see
  ``crm_platform.crypto``) and personal fields as :class:`SealedValue`.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from uuid_utils.compat import uuid7


def new_event_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so ClickHouse sorts and deduplicates it cheaply."""
    return uuid7()


def deterministic_event_id(occurred_at: datetime, *parts: object) -> uuid.UUID:
    """A UUIDv7 derived from a timestamp and stable parts (e.g. store name, position).

    Re-publishing the same stored fact (an outbox relay retry after a crash) yields the
    same ``event_id``, so every consumer's de-duplication recognises the copy.
    """
    millis = int(occurred_at.timestamp() * 1000) & ((1 << 48) - 1)
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    rand_a = int.from_bytes(digest[:2], "big") & 0x0FFF
    rand_b = int.from_bytes(digest[2:10], "big") & ((1 << 62) - 1)
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _require_tz(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must include a timezone offset")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-01:00 is in year 10000 in UTC
        raise ValueError("timestamp out of range once in UTC") from None


#: A timezone-aware instant, normalised to UTC.
AwareDatetime = Annotated[datetime, AfterValidator(_require_tz)]


class ContractModel(BaseModel):
    """Base of every contract model: tolerant of unknown fields, immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class IdentifierKind(StrEnum):
    """Kinds of identifiers, in descending linking priority (see identity resolution)."""

    MEMBER_NO = "member_no"
    POS_CARD = "pos_card"
    EC_ACCOUNT = "ec_account"
    LINE_ID = "line_id"
    EMAIL = "email"
    PHONE = "phone"
    DEVICE = "device"


class Identifier(ContractModel):
    """An observed identifier as a blind index: HMAC-SHA256 of ``kind:normalised value``."""

    kind: IdentifierKind
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex HMAC-SHA256 blind index")


class SealedValue(ContractModel):
    """Personal data sealed (AES-256-GCM) with a data key that only the owning service
    holds: identity's per-customer keys for profiles, support's per-ticket keys for
    inquiries. Erasing a customer deletes the keys, which makes every copy of this value
    unreadable (crypto-shredding).
    """

    alg: str = Field(default="A256GCM")
    key_id: str = Field(min_length=1, max_length=128)
    nonce: str = Field(description="base64url 96-bit nonce")
    ciphertext: str = Field(description="base64url ciphertext with the GCM tag")


class TraceContext(ContractModel):
    """W3C trace context of the request that caused the event."""

    traceparent: str = Field(pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    tracestate: str | None = None


class Event(ContractModel):
    """Envelope fields common to every published event.

    A concrete event narrows ``event_type`` and ``schema_version`` to literals with
    defaults, names its ``TOPIC`` and adds a typed ``payload``::

        class TicketOpened(Event):
            TOPIC: ClassVar[str] = SUPPORT_TICKET.name
            event_type: Literal["ticket.opened"] = "ticket.opened"
            schema_version: Literal[1] = 1
            payload: TicketOpenedPayload
    """

    TOPIC: ClassVar[str]

    event_id: uuid.UUID = Field(default_factory=new_event_id, description="UUIDv7, unique per event")
    event_type: str
    schema_version: int
    occurred_at: AwareDatetime = Field(description="when it happened in the real world")
    recorded_at: AwareDatetime = Field(default_factory=utcnow, description="when the platform recorded it")
    producer: str = Field(min_length=1, max_length=64, description="service.role that published it")
    customer_key: str = Field(
        min_length=1,
        max_length=128,
        description="partition key: the customer_id when known, else the blind index of the "
        "strongest identifier observed",
    )
    identifiers: tuple[Identifier, ...] = Field(default=(), max_length=64)
    trace: TraceContext | None = None

    @classmethod
    def type_key(cls) -> tuple[str, int]:
        """``(event_type, schema_version)`` of a concrete event class."""
        event_type = cls.model_fields["event_type"].default
        version = cls.model_fields["schema_version"].default
        if not isinstance(event_type, str) or not isinstance(version, int):
            raise TypeError(f"{cls.__name__} does not pin event_type and schema_version")
        return event_type, version
