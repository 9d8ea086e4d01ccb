"""Funnels on chDB: exact step counts on a small hand-made data set.

``Queries.funnel`` promises customers (not keys) reaching each step in order within the
window of their first step, in ``[start, end)`` of Japanese days: each case below is one
way a step can fail to count, and the last is a customer whose steps sit on two keys
until a merge joins them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import factory as f
import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from analytics.entrypoints.api import create
from analytics.queries import Queries
from analytics.sink import repoint_merged
from analytics.store.clickhouse import connect
from analytics.store.migrations import migrate
from crm_contracts.envelope import Event
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration

JST = ZoneInfo("Asia/Tokyo")
START, END = date(2026, 3, 1), date(2026, 4, 1)
DAY = 86_400
STEPS: list[tuple[str, str | None]] = [
    ("interaction.recorded", "product_viewed"),
    ("interaction.recorded", "added_to_cart"),
    ("order.online_completed", None),
]


def jst(day: int, hour: int, minute: int = 0) -> datetime:
    """An instant of March 2026 in Tokyo (day 0: the last of February)."""
    return datetime(2026, 3, 1, hour, minute, tzinfo=JST) + timedelta(days=day - 1)


def view(who: str, when: datetime) -> Event:
    return f.viewed(who, when, "product_viewed")


def cart(who: str, when: datetime) -> Event:
    return f.viewed(who, when, "added_to_cart")


def order(who: str, when: datetime) -> Event:
    e = f.online_order(who, "2026-03-01", f"o-{who}-{when:%d%H%M}", ("tops", 1, 2_900))
    return e.model_copy(update={"occurred_at": when})


# Every customer below has one key (their e-mail) and no profile, so each key is a
# customer of its own, except eve: two keys, two profiles, merged later.
EVENTS: list[Event] = [
    # ann: all three in order within the hour
    view("ann", jst(3, 10)),
    cart("ann", jst(3, 10, 30)),
    order("ann", jst(3, 11)),
    # ben: viewed and carted, never ordered
    view("ben", jst(4, 10)),
    cart("ben", jst(4, 10, 5)),
    # cat: out of order, carted before viewing, then ordered: only the view counts
    cart("cat", jst(5, 9)),
    view("cat", jst(5, 10)),
    order("cat", jst(5, 11)),
    # dan: in order, but cart and order two days after the view: past the window
    view("dan", jst(6, 10)),
    cart("dan", jst(8, 10)),
    order("dan", jst(8, 11)),
    # fay: 1 March 08:00 in Tokyo is 28 February in UTC: inside the period all the same
    view("fay", jst(1, 8)),
    cart("fay", jst(1, 8, 30)),
    order("fay", jst(1, 9)),
    # hal: viewed and carted on 28 February (Tokyo), outside the period; ordered in it
    view("hal", jst(0, 23, 30)),
    cart("hal", jst(0, 23, 45)),
    order("hal", jst(1, 0, 15)),
    # ivy: everything in order, but in April: after the period
    view("ivy", jst(32, 10)),
    cart("ivy", jst(32, 10, 5)),
    order("ivy", jst(32, 10, 10)),
    # eve: viewed and carted under her private e-mail, ordered under her work e-mail
    view("eve@example.jp", jst(10, 10)),
    cart("eve@example.jp", jst(10, 10, 10)),
    order("eve.work@example.jp", jst(10, 10, 20)),
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var")


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    c = connect(settings)
    migrate(c)
    yield c
    c.close()


def _counts(result: dict[str, Any]) -> list[int]:
    return [step["customers"] for step in result["steps"]]


def test_funnel_counts_customers_through_ordered_steps_within_the_window(
    client: Client, settings: Settings
) -> None:
    eve, eve_work = uuid.uuid4(), uuid.uuid4()
    private, work = f.ident("eve@example.jp"), f.ident("eve.work@example.jp")
    f.deliver(client, [*EVENTS, f.profile(eve, [private]), f.profile(eve_work, [work])])
    queries = Queries(client)

    # viewed: ann, ben, cat, dan, fay, eve; carted after: ann, ben, fay, eve; ordered: ann, fay
    # (eve's order is another customer's, who never viewed: they reach no step)
    before = queries.funnel(STEPS, START, END, DAY)
    assert _counts(before) == [6, 4, 2]
    assert before["window_seconds"] == DAY
    assert [s["step"] for s in before["steps"]] == [
        "interaction.recorded:product_viewed",
        "interaction.recorded:added_to_cart",
        "order.online_completed",
    ]
    assert [s["conversion_from_first"] for s in before["steps"]] == [1.0, 0.666667, 0.333333]
    assert [s["conversion_from_previous"] for s in before["steps"]] == [1.0, 0.666667, 0.5]

    # the window: at three days dan's cart and order count too
    assert _counts(queries.funnel(STEPS, START, END, 3 * DAY)) == [6, 5, 3]
    # the period: from 2 March fay's steps are left out
    assert _counts(queries.funnel(STEPS, START + timedelta(days=1), END, DAY)) == [5, 3, 1]

    # eve's work account is merged into her: her order now follows her view and cart
    t0 = datetime.now(UTC)
    merge = f.merged(eve, eve_work, [work], t0)
    snapshots = [
        f.profile(eve, [private, work], recorded_at=t0 + timedelta(milliseconds=5)),
        f.profile(eve_work, [], status="merged", merged_into=eve, recorded_at=t0 + timedelta(milliseconds=5)),
    ]
    f.deliver(client, [merge, *snapshots], offset=1_000)
    repoint_merged(client, merge)
    after = queries.funnel(STEPS, START, END, DAY)
    assert _counts(after) == [6, 4, 3]
    assert [s["conversion_from_previous"] for s in after["steps"]] == [1.0, 0.666667, 0.75]

    # The API parses event_type:kind steps into the same query.
    with TestClient(create(settings, embedded_sink=False)) as api:
        r = api.get(
            "/v1/funnels",
            params={
                "steps": "interaction.recorded:product_viewed, interaction.recorded:added_to_cart,"
                "order.online_completed",
                "start": START.isoformat(),
                "end": END.isoformat(),
                "window_seconds": DAY,
            },
            headers={"X-API-Key": "dev-read-key"},
        )
    assert r.status_code == 200
    assert r.json() == after
