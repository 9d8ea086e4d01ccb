"""Events the identity service publishes (topic ``crm.identity.customer``)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from crm_contracts.envelope import AwareDatetime, ContractModel, Event, Identifier, SealedValue
from crm_contracts.topics import IDENTITY_CUSTOMER, IDENTITY_PROFILE


class Gender(StrEnum):
    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class Channel(StrEnum):
    """Where a customer was met or a fact happened."""

    STORE = "store"
    ONLINE = "online"
    APP = "app"
    CALL_CENTER = "call_center"
    STAFF = "staff"
    FORM = "form"
    IMPORT = "import"


class ConsentChannel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    LINE = "line"
    APP_PUSH = "app_push"
    POSTAL = "postal"


class Consent(ContractModel):
    channel: ConsentChannel
    granted: bool
    at: AwareDatetime


class CustomerAttributes(ContractModel):
    """Non-personal attributes: safe for analytics and BI as they are."""

    gender: Gender = Gender.UNKNOWN
    birth_year: int | None = Field(default=None, ge=1900, le=2100)
    birth_month: int | None = Field(default=None, ge=1, le=12)
    prefecture: str | None = Field(default=None, max_length=8, description="都道府県, e.g. 東京都")
    tags: tuple[str, ...] = Field(default=(), max_length=100)


class CustomerRegisteredPayload(ContractModel):
    customer_id: uuid.UUID
    channel: Channel
    attributes: CustomerAttributes = CustomerAttributes()
    consents: tuple[Consent, ...] = ()
    #: Name, kana, contact points, birthday and address, sealed with the customer's key.
    personal: SealedValue | None = None


class CustomerRegistered(Event):
    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.registered"] = "customer.registered"
    schema_version: Literal[1] = 1
    payload: CustomerRegisteredPayload


class CustomerProfileChangedPayload(ContractModel):
    customer_id: uuid.UUID
    attributes: CustomerAttributes
    consents: tuple[Consent, ...] = ()
    personal: SealedValue | None = None
    changed_fields: tuple[str, ...] = Field(default=(), description="names of the fields that changed")


class CustomerProfileChanged(Event):
    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.profile_changed"] = "customer.profile_changed"
    schema_version: Literal[1] = 1
    payload: CustomerProfileChangedPayload


class ConsentProof(ContractModel):
    """How a consent given on a public channel was confirmed (double opt-in): the person
    followed a signed, single-use link sent to the address (or typed a code sent to the
    phone). No personal data: ids, the channel and the wording's version."""

    source: Literal["form"] = "form"
    form_id: uuid.UUID
    submission_id: uuid.UUID
    purpose: str = Field(min_length=1, max_length=64)
    wording_version: str = Field(min_length=1, max_length=32)
    #: how the person proved they hold the address: a link by e-mail, a code by SMS
    confirmed_via: Literal["email", "sms"]
    confirmed_at: AwareDatetime
    #: the confirmation token's id (never the token itself)
    token_id: uuid.UUID


class ConsentChangedPayload(ContractModel):
    customer_id: uuid.UUID
    consent: Consent
    #: a consent confirmed by double opt-in carries its proof (absent: staff, an
    #: authenticated channel, an unsubscribe)
    proof: ConsentProof | None = None


class ConsentChanged(Event):
    """A customer granted or withdrew consent for one channel (opt-in / opt-out)."""

    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.consent_changed"] = "customer.consent_changed"
    schema_version: Literal[1] = 1
    payload: ConsentChangedPayload


class LinkEvidence(ContractModel):
    """Why an identifier belongs to a customer: the rule or score that decided it."""

    rule: str = Field(max_length=64, description="e.g. exact:email, fuzzy:name+birthday, staff")
    score: float | None = Field(default=None, ge=0, le=1)
    matched_fields: tuple[str, ...] = ()
    decided_by: str | None = Field(default=None, max_length=128, description="staff user or process")


class IdentifiersLinkedPayload(ContractModel):
    customer_id: uuid.UUID
    linked: tuple[Identifier, ...] = Field(min_length=1)
    evidence: LinkEvidence


class IdentifiersLinked(Event):
    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.identifiers_linked"] = "customer.identifiers_linked"
    schema_version: Literal[1] = 1
    payload: IdentifiersLinkedPayload


class IdentifiersUnlinkedPayload(ContractModel):
    customer_id: uuid.UUID
    unlinked: tuple[Identifier, ...] = Field(min_length=1)
    reason: str = Field(max_length=256)


class IdentifiersUnlinked(Event):
    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.identifiers_unlinked"] = "customer.identifiers_unlinked"
    schema_version: Literal[1] = 1
    payload: IdentifiersUnlinkedPayload


class CustomersMergedPayload(ContractModel):
    merge_id: uuid.UUID
    survivor_id: uuid.UUID
    merged_id: uuid.UUID
    #: Identifiers that moved from the merged customer to the survivor.
    moved: tuple[Identifier, ...] = ()
    evidence: LinkEvidence


class CustomersMerged(Event):
    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.merged"] = "customer.merged"
    schema_version: Literal[1] = 1
    payload: CustomersMergedPayload


class MergeUndonePayload(ContractModel):
    merge_id: uuid.UUID
    survivor_id: uuid.UUID
    restored_id: uuid.UUID
    #: Identifiers given back to the restored customer.
    restored: tuple[Identifier, ...] = ()
    reason: str = Field(max_length=512)
    undone_by: str | None = Field(default=None, max_length=128)


class MergeUndone(Event):
    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.merge_undone"] = "customer.merge_undone"
    schema_version: Literal[1] = 1
    payload: MergeUndonePayload


class CustomerErasedPayload(ContractModel):
    customer_id: uuid.UUID
    requested_at: AwareDatetime
    #: Identifiers tombstoned by the erasure (their blind indexes, never raw values).
    tombstoned: tuple[Identifier, ...] = ()


class CustomerErased(Event):
    TOPIC: ClassVar[str] = IDENTITY_CUSTOMER.name
    event_type: Literal["customer.erased"] = "customer.erased"
    schema_version: Literal[1] = 1
    payload: CustomerErasedPayload


class ProfileSnapshotPayload(ContractModel):
    """The unified profile of one customer, as the resolver knows it now."""

    customer_id: uuid.UUID
    status: Literal["active", "merged", "erased"] = "active"
    merged_into: uuid.UUID | None = None
    attributes: CustomerAttributes = CustomerAttributes()
    consents: tuple[Consent, ...] = ()
    personal: SealedValue | None = None
    identifiers: tuple[Identifier, ...] = Field(default=(), max_length=1000)
    first_seen: AwareDatetime | None = None
    last_seen: AwareDatetime | None = None
    channels: tuple[str, ...] = Field(default=(), description="channels the customer was seen in")
    events_seen: int = Field(default=0, ge=0)


class ProfileSnapshot(Event):
    """Latest unified profile per customer_id on the compacted profile topic."""

    TOPIC: ClassVar[str] = IDENTITY_PROFILE.name
    event_type: Literal["customer.profile_snapshot"] = "customer.profile_snapshot"
    schema_version: Literal[1] = 1
    payload: ProfileSnapshotPayload


__all__ = [
    "Channel",
    "Consent",
    "ConsentChanged",
    "ConsentChannel",
    "ConsentProof",
    "CustomerAttributes",
    "CustomerErased",
    "CustomerProfileChanged",
    "CustomerRegistered",
    "CustomersMerged",
    "Gender",
    "IdentifiersLinked",
    "IdentifiersUnlinked",
    "LinkEvidence",
    "MergeUndone",
    "ProfileSnapshot",
    "ProfileSnapshotPayload",
]
