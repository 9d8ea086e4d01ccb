"""HTTP request and response schemas (separate from the domain, per resource)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Gender = Literal["female", "male", "other", "unknown"]
RegistrationChannel = Literal["store", "online", "app", "call_center", "staff", "form", "import"]
IdentifierKindName = Literal["member_no", "pos_card", "ec_account", "line_id", "email", "phone", "device"]
ConsentChannelName = Literal["email", "sms", "line", "app_push", "postal"]
PreferenceValue = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Consents(_Strict):
    email: bool | None = None
    sms: bool | None = None
    line: bool | None = None
    app_push: bool | None = None
    postal: bool | None = None


class ProfileFields(_Strict):
    name_kanji: str | None = Field(default=None, min_length=1, max_length=100)
    name_kana: str | None = Field(default=None, min_length=1, max_length=100)
    birthday: date | None = None
    gender: Gender | None = None
    prefecture: str | None = Field(default=None, max_length=8)
    city: str | None = Field(default=None, max_length=64)
    postal_code: str | None = Field(default=None, pattern=r"^\d{3}-?\d{4}$")
    address: str | None = Field(default=None, max_length=300)
    tags: list[str] | None = Field(default=None, max_length=50)
    preferences: dict[str, PreferenceValue] | None = Field(default=None, max_length=50)
    owner: str | None = Field(default=None, max_length=128, description="assigned staff member")


class CustomerCreate(ProfileFields):
    """A customer as a channel observed them. Identifiers are normalised by the API."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "channel": "store",
                "name_kanji": "山田 太郎",
                "name_kana": "ヤマダ タロウ",
                "email": "taro@example.jp",
                "phone": "03-1234-5678",
                "member_no": "00123456",
                "birthday": "1985-04-12",
                "gender": "male",
                "prefecture": "東京都",
                "consents": {"email": True, "sms": False},
            }
        },
    )

    channel: RegistrationChannel
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=32)
    member_no: str | None = Field(default=None, max_length=64)
    pos_card: str | None = Field(default=None, max_length=64)
    ec_account: str | None = Field(default=None, max_length=128)
    line_id: str | None = Field(default=None, max_length=128)
    consents: Consents = Consents()
    registered_at: datetime | None = None


class IntakeSource(_Strict):
    """Which public submission presented the person (kept as the evidence of a claim)."""

    form_id: uuid.UUID
    submission_id: uuid.UUID


class IntakeCreate(ProfileFields):
    """A person as an unverified public source (a web form anyone may submit) describes
    them. There are no consents here: a public form's consent is granted only once
    confirmed (``POST /customers/consent-confirmations``)."""

    channel: Literal["form"] = "form"
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=32)
    member_no: str | None = Field(default=None, max_length=64)
    source: IntakeSource
    registered_at: datetime | None = None


class IntakeResult(BaseModel):
    customer_id: uuid.UUID | None = Field(description="null: only inactive customers hold these")
    outcome: Literal["created", "matched", "ambiguous"] = Field(
        description="created: nobody held any identifier; matched: an existing customer holds one "
        "(nothing on it changed; identifiers it does not hold were filed for review)"
    )
    reviews: list[uuid.UUID] = Field(description="review items filed (intake claims, pairs)")
    held: list[IdentifierKindName] = Field(
        description="kinds of the identifiers presented that the answered customer holds"
    )


class ConsentProofIn(_Strict):
    form_id: uuid.UUID
    submission_id: uuid.UUID
    purpose: str = Field(min_length=1, max_length=64)
    wording_version: str = Field(min_length=1, max_length=32)
    confirmed_via: Literal["email", "sms"]
    confirmed_at: datetime
    token_id: uuid.UUID


class BlindIdentifier(_Strict):
    kind: Literal["email", "phone"]
    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="the blind index")


class ConsentConfirmation(_Strict):
    """A consent the person confirmed by double opt-in, for the customer holding the
    address the confirmation went to."""

    identifier: BlindIdentifier
    channel: ConsentChannelName
    proof: ConsentProofIn


class CustomerUpdate(ProfileFields):
    """A partial update: fields left out stay; ``null`` clears a field."""

    expected_version: int | None = Field(default=None, ge=1, description="optimistic concurrency check")


class ConsentUpdate(_Strict):
    granted: bool
    at: datetime | None = None


