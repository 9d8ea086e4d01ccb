"""The membership programme, published by the engagement relay (``crm.engagement.membership``).

Every event names the member by the blind index of the member number (``member_key``,
also the event's identifier, so identity resolves the member to a customer and analytics
attributes points and ranks to the current customer).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from crm_contracts.envelope import AwareDatetime, ContractModel, Event
from crm_contracts.topics import ENGAGEMENT_MEMBERSHIP

_KEY = Field(
    min_length=64, max_length=64, pattern="^[0-9a-f]{64}$", description="member number, blind-indexed"
)


class MemberEnrolledPayload(ContractModel):
    member_key: str = _KEY
    channel: Literal["store", "online", "app", "form", "import"]
    rank: str = Field(min_length=1, max_length=32)
    birthday_month: int | None = Field(default=None, ge=1, le=12)


class MemberEnrolled(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MEMBERSHIP.name
    event_type: Literal["member.enrolled"] = "member.enrolled"
    schema_version: Literal[1] = 1
    payload: MemberEnrolledPayload


class MemberRankChangedPayload(ContractModel):
    member_key: str = _KEY
    previous: str = Field(min_length=1, max_length=32)
    rank: str = Field(min_length=1, max_length=32)
    reason: str = Field(min_length=1, max_length=200)
    spend_12m: int = Field(ge=0)
    visits_12m: int = Field(ge=0)


class MemberRankChanged(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MEMBERSHIP.name
    event_type: Literal["member.rank_changed"] = "member.rank_changed"
    schema_version: Literal[1] = 1
    payload: MemberRankChangedPayload


class PointsChangedPayload(ContractModel):
    member_key: str = _KEY
    reason: Literal["earned", "reversed", "redeemed", "expired"]
    points: int = Field(description="signed: positive when earned, negative otherwise")
    order_key: str | None = Field(default=None, max_length=160, description="channel group:order id")
    return_key: str | None = Field(default=None, max_length=160)
    redemption_id: str | None = Field(default=None, max_length=128)
    amount: int | None = Field(default=None, description="the purchase (earned) or refund (reversed), yen")
    channel: str | None = Field(default=None, max_length=16)
    expires_at: AwareDatetime | None = None


class PointsChanged(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MEMBERSHIP.name
    event_type: Literal["member.points_changed"] = "member.points_changed"
    schema_version: Literal[1] = 1
    payload: PointsChangedPayload


__all__ = ["MemberEnrolled", "MemberRankChanged", "PointsChanged"]
