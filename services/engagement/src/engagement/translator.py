"""Stored membership domain events → published contract events (the only such mapping).

Event ids derive from the store position, so relay retries are recognised downstream.
Every event carries the member number's blind index as its identifier and customer key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from crm_contracts.envelope import Event, Identifier, IdentifierKind, deterministic_event_id
from crm_contracts.events.membership import (
    MemberEnrolled,
    MemberEnrolledPayload,
    MemberRankChanged,
    MemberRankChangedPayload,
    PointsChanged,
    PointsChangedPayload,
)
from crm_platform.relay import StoredFact
from engagement.domain.membership import Member

PRODUCER = "engagement.relay"


class MembershipTranslator:
    def __init__(self, member_key: Callable[[uuid.UUID], str]) -> None:
        #: member id -> member number hash (from the store; cached, it never changes)
        self._lookup = member_key
        self._keys: dict[uuid.UUID, str] = {}

    def _key(self, event: Any) -> str:
        key = self._keys.get(event.originator_id)
        if key is None:
            if isinstance(event, Member.Enrolled):
                key = event.member_no_hash
            else:
                key = self._lookup(event.originator_id)
            if len(self._keys) > 100_000:
                self._keys.clear()
            self._keys[event.originator_id] = key
        return key

    def __call__(self, fact: StoredFact) -> Sequence[Event]:
        event: Any = fact.domain_event
        key = self._key(event)
        at = getattr(event, "at", None) or getattr(event, "enrolled_at", None) or event.timestamp
        common: dict[str, Any] = {
            "event_id": deterministic_event_id(event.timestamp, fact.source, fact.notification_id),
            "occurred_at": at,
            "recorded_at": event.timestamp,
            "producer": PRODUCER,
            "customer_key": key,
            "identifiers": (Identifier(kind=IdentifierKind.MEMBER_NO, hash=key),),
            "trace": fact.trace,
        }
        if isinstance(event, Member.Enrolled):
            return [
                MemberEnrolled(
                    **common,
                    payload=MemberEnrolledPayload(
                        member_key=key,
                        channel=event.channel,
                        rank=getattr(event, "entry_rank", "regular"),  # older events: regular
                        birthday_month=event.birthday_month,
                    ),
                )
            ]
        if isinstance(event, Member.RankChanged):
            payload = MemberRankChangedPayload(
                member_key=key,
                previous=event.previous,
                rank=event.rank,
                reason=event.reason[:200],
                spend_12m=max(0, event.spend),
                visits_12m=event.visits,
            )
            return [MemberRankChanged(**common, payload=payload)]
        if isinstance(event, Member.PurchaseCredited):
            if not event.points:
                return []
            points = PointsChangedPayload(
                member_key=key,
                reason="earned",
                points=event.points,
                order_key=event.order_key,
                amount=event.amount,
                channel=event.channel,
                expires_at=event.expires_at,
            )
        elif isinstance(event, Member.PurchaseReversed):
            points = PointsChangedPayload(
                member_key=key,
                reason="reversed",
                points=-event.points,
                order_key=event.order_key,
                return_key=event.return_key,
                amount=event.refunded,
            )
        elif isinstance(event, Member.PointsRedeemed):
            points = PointsChangedPayload(
                member_key=key, reason="redeemed", points=-event.points, redemption_id=event.redemption_id
            )
        elif isinstance(event, Member.PointsExpired):
            points = PointsChangedPayload(member_key=key, reason="expired", points=-event.points)
        else:
            return []
        return [PointsChanged(**common, payload=points)]
