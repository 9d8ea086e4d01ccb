"""The membership programme's events reach analytics: a customer's rank and points in the
360 summary and in the BI views, attributed like every other fact."""

from __future__ import annotations

import uuid

import factory as f
import pytest
from clickhouse_connect.driver.client import Client

from analytics.queries import Queries
from analytics.sink import encode_row, insert_rows
from crm_contracts.envelope import Event, IdentifierKind
from crm_contracts.events.membership import (
    MemberEnrolled,
    MemberEnrolledPayload,
    MemberRankChanged,
    MemberRankChangedPayload,
    PointsChanged,
    PointsChangedPayload,
)
from crm_contracts.registry import encode

pytestmark = pytest.mark.integration


def member_event(cls: type[Event], payload: object, day: str) -> Event:
    card = f.ident("M0001", IdentifierKind.MEMBER_NO)
    return cls(  # type: ignore[call-arg]
        occurred_at=f.at(day),
        producer="engagement.relay",
        customer_key=card.hash,
        identifiers=(card,),
        payload=payload,
    )


def test_ranks_and_points_land_on_the_member_s_customer(client: Client) -> None:
    card = f.ident("M0001", IdentifierKind.MEMBER_NO)
    customer = uuid.uuid4()
    events = [
        f.profile(customer, [card, f.ident("hanako@example.jp")]),
        member_event(
            MemberEnrolled,
            MemberEnrolledPayload(member_key=card.hash, channel="store", rank="regular"),
            "2026-04-01",
        ),
        member_event(
            PointsChanged,
            PointsChangedPayload(member_key=card.hash, reason="earned", points=600, order_key="store:S-1"),
            "2026-04-02",
        ),
        member_event(
            MemberRankChanged,
            MemberRankChangedPayload(
                member_key=card.hash,
                previous="regular",
                rank="silver",
                reason="12-month spend ¥40,000 ≥ ¥30,000",
                spend_12m=40_000,
                visits_12m=1,
            ),
            "2026-04-02",
        ),
        member_event(
            PointsChanged,
            PointsChangedPayload(member_key=card.hash, reason="expired", points=-100),
            "2027-04-02",
        ),
    ]
    rows = [encode_row(e.TOPIC, 0, i, encode(e)) for i, e in enumerate(events)]
    insert_rows(client, rows)
    insert_rows(client, rows)  # delivered twice: counted once

    summary = Queries(client).customer_summary(str(customer))
    assert summary is not None
    assert (summary["rank"], summary["points"]) == ("silver", 500)
    facts = client.query(
        "SELECT event_type, kind, amount FROM bi_events WHERE customer_id = {c:UUID}"
        " ORDER BY occurred_at, event_type",
        parameters={"c": customer},
    ).result_rows
    assert facts == [
        ("member.enrolled", "", 0),
        ("member.points_changed", "earned", 600),
        ("member.rank_changed", "silver", 0),
        ("member.points_changed", "expired", -100),
    ]