class IdentifierCreate(_Strict):
    kind: IdentifierKindName
    value: str = Field(min_length=1, max_length=254)
    expected_version: int | None = Field(default=None, ge=1)


class MergeCreate(_Strict):
    survivor_id: uuid.UUID
    merged_id: uuid.UUID
    reason: str = Field(default="staff request", min_length=1, max_length=512)


class Reason(_Strict):
    reason: str = Field(min_length=1, max_length=512)


class Registration(BaseModel):
    customer_id: uuid.UUID
    outcome: str = Field(description="created | linked | matched | merged")
    merges: list[uuid.UUID]
    reviews: list[uuid.UUID]


class CustomerPublic(BaseModel):
    customer_id: uuid.UUID
    version: int
    status: str
    merged_into: uuid.UUID | None
    merged_ids: list[uuid.UUID]
    channel: str
    personal: dict[str, Any] | None = Field(description="present only for keys with identity:pii")
    attributes: dict[str, Any]
    consents: dict[str, Any]
    identifiers: list[dict[str, str]]
    registered_at: datetime
    as_of: datetime | None


class IdentifierPublic(BaseModel):
    kind: str
    hash: str
    value: str | None = Field(description="clear value, when known and the key holds identity:pii")
    linked_at: str | None
    evidence: dict[str, Any]
    via_merge: str | None
    merge_evidence: dict[str, Any] | None
    shared: bool


class SearchQuery(_Strict):
    """A search, in a body: a name or an identifier in a URL lands in access logs."""

    q: str = Field(min_length=1, max_length=200, description="name (kanji, kana, romaji) or identifier")
    kind: Literal["name", "email", "phone", "member_no", "pos_card", "ec_account", "line_id"] | None = Field(
        default=None, description="what q is; guessed when omitted"
    )
    limit: int = Field(default=20, ge=1, le=20, description="most customers answered; more match: 422")


class SearchResult(BaseModel):
    customer_id: uuid.UUID
    name_kanji_key: str | None = Field(description="normalised name; only for keys with identity:pii")
    kana_key: str | None = Field(description="normalised reading; only for keys with identity:pii")
    prefecture: str | None
    matched_on: str = Field(description="what matched: name, email, phone, member_no...")


class ContactRequest(_Strict):
    capability: str = Field(
        min_length=1, max_length=2048, description="the dispatcher's signed capability for this message"
    )


class MergeResult(BaseModel):
    merge_id: uuid.UUID


class ReviewApproved(BaseModel):
    merge_id: uuid.UUID | None = Field(description="a pair: the merge; an intake claim: null")


class ReviewPublic(BaseModel):
    review_id: uuid.UUID
    kind: Literal["pair", "intake_claim"] = Field(
        description="pair: two customers that may be one person (approve merges them); "
        "intake_claim: identifiers a public form presented with customer_a's (approve links them)"
    )
    customer_a: uuid.UUID
    customer_b: uuid.UUID | None
    identifiers: list[dict[str, str]] = Field(description="intake_claim: the identifiers claimed")
    score: float | None
    evidence: dict[str, Any]
    status: str
    decision: dict[str, Any] | None
    opened_at: datetime


class ReviewPage(BaseModel):
    """A page of the review queue, oldest first."""

    reviews: list[ReviewPublic]
    limit: int
    next: str | None = Field(description="the cursor of the next page; null on the last page")


class Version(BaseModel):
    version: int = Field(description="the customer's version after the change (for If-Match)")


class IdentifierRef(BaseModel):
    kind: str
    hash: str = Field(description="the blind index")


class Erasure(BaseModel):
    erased: list[uuid.UUID] = Field(description="the customers erased: this one and those merged into it")


class MergeUndone(BaseModel):
    restored_customer_id: uuid.UUID | None
    returned: list[IdentifierRef] = Field(description="identifiers given back to the restored customer")


class ContactPoint(BaseModel):
    customer_id: uuid.UUID = Field(description="the customer answering: a merged one's survivor")
    status: str
    channel: Literal["email", "sms", "line", "app_push"]
    address: str | None = Field(description="the channel's address; null when none or not active")
    name: str | None = Field(description="for the greeting")
    consent: bool | None = Field(description="the channel's consent; null when never asked")
    consent_at: datetime | None


class MessageContactPoint(ContactPoint):
    message_id: uuid.UUID = Field(description="the message the capability was signed for")
