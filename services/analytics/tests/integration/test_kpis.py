"""KPIs on chDB against a reference computed here, in plain Python, from the same facts.

The data set is small and hand-shaped (seeded): customers with one or two identifiers,
purchases in store/online/app over six months, returns, anonymous sales and one key the
resolver has not linked. Every figure is checked exactly; then every event is delivered
twice; then a merge and its undo re-attribute the facts.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import factory as f
import pytest
from clickhouse_connect.driver.client import Client

from analytics.queries import OVERVIEW_SERIES, PRICE_BANDS, Queries, RfmRules
from analytics.sink import repoint_merged
from analytics.store import lookup, maintenance
from crm_contracts.envelope import Event, Identifier, IdentifierKind

CATEGORIES = ("tops", "bottoms", "shoes", "bags", "cosmetics")
PRICES = (980, 2_900, 4_900, 9_800, 15_000, 39_000)


@dataclass
class Fact:
    """One purchase or return as the reference sees it."""

    owner: str  # the customer it belongs to ("anon" for anonymous sales)
    day: date
    channel: str
    kind: str
    amount: int
    categories: set[str] = field(default_factory=set)
    max_price: int = 0
    key: str = ""  # the customer_key it was recorded under


@dataclass
class World:
    customers: dict[str, uuid.UUID]
    identifiers: dict[str, list[Identifier]]
    facts: list[Fact]
    events: list[Event]


def _world(seed: int = 11) -> World:
    rng = random.Random(seed)
    customers = {f"c{i}": uuid.UUID(int=rng.getrandbits(128), version=4) for i in range(24)}
    identifiers = {
        name: [f.ident(f"{name}-member", IdentifierKind.MEMBER_NO), f.ident(f"{name}@example.jp")][
            : 1 + (i % 2)
        ]
        for i, name in enumerate(customers)
    }
    facts: list[Fact] = []
    events: list[Event] = []
    start = date(2025, 10, 1)
    n = 0
    for name in customers:
        for _ in range(rng.randint(1, 7)):
            n += 1
            day = start + timedelta(days=rng.randrange(0, 182))
            channel = rng.choice(("store", "store", "online", "app"))
            items = [
                (rng.choice(CATEGORIES), rng.randint(1, 2), rng.choice(PRICES))
                for _ in range(rng.randint(1, 3))
            ]
            who = rng.choice(identifiers[name])
            event = _order(who, day, f"o{n}", channel, items)
            events.append(event)
            total = sum(q * p for _, q, p in items)
            facts.append(
                Fact(
                    name,
                    day,
                    channel,
                    "order",
                    total,
                    {c for c, _, _ in items},
                    max(p for _, _, p in items),
                    who.hash,
                )
            )
            if rng.random() < 0.15:
                back = day + timedelta(days=rng.randint(0, 20))
                refund = items[0][2]
                events.append(f.returned(event, back.isoformat(), refund))  # type: ignore[arg-type]
                facts.append(Fact(name, back, channel, "return", -refund, key=who.hash))
    # anonymous store sales: revenue, never a customer
    for i in range(5):
        day = start + timedelta(days=30 * i + 3)
        events.append(f.store_order(None, day.isoformat(), f"anon{i}", ("tops", 1, 1_000)))
        facts.append(Fact("anon", day, "store", "order", 1_000, {"tops"}, 1_000))
    # a key nobody has linked yet: it stands for a customer of its own
    for i, day in enumerate((date(2026, 1, 10), date(2026, 2, 14))):
        events.append(f.online_order("stray@example.jp", day.isoformat(), f"stray{i}", ("bags", 1, 9_800)))
        facts.append(Fact("stray", day, "online", "order", 9_800, {"bags"}, 9_800))
    for name, cid in customers.items():
        events.append(f.profile(cid, identifiers[name]))
    return World(customers, identifiers, facts, events)


def _order(
    who: Identifier, day: date, order_id: str, channel: str, items: list[tuple[str, int, int]]
) -> Event:
    if channel == "store":
        e = f.store_order("x", day.isoformat(), order_id, *items)
    else:
        e = f.online_order("x", day.isoformat(), order_id, *items, channel=channel)
    return e.model_copy(update={"customer_key": who.hash, "identifiers": (who,)})


# -- the reference ------------------------------------------------------------------------


def _band(price: int) -> int:
    return sum(price >= b for b in PRICE_BANDS)


def reference_kpis(facts: list[Fact], start: date, end: date, channel: str) -> dict[str, Any]:
    days = (end - start).days
    prev = start - timedelta(days=days)

    def ok(x: Fact) -> bool:
        return channel == "all" or x.channel == channel

    known = [x for x in facts if x.owner != "anon"]
    per: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "orders": 0,
            "prev": 0,
            "gross": 0,
            "cats": set(),
            "chans": set(),
            "top": 0,
            "ptop": 0,
            "first": None,
        }
    )
    for x in known:
        if x.day >= end:
            continue
        p = per[x.owner]
        if x.kind == "order" and ok(x):
            p["first"] = x.day if p["first"] is None else min(p["first"], x.day)
            if x.day >= start:
                p["orders"] += 1
                p["gross"] += x.amount
                p["cats"] |= x.categories
                p["top"] = max(p["top"], x.max_price)
            elif x.day >= prev:
                p["prev"] += 1
                p["ptop"] = max(p["ptop"], x.max_price)
        if x.kind == "order" and x.day >= start:
            p["chans"].add(x.channel)
    active = [p for p in per.values() if p["orders"] > 0]
    prev_active = [p for p in per.values() if p["prev"] > 0]
    retained = [p for p in prev_active if p["orders"] > 0]
    in_period = [x for x in facts if start <= x.day < end and ok(x)]
    lifetime = [x for x in known if x.day < end and ok(x)]
    ever = [p for p in per.values() if p["first"] is not None]

    def ratio(a: float, b: float) -> float | None:
        return None if not b else round(a / b, 6)

    purchases = sum(p["orders"] for p in active)
    return {
        "active_customers": len(active),
        "new_customers": sum(1 for p in active if p["first"] >= start),
        "repeat_customers": sum(1 for p in active if p["orders"] >= 2),
        "repeat_purchase_rate": ratio(sum(1 for p in active if p["orders"] >= 2), len(active)),
        "retention_rate": ratio(len(retained), len(prev_active)),
        "churn_rate": None if not prev_active else round(1 - len(retained) / len(prev_active), 6),
        "purchase_frequency": ratio(purchases, len(active)),
        "orders": sum(1 for x in in_period if x.kind == "order"),
        "revenue": sum(x.amount for x in in_period),
        "anonymous_revenue": sum(x.amount for x in in_period if x.owner == "anon"),
        "aov": ratio(sum(p["gross"] for p in active), purchases),
        "historical_ltv": ratio(sum(x.amount for x in lifetime), len(ever)),
        "cross_sell_rate": ratio(sum(1 for p in active if len(p["cats"]) >= 2), len(active)),
        "up_sell_rate": ratio(sum(1 for p in retained if _band(p["top"]) > _band(p["ptop"])), len(retained)),
        "omnichannel_share": ratio(sum(1 for p in active if len(p["chans"]) >= 2), len(active)),
    }


def reference_cohorts(facts: list[Fact], grain: str = "month") -> dict[str, list[int]]:
    def period(d: date) -> date:
        return d.replace(day=1) if grain == "month" else d - timedelta(days=d.weekday())

    def distance(a: date, b: date) -> int:
        return (b.year - a.year) * 12 + b.month - a.month if grain == "month" else (b - a).days // 7

    periods: dict[str, set[date]] = defaultdict(set)
    for x in facts:
        if x.owner != "anon" and x.kind == "order":
            periods[x.owner].add(period(x.day))
    out: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for ps in periods.values():
        first = min(ps)
        for p in ps:
            out[first.isoformat()][distance(first, p)] += 1
    width = max(max(v) for v in out.values()) + 1
    return {c: [v.get(k, 0) for k in range(width)] for c, v in sorted(out.items())}


def _trim(counts: list[int]) -> list[int]:
    """A matrix row without its trailing zeros (the widths of two matrices may differ)."""
    while counts and counts[-1] == 0:
        counts = counts[:-1]
    return counts


def reference_series(facts: list[Fact], start: date, end: date) -> dict[str, dict[str, float]]:
    """Monthly revenue, orders, active customers and AOV."""
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"revenue": 0, "orders": 0, "gross": 0, "who": set()}
    )
    for x in facts:
        if not start <= x.day < end:
            continue
        m = out[x.day.replace(day=1).isoformat()]
        m["revenue"] += x.amount
        if x.kind == "order":
            m["orders"] += 1
            m["gross"] += x.amount
            if x.owner != "anon":
                m["who"].add(x.owner)
    return {
        "revenue": {k: v["revenue"] for k, v in out.items()},
        "orders": {k: v["orders"] for k, v in out.items()},
        "active_customers": {k: len(v["who"]) for k, v in out.items() if v["who"]},
        "aov": {k: round(v["gross"] / v["orders"], 6) if v["orders"] else 0 for k, v in out.items()},
    }


# -- fixtures -----------------------------------------------------------------------------


PERIODS = [
    (date(2026, 1, 1), date(2026, 4, 1), "all"),
    (date(2026, 1, 1), date(2026, 4, 1), "store"),
    (date(2025, 12, 1), date(2026, 1, 1), "online"),
    (date(2026, 2, 1), date(2026, 3, 1), "app"),
]


def _check(queries: Queries, facts: list[Fact]) -> None:
    for start, end, channel in PERIODS:
        got = queries.kpi_overview(start, end, channel)  # type: ignore[arg-type]
        want = reference_kpis(facts, start, end, channel)
        assert {k: got[k] for k in want} == want, (start, end, channel)
    # the last starts after many customers' first purchase: they belong to no cohort
    windows = (("month", date(2025, 9, 1)), ("week", date(2025, 9, 1)), ("month", date(2025, 12, 1)))
    for grain, since in windows:
        cohorts = queries.cohorts(since, date(2026, 5, 1), grain)
        got = {c["cohort"]: _trim(c["counts"]) for c in cohorts["cohorts"]}
        want = {c: _trim(v) for c, v in reference_cohorts(facts, grain).items() if c >= since.isoformat()}
        assert want == got, (grain, since)
    start, end = date(2025, 9, 1), date(2026, 5, 1)
    for metric, want in reference_series(facts, start, end).items():
        got = {p["bucket"]: p["value"] for p in queries.timeseries(metric, start, end, "month")}
        assert got == want, metric
    # Series of rates: each month's point is that month's figure (previous month for
    # retention and up-sell), computed independently; a partial first week is clipped.
    months = [(date(2026, m, 1), date(2026, m + 1, 1)) for m in (1, 2, 3)]
    for metric in OVERVIEW_SERIES:
        got = queries.timeseries(metric, months[0][0], months[-1][1], "month", "store")
        want = [reference_kpis(facts, lo, hi, "store")[metric] for lo, hi in months]
        assert [p["value"] for p in got] == want, metric
        assert [p["bucket"] for p in got] == [lo.isoformat() for lo, _ in months]
    weekly = queries.timeseries("repeat_purchase_rate", date(2026, 1, 7), date(2026, 1, 21), "week")
    assert [p["bucket"] for p in weekly] == ["2026-01-05", "2026-01-12", "2026-01-19"]
    assert (
        weekly[0]["value"]
        == reference_kpis(facts, date(2026, 1, 7), date(2026, 1, 12), "all")["repeat_purchase_rate"]
    )


def test_kpis_and_cohorts_match_the_reference_and_survive_duplicates(client: Client) -> None:
    world = _world()
    f.deliver(client, world.events)
    queries = Queries(client)
    facts = world.facts
    assert reference_kpis(facts, *PERIODS[0])["active_customers"] > 10  # the data set is not trivial
    _check(queries, facts)

    # Every event delivered again (a sink retry after a crash): nothing counts twice.
    f.deliver(client, world.events, offset=10_000)
    _check(queries, facts)


def test_merge_and_undo_reattribute_every_figure_at_once(client: Client) -> None:
    world = _world()
    f.deliver(client, world.events)
    queries = Queries(client)
    a, b = "c2", "c5"  # c5 has two identifiers, c2 one
    survivor, absorbed = world.customers[a], world.customers[b]
    before = {p: queries.kpi_overview(*p) for p in PERIODS}  # type: ignore[arg-type]

    t0 = datetime.now(UTC)
    merge = f.merged(survivor, absorbed, world.identifiers[b], t0)
    snapshots = [
        f.profile(
            survivor, world.identifiers[a] + world.identifiers[b], recorded_at=t0 + timedelta(milliseconds=5)
        ),
        f.profile(
            absorbed, [], status="merged", merged_into=survivor, recorded_at=t0 + timedelta(milliseconds=5)
        ),
    ]
    f.deliver(client, [merge, *snapshots], offset=20_000)
    repoint_merged(client, merge)
    merged_facts = [Fact(a if x.owner == b else x.owner, *list(x.__dict__.values())[1:]) for x in world.facts]
    _check(queries, merged_facts)
    assert queries.customer_keys(str(absorbed)) == [str(absorbed)]  # its keys all moved
    assert set(queries.customer_keys(str(survivor))) >= {i.hash for i in world.identifiers[b]}

    t1 = t0 + timedelta(seconds=1)
    undo = f.undone(survivor, absorbed, world.identifiers[b], t1)
    snapshots = [
        f.profile(survivor, world.identifiers[a], recorded_at=t1 + timedelta(milliseconds=5)),
        f.profile(absorbed, world.identifiers[b], recorded_at=t1 + timedelta(milliseconds=5)),
    ]
    f.deliver(client, [undo, *snapshots], offset=30_000)
    _check(queries, world.facts)
    assert {p: queries.kpi_overview(*p) for p in PERIODS} == before  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "rules",
    [
        RfmRules(),
        RfmRules(dormant_days=60, loyal_min_orders=3, loyal_min_revenue=20_000),
        RfmRules(loyal_min_orders=1, loyal_min_revenue=5_000_000_000),  # past UInt32: no one
    ],
    ids=["default", "tighter", "unreachable-revenue"],
)
def test_segments_partition_the_customers(client: Client, rules: RfmRules) -> None:
    world = _world()
    f.deliver(client, world.events)
    queries = Queries(client)
    as_of = date(2026, 4, 1)
    result = queries.segments(as_of, rules=rules)
    sizes = {s["segment"]: s["customers"] for s in result["segments"]}
    # reference: per customer, orders/revenue/last purchase before as_of
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"orders": 0, "revenue": 0, "last": date.min})
    for x in world.facts:
        if x.owner == "anon" or x.day >= as_of:
            continue
        per[x.owner]["revenue"] += x.amount
        per[x.owner]["last"] = max(per[x.owner]["last"], x.day)
        per[x.owner]["orders"] += x.kind == "order"
    want: dict[str, int] = defaultdict(int)
    for p in per.values():
        if (as_of - p["last"]).days > rules.dormant_days:
            want["dormant"] += 1
        elif p["orders"] >= rules.loyal_min_orders and p["revenue"] >= rules.loyal_min_revenue:
            want["loyal"] += 1
        elif p["orders"] >= 2:
            want["repeat"] += 1
        else:
            want["new"] += 1
    assert sizes == {s: want.get(s, 0) for s in ("new", "repeat", "loyal", "dormant")}
    assert sum(r["customers"] for r in result["rfm"]) == len(per)
    assert sizes["repeat"] > 0  # the rules leave something to list
    members = queries.segment_members("repeat", as_of, rules=rules, limit=1000)
    assert len(members) == sizes["repeat"]
    assert [m["revenue"] for m in members] == sorted((m["revenue"] for m in members), reverse=True)


def test_timeline_follows_the_customer_across_channels(client: Client) -> None:
    world = _world()
    when = datetime(2026, 3, 30, 3, tzinfo=UTC)
    who = world.identifiers["c5"][1]
    views = [f.viewed("c5@example.jp", when + timedelta(minutes=i)) for i in range(3)]
    assert views[0].customer_key == who.hash
    f.deliver(client, [*world.events, *views])
    queries = Queries(client)
    timeline = queries.timeline(str(world.customers["c5"]), limit=500)
    owned = [x for x in world.facts if x.owner == "c5"]
    kinds = [e["event_type"] for e in timeline]
    assert kinds.count("interaction.recorded") == 3
    assert sum(k.startswith("order.") for k in kinds) == len(owned)
    assert [e["occurred_at"] for e in timeline] == sorted((e["occurred_at"] for e in timeline), reverse=True)
    assert queries.timeline(str(world.customers["c5"]), limit=2) == timeline[:2]


def test_timeline_pages_without_skipping_events_at_the_same_instant(client: Client) -> None:
    same = datetime(2026, 3, 30, 3, tzinfo=UTC)
    views = [f.viewed("twin@example.jp", same) for _ in range(5)]
    profile = f.profile(uuid.uuid4(), [f.ident("twin@example.jp")])
    f.deliver(client, [*views, profile])
    queries = Queries(client)
    cid = str(profile.payload.customer_id)
    seen: list[str] = []
    before: datetime | None = None
    before_event: str | None = None
    for _ in range(5):
        page = queries.timeline(cid, limit=2, before=before, before_event=before_event)
        if not page:
            break
        seen += [e["event_id"] for e in page]
        before = datetime.fromisoformat(page[-1]["occurred_at"])
        before_event = page[-1]["event_id"]
    assert sorted(seen) == sorted(str(v.event_id) for v in views)


def test_weekly_and_monthly_series_of_new_customers(client: Client) -> None:
    world = _world()
    f.deliver(client, world.events)
    queries = Queries(client)
    weekly = queries.timeseries("new_customers", date(2025, 10, 1), date(2026, 4, 1), "week")
    monthly = queries.timeseries("new_customers", date(2025, 10, 1), date(2026, 4, 1), "month")
    firsts: dict[str, date] = {}
    for x in world.facts:
        if x.owner != "anon" and x.kind == "order":
            firsts[x.owner] = min(firsts.get(x.owner, x.day), x.day)
    assert sum(p["value"] for p in weekly) == sum(p["value"] for p in monthly) == len(firsts)
    assert all(date.fromisoformat(p["bucket"]).weekday() == 0 for p in weekly)


def test_a_merge_chain_in_one_batch_ends_at_the_last_survivor(client: Client) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids = {x: f.ident(f"{x}@example.jp") for x in (a, b, c)}
    f.deliver(client, [f.profile(x, [ids[x]]) for x in (a, b, c)])
    t0 = datetime.now(UTC)
    first = f.merged(b, a, [ids[a]], t0)  # A into B
    second = f.merged(c, b, [ids[b]], t0 + timedelta(milliseconds=1))  # then B into C
    f.deliver(client, [first, second], offset=100)
    repoint_merged(client, first, second)
    owners = dict(client.query("SELECT person_key, toString(customer_id) FROM identity_current").result_rows)
    assert owners[str(a)] == owners[str(b)] == owners[ids[a].hash] == owners[ids[b].hash] == str(c)
    queries = Queries(client)
    assert set(queries.customer_keys(str(c))) >= {str(a), str(b), str(c), ids[a].hash, ids[b].hash}


def test_the_lookup_keeps_the_newest_owner_and_rebuilds_to_the_same_figures(client: Client) -> None:
    world = _world()
    f.deliver(client, world.events)
    queries = Queries(client)
    a, b = "c2", "c5"
    t0 = datetime.now(UTC)
    merge = f.merged(world.customers[a], world.customers[b], world.identifiers[b], t0)
    undo = f.undone(world.customers[a], world.customers[b], world.identifiers[b], t0 + timedelta(seconds=1))
    # The undo arrives first, the merge it undid afterwards: the older decision loses.
    f.deliver(client, [undo], offset=40_000)
    f.deliver(client, [merge], offset=40_001)
    _check(queries, world.facts)

    # An identifier let go of (a shared card): its purchases stand on their own key,
    # apart from the customer's other identifier's.
    card = world.identifiers[b][0]
    f.deliver(client, [f.unlinked(world.customers[b], [card], t0 + timedelta(seconds=2))], offset=40_002)
    loose = [
        Fact("loose", *list(x.__dict__.values())[1:]) if x.owner == b and x.key == card.hash else x
        for x in world.facts
    ]
    assert any(
        reference_kpis(loose, *p) != reference_kpis(world.facts, *p) for p in PERIODS
    )  # the split shows in the figures
    _check(queries, loose)
    assert card.hash not in queries.customer_keys(str(world.customers[b]))

    before = {p: queries.kpi_overview(*p) for p in PERIODS}  # type: ignore[arg-type]
    size = lookup.rebuild(client)
    assert size.keys == client.query("SELECT uniqExact(key_hash) FROM identity_map").result_rows[0][0]
    assert {p: queries.kpi_overview(*p) for p in PERIODS} == before  # type: ignore[arg-type]

    # Emptied (a lost file, an upgrade): ensure() builds it again from identity_map.
    client.command("TRUNCATE TABLE identity_lookup")
    assert lookup.ensure(client) is True
    assert lookup.ensure(client) is False
    assert {p: queries.kpi_overview(*p) for p in PERIODS} == before  # type: ignore[arg-type]


def test_compacting_quiet_partitions_leaves_one_part_each_and_the_same_figures(client: Client) -> None:
    world = _world()
    f.deliver(client, world.events)
    f.deliver(client, world.events, offset=10_000)  # every order twice, in other parts
    queries = Queries(client)
    client.command("SYSTEM STOP MERGES orders")  # ClickHouse's own merges would blur what is measured
    parts = (
        "SELECT partition_id, count() FROM system.parts WHERE table = 'orders' AND active"
        " GROUP BY partition_id ORDER BY partition_id"
    )
    before = dict(client.query(parts).result_rows)
    assert all(n >= 2 for n in before.values())
    assert maintenance.compact(client, quiet_s=3600) == []  # nothing has been quiet that long

    client.command("SYSTEM START MERGES orders")  # OPTIMIZE is a merge too
    done = maintenance.compact(client, quiet_s=0, spare_latest=1)
    after = dict(client.query(parts).result_rows)
    latest = max(before)
    assert done and latest not in done  # spared, whatever its parts
    assert {p: n for p, n in after.items() if p != latest} == {p: 1 for p in before if p != latest}
    _check(queries, world.facts)
