"""The demo's customer centre: a deterministic plan, loaded through the real support API
(its own event store) with the history's own timestamps."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from crm_cli import demo
from crm_cli.demo_support import load_tickets, plan_tickets
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration
JST = timezone(timedelta(hours=9))
TODAY = date(2026, 11, 23)  # the day a plan is made on, where nothing reads the clock


def test_the_plan_is_deterministic_and_looks_like_a_customer_centre() -> None:
    plan = demo.plan(600, seed=3, today=TODAY)
    tickets = plan_tickets(plan.people, plan.purchases, 3, TODAY)
    again = plan_tickets(plan.people, plan.purchases, 3, TODAY)
    assert [(t.request_id, t.opened, t.steps) for t in tickets] == [
        (t.request_id, t.opened, t.steps) for t in again
    ]
    writers = {t.person_id for t in tickets}
    assert 0.02 * len(plan.people) < len(writers) < 0.25 * len(plan.people)
    categories = Counter(t.category for t in tickets)
    assert categories["delivery"] and categories["complaint"] and categories["product"]
    assert len(Counter(t.channel for t in tickets)) >= 5
    returned = {p.order_id for p in plan.purchases if p.returned}
    assert all(t.opened.get("order_id") in returned for t in tickets if t.category == "complaint")
    online = {p.order_id for p in plan.purchases if p.channel != "store"}
    assert all(t.opened["order_id"] in online for t in tickets if t.category == "delivery")
    cutoff = datetime.combine(TODAY, time(), JST)  # today's start in Tokyo
    for t in tickets:
        times = [datetime.fromisoformat(t.opened["occurred_at"])] + [
            datetime.fromisoformat(b["occurred_at"]) for _, b in t.steps
        ]
        assert times == sorted(times) and times[-1] < cutoff
        assert set(t.opened["customer"]) - {"name"} <= {"email", "phone", "member_no"}
    assert any(not any(p == "resolution" for p, _ in t.steps) for t in tickets)  # a backlog


def test_the_plan_loads_through_the_support_api(tmp_path: Path) -> None:
    from support.entrypoints.api import create

    # The history ends today, as the demo's does: the support API refuses changes from
    # the future by its own (real) clock.
    today = datetime.now(JST).date()
    plan = demo.plan(300, seed=5, today=today)
    tickets = plan_tickets(plan.people, plan.purchases, 5, today)
    settings = Settings(var_dir=tmp_path / "var", api_keys={"demo": ["*"]})
    app = create(settings)
    seen: list[int] = []
    with TestClient(app) as client:  # runs the app's lifespan (its store) for the transport below

        async def load() -> int:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, timeout=30) as http:
                return await load_tickets(
                    http, "http://support", "demo", tickets, lambda _, n, __: seen.append(n)
                )

        assert asyncio.run(load()) == len(tickets)
        assert asyncio.run(load()) == len(tickets)  # a second load changes nothing
        page = client.get("/v1/tickets", params={"limit": 1}, headers={"X-API-Key": "demo"}).json()
        assert page["total"] == len(tickets)
        rated = sum(any(p == "rating" for p, _ in t.steps) for t in tickets)
        resolved = client.get(
            "/v1/tickets", params={"status": "resolved"}, headers={"X-API-Key": "demo"}
        ).json()
        closed = client.get("/v1/tickets", params={"status": "closed"}, headers={"X-API-Key": "demo"}).json()
        assert resolved["total"] + closed["total"] == sum(
            any(p == "resolution" for p, _ in t.steps) for t in tickets
        )
        assert rated > 0 and seen[-1] == len(tickets)
        first = tickets[0]
        found = client.get(
            "/v1/tickets", params={"limit": 200, "content": "true"}, headers={"X-API-Key": "demo"}
        )
        subjects = {t["content"]["subject"] for t in found.json()["tickets"]}
        assert first.opened["subject"] in subjects or len(tickets) > 200
