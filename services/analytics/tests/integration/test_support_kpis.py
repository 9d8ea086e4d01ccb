"""Support KPIs from a known set of ticket events: opened, resolved, backlog, medians,
SLA met rate, CSAT; by channel; attributed to the current customer in the 360."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

import factory as f
import pytest
from clickhouse_connect.driver.client import Client

from analytics.queries import Queries
from analytics.support_queries import SupportQueries
from crm_contracts.envelope import Event, Identifier, IdentifierKind
from crm_contracts.events.support import (
    TicketEscalated,
    TicketEscalatedPayload,
    TicketOpened,
    TicketOpenedPayload,
    TicketRated,
    TicketRatedPayload,
    TicketReplied,
    TicketRepliedPayload,
    TicketResolved,
    TicketResolvedPayload,
    TicketStatus,
    TicketStatusChanged,
    TicketStatusChangedPayload,
)

pytestmark = pytest.mark.integration
H = timedelta(hours=1)


class T:
    """One ticket's events, keyed like support's relay keys them."""

    def __init__(self, who: Identifier | None, day: str, channel: str, category: str = "delivery") -> None:
        self.id = uuid.uuid4()
        self.opened_at = f.at(day)
        self.ids = (who,) if who else ()
        self.key = who.hash if who else f"anonymous:ticket:{self.id}"
        self.events: list[Event] = [
            self._e(
                TicketOpened,
                self.opened_at,
                TicketOpenedPayload(ticket_id=self.id, channel=channel, category=category),
            )
        ]

    def _e(self, cls: type[Event], at: datetime, payload: Any) -> Event:
        return cls(
            occurred_at=at,
            producer="support.relay",
            customer_key=self.key,
            identifiers=self.ids,
            payload=payload,
        )  # type: ignore[call-arg]

    def reply(self, after: timedelta) -> T:
        p = TicketRepliedPayload(
            ticket_id=self.id, author="staff", first_response_seconds=int(after.total_seconds())
        )
        self.events.append(self._e(TicketReplied, self.opened_at + after, p))
        return self

    def resolve(self, after: timedelta, met: bool) -> T:
        p = TicketResolvedPayload(
            ticket_id=self.id,
            resolution="answered",
            resolution_seconds=int(after.total_seconds()),
            sla_met=met,
        )
        self.events.append(self._e(TicketResolved, self.opened_at + after, p))
        return self

    def rate(self, after: timedelta, score: int) -> T:
        self.events.append(
            self._e(
                TicketRated, self.opened_at + after, TicketRatedPayload(ticket_id=self.id, satisfaction=score)
            )
        )
        return self

    def pending(self, after: timedelta) -> T:
        p = TicketStatusChangedPayload(
            ticket_id=self.id, previous=TicketStatus.OPEN, status=TicketStatus.PENDING
        )
        self.events.append(self._e(TicketStatusChanged, self.opened_at + after, p))
        return self

    def escalate(self, after: timedelta, to: str) -> T:
        p = TicketEscalatedPayload(ticket_id=self.id, escalated_to=to, reason="complaint")
        self.events.append(self._e(TicketEscalated, self.opened_at + after, p))
        return self


def test_support_kpis_of_a_period(client: Client) -> None:
    a_mail, a_phone = f.ident("a@example.jp"), f.ident("a-phone", IdentifierKind.PHONE)
    customer_a = uuid.uuid4()
    tickets = [
        T(a_mail, "2026-11-02", "email").reply(2 * H).resolve(26 * H, True).rate(48 * H, 5),
        T(a_phone, "2026-11-05", "phone", "complaint")
        .escalate(0 * H, "store-manager:S001")
        .reply(30 * H)
        .resolve(80 * H, False)
        .rate(90 * H, 2),
        T(f.ident("b@example.jp"), "2026-11-10", "chat"),  # never answered: backlog
        T(f.ident("c@example.jp"), "2026-10-20", "line").pending(24 * H),  # opened before, still pending
        T(f.ident("d@example.jp"), "2026-11-20", "form")
        .reply(H)
        .resolve(13 * 24 * H, True),  # resolved after the end
        T(None, "2026-11-15", "store").resolve(H, True),  # resolved at the counter, anonymous
    ]
    events: list[Event] = [f.profile(customer_a, [a_mail, a_phone])]
    for t in tickets:
        events += t.events
    f.deliver(client, events)
    f.deliver(client, events, offset=100)  # delivered twice: counted once

    q = SupportQueries(client)
    total = q.kpis(date(2026, 11, 1), date(2026, 12, 1))["total"]
    assert (total["opened"], total["resolved"], total["backlog"], total["customers"]) == (5, 3, 3, 3)
    assert total["median_first_response_seconds"] == 2 * 3600  # of 1 h, 2 h, 30 h
    assert total["median_resolution_seconds"] == 26 * 3600  # of 1 h, 26 h, 80 h
    assert total["sla_met_rate"] == pytest.approx(2 / 3)
    assert (total["csat_average"], total["csat_satisfied_rate"], total["ratings"]) == (3.5, 0.5, 2)
    assert total["csat_distribution"] == {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1}

    by_channel = {g["key"]: g for g in q.kpis(date(2026, 11, 1), date(2026, 12, 1), by="channel")["groups"]}
    assert {k: (g["opened"], g["resolved"], g["backlog"]) for k, g in by_channel.items()} == {
        "email": (1, 1, 0),
        "phone": (1, 1, 0),
        "chat": (1, 0, 1),
        "form": (1, 0, 1),
        "store": (1, 1, 0),
        "line": (0, 0, 1),
    }
    complaints = q.kpis(date(2026, 11, 1), date(2026, 12, 1), category="complaint")["total"]
    assert (complaints["opened"], complaints["sla_met_rate"], complaints["csat_average"]) == (1, 0.0, 2.0)
    # A later period: the form ticket's resolution, nothing opened
    december = q.kpis(date(2026, 12, 1), date(2027, 1, 1))["total"]
    assert (december["opened"], december["resolved"], december["backlog"]) == (0, 1, 2)

    # The 360: both of A's tickets (e-mail and phone) are hers, with purchases' figures
    summary = Queries(client).customer_summary(str(customer_a))
    assert summary is not None
    assert {k: summary["tickets"][k] for k in ("total", "open", "complaints")} == {
        "total": 2,
        "open": 0,
        "complaints": 1,
    }
    history = q.customer_tickets(Queries(client).customer_keys(str(customer_a)))
    assert [t["channel"] for t in history["tickets"]] == ["phone", "email"]
    assert history["tickets"][0]["escalated_to"] == "store-manager:S001"
    assert history["tickets"][0]["satisfaction"] == 2 and history["tickets"][0]["status"] == "resolved"
    bi = client.query(
        "SELECT count() FROM bi_tickets WHERE customer_id = {c:UUID}", parameters={"c": str(customer_a)}
    )
    assert bi.result_rows[0][0] == len(tickets[0].events) + len(tickets[1].events)


def test_a_ticket_opened_and_resolved_in_the_same_instant_is_resolved(client: Client) -> None:
    # A call solved on the phone, imported with one time for both: the order support
    # recorded them in decides (recorded_at), not chance.
    tickets = [T(f.ident(f"same{i}@example.jp"), "2026-11-03", "phone") for i in range(5)]
    events: list[Event] = []
    for t in tickets:
        t.resolve(0 * H, True)
        opened, resolved = t.events
        events += [
            opened.model_copy(update={"recorded_at": opened.occurred_at + timedelta(milliseconds=1)}),
            resolved.model_copy(
                update={"recorded_at": opened.occurred_at + timedelta(milliseconds=1, microseconds=1)}
            ),
        ]
    f.deliver(client, events)
    total = SupportQueries(client).kpis(date(2026, 11, 1), date(2026, 12, 1))["total"]
    assert (total["opened"], total["resolved"], total["backlog"]) == (5, 5, 0)
