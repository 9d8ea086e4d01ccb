"""HTTP request and response schemas (separate from the domain, per resource)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Gender = Literal["female", "male", "other", "unknown"]
RegistrationChannel = Literal["store", "online", "app", "call_center", "staff", "form", "import"]


class Consents(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: bool | None = None
    sms: bool | None = None
    line: bool | None = None
    app_push: bool | None = None
    postal: bool | None = None


class CustomerCreate(BaseModel):
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
    name_kanji: str | None = Field(default=None, min_length=1, max_length=100)
    name_kana: str | None = Field(default=None, min_length=1, max_length=100)
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=32)
    member_no: str | None = Field(default=None, max_length=64)
    pos_card: str | None = Field(default=None, max_length=64)
    ec_account: str | None = Field(default=None, max_length=128)
    line_id: str | None = Field(default=None, max_length=128)
    birthday: date | None = None
    gender: Gender = "unknown"
    prefecture: str | None = Field(default=None, max_length=8)
    postal_code: str | None = Field(default=None, pattern=r"^\d{3}-?\d{4}$")
    address: str | None = Field(default=None, max_length=300)
    consents: Consents = Consents()
    registered_at: datetime | None = None


class IdentifierPublic(BaseModel):
    kind: str
    value: str


class CustomerPublic(BaseModel):
    customer_id: uuid.UUID
    version: int
    channel: str
    identifiers: list[IdentifierPublic]
    name_kanji: str | None
    name_kana: str | None
    birthday: date | None
    gender: str
    prefecture: str | None
    postal_code: str | None
    address: str | None
    consents: dict[str, bool]
    registered_at: datetime


class CustomerCreated(BaseModel):
    customer_id: uuid.UUID
