"""The demo retailer: a deterministic omnichannel chain, loaded through the public APIs.

**What it generates** (seeded; size by ``customers``): people in households across
prefectures (``crm_platform.synthetic``: Japanese names in kanji and kana, shared family
e-mails, landlines, moves, new phones, width/kana/typo noise), each registered by one
to four channels (store counter, web shop, app, call centre); members with a member
number; two years of purchases with seasonality (summer and year-end sales, weekends),
categories and price bands, in stores across prefectures, the web shop and the app;
returns; web/app interactions; guest checkouts in the web shop by e-mail that a later
registration ties to the person.

**How it loads** — the way a retailer's systems would: registrations to identity's API
(``POST /customers``), enrolments to engagement's membership API, purchases, returns
and interactions to the ingestion API in batches (POS key for stores, shop key for the
web shop and app). Nothing is written to a store or a topic directly.

**Ground truth** — who is who, and every purchase with its person, is written next to
the data (``var/demo/truth.json``), so resolution quality and "every purchase counted
exactly once" can be checked against it (``crm demo --check``, tests/e2e).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from crm_platform.synthetic import PLACES, Person, Population, Record, pairwise_metrics

JST = timedelta(hours=9)
#: (category, price points in yen): a fashion-and-beauty chain.
CATALOGUE: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("tops", (1_990, 2_990, 3_990, 5_990)),
    ("bottoms", (2_990, 3_990, 5_990, 7_990)),
    ("outerwear", (7_990, 12_900, 19_900, 29_900)),
    ("shoes", (4_990, 7_990, 12_900)),
    ("bags", (3_990, 9_900, 24_900, 49_900)),
    ("accessories", (990, 1_490, 2_990)),
    ("cosmetics", (1_100, 2_200, 3_300, 5_500)),
)
#: month → relative demand (summer sale in July, year-end and New Year sales).
SEASON = {1: 1.3, 2: 0.8, 3: 1.0, 4: 1.0, 5: 0.9, 6: 1.0, 7: 1.3, 8: 1.0, 9: 0.9, 10: 1.0, 11: 1.1, 12: 1.6}
STORES: tuple[tuple[str, str], ...] = tuple((f"S{idx + 1:03d}", place[0]) for idx, place in enumerate(PLACES))
INTERACTIONS = (
    "product_viewed",
    "product_viewed",
    "product_viewed",
    "added_to_cart",
    "searched",
    "app_opened",
)


@dataclass
class Purchase:
    """One generated purchase (or its return), as the truth file keeps it."""

    order_id: str
    person_id: int
    channel: str
    day: str
    total: int
    returned: int = 0


@dataclass
class DemoPlan:
    seed: int
    people: list[Person]
    #: registrations in the order they are sent; ``late`` ones come after the purchases
    registrations: list[Record]
    late: set[int]
    members: list[tuple[str, str, str]]  # member_no, channel, enrolled_at
    events: list[dict[str, Any]]  # ingestion API events, in time order
    purchases: list[Purchase]
    interactions: int = 0
    #: the customer centre's inquiries (crm_cli.demo_support.PlannedTicket)
    tickets: list[Any] = field(default_factory=list)
    #: the day the plan ends before (Asia/Tokyo): the surveys' "recent buyers" are recent to it
    today: date | None = None


@dataclass
class LoadReport:
    registrations: int = 0
    registrations_failed: int = 0
    members: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    tickets: int = 0
    #: what the surveys-and-forms piece sent (crm_cli.demo_surveys.SurveyLoadReport)
    surveys: dict[str, Any] = field(default_factory=dict)
    customer_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    first_rejection: str = ""


def plan(customers: int, seed: int = 7, today: date | None = None, months: int = 24) -> DemoPlan:
    """Everything the demo retailer will send, decided up front (deterministic)."""
    rng = random.Random(seed)
    today = today or (datetime.now(UTC) + JST).date()
    first_day = today - timedelta(days=months * 30)
    population = Population(seed)
    people: list[Person] = []
    registrations: list[Record] = []
    for person, records in population.generate(customers):
        people.append(person)
        registrations.extend(records)
    rng.shuffle(registrations)
    # Some web-shop registrations arrive after the person already bought as a guest.
    late = {i for i, r in enumerate(registrations) if r.channel == "online" and rng.random() < 0.3}
    online_email = {
        registrations[i].person_id: registrations[i].email for i in late if registrations[i].email
    }

    members = []
    for person in people:
        if person.member_no:
            enrolled = first_day + timedelta(days=rng.randrange(0, 200))
            channel = rng.choice(("store", "store", "online", "app"))
            members.append((person.member_no, channel, _at(enrolled, 11, rng).isoformat()))

    events: list[dict[str, Any]] = []
    purchases: list[Purchase] = []
    n_interactions = 0
    for person in people:
        # how much they shop: most a few times a year, a loyal few every few weeks
        intensity = rng.choices((0.3, 1.0, 3.0, 8.0), weights=(0.35, 0.4, 0.18, 0.07))[0]
        home_store = rng.choice([s for s in STORES if s[1] == person.place[0]] or list(STORES))
        prefers = rng.choices(("store", "online", "app"), weights=(0.55, 0.3, 0.15))[0]
        start = first_day + timedelta(days=rng.randrange(0, months * 30 - 30))
        churns = rng.random() < 0.35
        end = start + timedelta(days=rng.randint(60, 400)) if churns else today
        day = start
        band = rng.randrange(0, 3)
        while day < min(end, today):
            gap = max(1, int(rng.expovariate(intensity / 60) + 1))
            day += timedelta(days=gap)
            if day >= min(end, today) or rng.random() > SEASON[day.month] / 1.6:
                continue
            channel = prefers if rng.random() < 0.75 else rng.choice(("store", "online", "app"))
            if rng.random() < 0.04:
                band = min(band + 1, 3)  # trading up
            lines: list[dict[str, Any]] = []
            for line_no in range(1, rng.choices((1, 2, 3, 4), weights=(0.5, 0.3, 0.15, 0.05))[0] + 1):
                category, prices = rng.choice(CATALOGUE)
                price = prices[
                    min(band, len(prices) - 1) if rng.random() < 0.6 else rng.randrange(len(prices))
                ]
                lines.append(
                    {
                        "line_no": line_no,
                        "sku": f"{category[:3].upper()}-{price}",
                        "category": category,
                        "quantity": rng.choices((1, 2, 3), weights=(0.85, 0.12, 0.03))[0],
                        "unit_price": price,
                    }
                )
            total = sum(line["quantity"] * line["unit_price"] for line in lines)
            when = _at(day, rng.randint(10, 20), rng)
            order_id = f"{channel[0].upper()}{len(purchases) + 1:08d}"
            identifiers = _observed(person, channel, rng, online_email)
            if channel == "store":
                store = home_store if rng.random() < 0.8 else rng.choice(STORES)
                payload = {
                    "order_id": order_id,
                    "store_id": store[0],
                    "register_id": f"R{rng.randint(1, 4)}",
                    "lines": lines,
                    "total": total,
                    "payment_method": rng.choice(("cash", "credit_card", "qr", "e_money")),
                }
                kind = "store_order"
            else:
                payload = {
                    "order_id": order_id,
                    "channel": channel,
                    "lines": lines,
                    "total": total,
                    "shipping_prefecture": person.place[0],
                    "payment_method": "credit_card",
                }
                kind = "online_order"
            event = {
                "type": kind,
                "occurred_at": when.isoformat(),
                "identifiers": identifiers,
                "payload": payload,
            }
            events.append(event)
            purchase = Purchase(order_id, person.person_id, channel, day.isoformat(), total)
            purchases.append(purchase)
            if rng.random() < 0.04:
                back = min(day + timedelta(days=rng.randint(1, 14)), today)
                line = lines[0]
                events.append(
                    {
                        "type": "return",
                        "occurred_at": _at(back, 15, rng).isoformat(),
                        "identifiers": identifiers,
                        "payload": {
                            "return_id": f"RT-{order_id}",
                            "original_order_id": order_id,
                            "channel": channel,
                            # a store return names its order's store (its namespace)
                            **({"store_id": payload["store_id"]} if channel == "store" else {}),
                            "lines": [
                                {
                                    "line_no": 1,
                                    "sku": line["sku"],
                                    "category": line["category"],
                                    "quantity": 1,
                                    "amount": line["unit_price"],
                                }
                            ],
                            "refund_total": line["unit_price"],
                            "reason": rng.choice(("size", "defect", "changed_mind")),
                        },
                    }
                )
                purchase.returned = line["unit_price"]
            if channel != "store" or rng.random() < 0.2:
                for _ in range(rng.randint(1, 4)):
                    interaction = rng.choice(INTERACTIONS)
                    moment = when - timedelta(minutes=rng.randint(1, 600))
                    events.append(
                        {
                            "type": "interaction",
                            # fixed, so that sending a batch again (after a 503) is harmless
                            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                            "occurred_at": moment.isoformat(),
                            "identifiers": {"email": person.email} if person.email else {},
                            "payload": {
                                "kind": interaction,
                                "channel": "app" if channel == "app" else "online",
                                "sku": lines[0]["sku"],
                                "category": lines[0]["category"],
                            }
                            | ({"query": lines[0]["category"]} if interaction == "searched" else {}),
                        }
                    )
                    n_interactions += 1
    events.sort(key=lambda e: e["occurred_at"])
    from crm_cli.demo_support import plan_tickets  # it builds on this module's purchases

    tickets = plan_tickets(people, purchases, seed, today)
    return DemoPlan(
        seed, people, registrations, late, members, events, purchases, n_interactions, tickets, today
    )


def _at(day: date, hour: int, rng: random.Random) -> datetime:
    return datetime(day.year, day.month, day.day, hour, rng.randrange(60), tzinfo=UTC) - JST


def _observed(
    person: Person, channel: str, rng: random.Random, guest_email: dict[int, str | None]
) -> dict[str, str]:
    """What the till or the shop knows about the buyer."""
    if channel == "store":
        if person.member_no and rng.random() < 0.8:
            return {"member_no": person.member_no}
        if rng.random() < 0.3:
            return {"phone": person.mobile}
        return {}  # an anonymous sale
    ids: dict[str, str] = {}
    email = guest_email.get(person.person_id) or person.email
    if email:
        ids["email"] = email
    if channel == "app" and person.member_no:
        ids["member_no"] = person.member_no
    return ids


def registration_body(record: Record, registered_at: datetime | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": record.channel,
        "name_kanji": record.name_kanji,
        "name_kana": record.name_kana,
        "birthday": record.birthday.isoformat() if record.birthday else None,
        "gender": record.gender,
        "prefecture": record.prefecture,
        "postal_code": record.postal_code,
        "address": record.address,
        "email": record.email,
        "phone": record.phone,
        "member_no": record.member_no,
        "consents": {"email": bool(record.email), "postal": record.address is not None},
    }
    if registered_at is not None:
        body["registered_at"] = registered_at.isoformat()
    return {k: v for k, v in body.items() if v is not None}


# -- loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    identity: str = "http://127.0.0.1:8001"
    engagement: str = "http://127.0.0.1:8002"
    support: str = "http://127.0.0.1:8003"
    analytics: str = "http://127.0.0.1:8004"
    admin_key: str = "dev-admin-key"
    pos_key: str = "dev-pos-key"
    shop_key: str = "dev-shop-key"
    read_key: str = "dev-read-key"


Progress = Callable[[str, int, int], None]


async def load(plan_: DemoPlan, endpoints: Endpoints, progress: Progress, concurrency: int = 8) -> LoadReport:
    """Send the plan through the APIs; returns what was accepted."""
    report = LoadReport()
    started = asyncio.get_running_loop().time()
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        early = [r for i, r in enumerate(plan_.registrations) if i not in plan_.late]
        late = [r for i, r in enumerate(plan_.registrations) if i in plan_.late]
        ids = await _register(http, endpoints, early, report, progress, concurrency, "registrations")
        await _enrol(http, endpoints, plan_.members, report, progress, concurrency)
        await _ingest(http, endpoints, plan_.events, report, progress, concurrency)
        ids += await _register(http, endpoints, late, report, progress, concurrency, "late registrations")
        report.customer_ids = ids
        from crm_cli.demo_support import load_tickets

        # history: the admin key has support:import, so each step keeps its own time
        report.tickets = await load_tickets(
            http, endpoints.support, endpoints.admin_key, plan_.tickets, progress, concurrency
        )
    from crm_cli.demo_surveys import load_surveys

    # a post-purchase survey to recent buyers, a sign-up form, a seminar with a waitlist
    surveyed = await load_surveys(
        plan_, report, endpoints, progress, seed=plan_.seed, today=plan_.today, concurrency=concurrency
    )
    if surveyed.failures:
        raise RuntimeError(
            f"{len(surveyed.failures)} survey or form requests failed, e.g. {surveyed.failures[0]}"
        )
    report.surveys = asdict(surveyed)
    if report.events_rejected:
        # The generator makes valid events only: a rejection is a bug worth stopping for.
        raise RuntimeError(
            f"{report.events_rejected} demo events were rejected, e.g. {report.first_rejection}"
        )
    report.seconds = asyncio.get_running_loop().time() - started
    return report


async def _gather_limited(items: Sequence[Any], work: Callable[[Any], Any], concurrency: int) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> Any:
        async with semaphore:
            return await work(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


async def _register(
    http: httpx.AsyncClient,
    endpoints: Endpoints,
    records: list[Record],
    report: LoadReport,
    progress: Progress,
    concurrency: int,
    label: str,
) -> list[str]:
    done = 0
    headers = {"X-API-Key": endpoints.admin_key}

    async def one(record: Record) -> str:
        nonlocal done
        for attempt in range(5):
            response = await http.post(
                f"{endpoints.identity}/customers", json=registration_body(record), headers=headers
            )
            if response.status_code in (200, 201):
                break
            if response.status_code in (409, 503) and attempt < 4:
                await asyncio.sleep(0.2 * (attempt + 1))  # a concurrent edit of the same customer
                continue
            report.registrations_failed += 1
            done += 1
            return ""
        report.registrations += 1
        done += 1
        progress(label, done, len(records))
        return str(response.json()["customer_id"])

    return await _gather_limited(records, one, concurrency)


async def _enrol(
    http: httpx.AsyncClient,
    endpoints: Endpoints,
    members: list[tuple[str, str, str]],
    report: LoadReport,
    progress: Progress,
    concurrency: int,
) -> None:
    headers = {"X-API-Key": endpoints.admin_key}

    async def one(member: tuple[str, str, str]) -> None:
        member_no, channel, at = member
        body = {"member_no": member_no, "channel": channel, "enrolled_at": at}
        response = await http.post(f"{endpoints.engagement}/v1/members", json=body, headers=headers)
        if response.status_code in (200, 201, 409):  # 409: enrolled by an earlier run
            report.members += 1
        progress("memberships", report.members, len(members))

    await _gather_limited(members, one, concurrency)


async def _ingest(
    http: httpx.AsyncClient,
    endpoints: Endpoints,
    events: list[dict[str, Any]],
    report: LoadReport,
    progress: Progress,
    concurrency: int,
    batch: int = 500,
) -> None:
    def key(e: dict[str, Any]) -> str:
        in_store = e["type"] == "store_order" or e["payload"].get("channel") == "store"
        return endpoints.pos_key if in_store else endpoints.shop_key

    # A return is checked against its order: every order is on the broker first.
    phases = [[e for e in events if e["type"] != "return"], [e for e in events if e["type"] == "return"]]
    sent = 0

    async def one(chunk: tuple[str, list[dict[str, Any]]]) -> None:
        nonlocal sent
        api_key, items = chunk
        for attempt in range(10):
            response = await http.post(
                f"{endpoints.engagement}/v1/batch", json={"events": items}, headers={"X-API-Key": api_key}
            )
            if response.status_code in (202, 422):
                break
            if attempt == 9:  # the broker stayed away: say so rather than lose events
                response.raise_for_status()
            await asyncio.sleep(0.5 * (attempt + 1))  # 503: nothing was lost, send again
        for result in response.json()["results"]:
            if result["status"] in ("accepted", "duplicate"):
                report.events_accepted += 1
            else:
                report.events_rejected += 1
                if not report.first_rejection:
                    report.first_rejection = f"{items[result['index']]['type']}: {result['errors']}"
        sent += len(items)
        progress("purchases, returns, interactions", sent, len(events))

    for phase in phases:
        work = []
        for api_key in (endpoints.pos_key, endpoints.shop_key):
            mine = [e for e in phase if key(e) == api_key]
            work += [(api_key, mine[i : i + batch]) for i in range(0, len(mine), batch)]
        await _gather_limited(work, one, concurrency)


# -- truth and evaluation ------------------------------------------------------------------


def write_truth(path: Path, plan_: DemoPlan, report: LoadReport) -> None:
    early = [r for i, r in enumerate(plan_.registrations) if i not in plan_.late]
    late = [r for i, r in enumerate(plan_.registrations) if i in plan_.late]
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = {
        "seed": plan_.seed,
        "people": len(plan_.people),
        "registrations": [
            {"person_id": r.person_id, "channel": r.channel, "customer_id": cid}
            for r, cid in zip([*early, *late], report.customer_ids, strict=True)
        ],
        "purchases": [asdict(p) for p in plan_.purchases],
        "interactions": plan_.interactions,
        "surveys": report.surveys,
        "tickets": [
            {
                "person_id": t.person_id,
                "channel": t.channel,
                "category": t.category,
                "opened_at": t.opened["occurred_at"],
            }
            for t in plan_.tickets
        ],
    }
    path.write_text(json.dumps(truth, ensure_ascii=False))


def resolution_quality(truth: dict[str, Any], current: dict[str, str]) -> dict[str, float]:
    """Pairwise precision/recall/F1 of registrations' *current* customers (after every
    merge) against who they really are."""
    rows = [r for r in truth["registrations"] if r["customer_id"]]
    predicted = [current.get(r["customer_id"], r["customer_id"]) for r in rows]
    metrics = pairwise_metrics(predicted, [r["person_id"] for r in rows])
    return {
        "registrations": len(rows),
        "people": len({r["person_id"] for r in rows}),
        "customers": len(set(predicted)),
        "precision": round(metrics.precision, 4),
        "recall": round(metrics.recall, 4),
        "f1": round(metrics.f1, 4),
    }


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- after the load: wait for the pipeline, then measure ------------------------------------


async def wait_until_counted(
    endpoints: Endpoints, truth: dict[str, Any], timeout_s: float = 180, progress: Progress | None = None
) -> dict[str, Any]:
    """Poll analytics until every generated purchase is counted (no more, no fewer) and
    the sink has caught up; returns the all-time overview. Raises TimeoutError."""
    purchases = truth["purchases"]
    days = sorted(p["day"] for p in purchases)
    params = {
        "start": days[0],
        "end": (date.fromisoformat(days[-1]) + timedelta(days=30)).isoformat(),
    }
    headers = {"X-API-Key": endpoints.read_key}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    overview: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=60) as http:
        while loop.time() < deadline:
            response = await http.get(
                f"{endpoints.analytics}/v1/kpis/overview", params=params, headers=headers
            )
            if response.status_code == 200:
                overview = response.json()
                if progress:
                    progress("counted in analytics", min(overview["orders"], len(purchases)), len(purchases))
                status = (await http.get(f"{endpoints.analytics}/v1/status", headers=headers)).json()
                lag = (status.get("sink") or {}).get("consumer_lag", 0)
                tickets = await _tickets_counted(http, endpoints, truth)
                if progress and truth.get("tickets"):
                    progress(
                        "tickets in analytics", min(tickets, len(truth["tickets"])), len(truth["tickets"])
                    )
                answers = await _answers_counted(http, endpoints, truth)
                answered = (truth.get("surveys") or {}).get("answered", 0)
                if (
                    overview["orders"] >= len(purchases)
                    and tickets >= len(truth.get("tickets", ()))
                    and answers >= answered
                    and lag == 0
                ):
                    return {**overview, "tickets": tickets, "survey_responses": answers}
            await asyncio.sleep(1.0)
    raise TimeoutError(f"analytics counted {overview.get('orders')} of {len(purchases)} purchases")


async def run_campaigns(
    endpoints: Endpoints, truth: dict[str, Any], var_dir: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Marketing's turn, once analytics knows the customers: the demo campaigns are
    launched to today's customers (after every merge), sent by the dispatcher into local
    mode's mail sink, and answered through their tracking links; some clickers buy.
    Returns what happened; the purchases join the truth (``campaign_orders``)."""
    from crm_cli.demo_campaigns import load_campaigns

    registered = {r["customer_id"] for r in truth["registrations"] if r["customer_id"]}
    current = sorted(set((await current_customers(endpoints, registered)).values()))
    async with httpx.AsyncClient(timeout=60) as http:
        report = await load_campaigns(
            http,
            endpoints.engagement,
            endpoints.admin_key,
            current,
            mail_dir=var_dir / "engagement" / "mail",
            outbox_dir=var_dir / "engagement" / "outbox",
            shop_key=endpoints.shop_key,
            seed=truth["seed"],
            purchases=True,
            progress=progress,
        )
    return {
        "campaigns": report.campaigns,
        "not_launched": report.not_launched,
        "messages": report.messages_seen,
        "opens": report.opens,
        "clicks": report.clicks,
        "unsubscribes": report.unsubscribes,
        "orders": report.orders,
    }


async def survey_results(endpoints: Endpoints, truth: dict[str, Any]) -> dict[str, Any]:
    """Analytics' results of the demo's survey (all time) and its forms' counts."""
    surveys = truth.get("surveys") or {}
    if not surveys.get("survey_id"):
        return {}
    start, end = all_time(truth)
    period = {"start": start.isoformat(), "end": end.isoformat()}
    headers = {"X-API-Key": endpoints.read_key}
    async with httpx.AsyncClient(timeout=60) as http:
        survey = await http.get(
            f"{endpoints.analytics}/v1/surveys/{surveys['survey_id']}/results", params=period, headers=headers
        )
        survey.raise_for_status()
        forms = await http.get(f"{endpoints.analytics}/v1/forms/results", params=period, headers=headers)
        forms.raise_for_status()
    return {"survey": survey.json(), "forms": forms.json()}


async def campaign_reports(endpoints: Endpoints, truth: dict[str, Any]) -> list[dict[str, Any]]:
    """Analytics' report of each demo campaign (funnel, conversions against the holdout)."""
    ids = [c["campaign_id"] for c in (truth.get("campaigns") or {}).get("campaigns", [])]
    out = []
    async with httpx.AsyncClient(timeout=60) as http:
        for campaign_id in ids:
            response = await http.get(
                f"{endpoints.analytics}/v1/campaigns/{campaign_id}/report",
                headers={"X-API-Key": endpoints.read_key},
            )
            response.raise_for_status()
            out.append(response.json())
    return out


def add_campaign_orders(truth: dict[str, Any], orders: Sequence[dict[str, Any]]) -> None:
    """The purchases campaign recipients made join the purchases analytics must count."""
    known = {p["order_id"] for p in truth["purchases"]}
    for order in orders:
        if order["order_id"] in known:
            continue
        moment = datetime.fromisoformat(order["occurred_at"]) + JST
        truth["purchases"].append(
            asdict(Purchase(order["order_id"], -1, "online", moment.date().isoformat(), order["total"]))
        )


async def _answers_counted(http: httpx.AsyncClient, endpoints: Endpoints, truth: dict[str, Any]) -> int:
    """Responses to the demo survey analytics holds (0 when there is none)."""
    survey_id = (truth.get("surveys") or {}).get("survey_id")
    if not survey_id:
        return 0
    start, end = all_time(truth)
    response = await http.get(
        f"{endpoints.analytics}/v1/surveys/{survey_id}/results",
        params={"start": start.isoformat(), "end": end.isoformat()},
        headers={"X-API-Key": endpoints.read_key},
    )
    return int(response.json()["responses"]) if response.status_code == 200 else 0


async def _tickets_counted(http: httpx.AsyncClient, endpoints: Endpoints, truth: dict[str, Any]) -> int:
    """Tickets analytics holds, all time (0 when the truth has none)."""
    if not truth.get("tickets"):
        return 0
    start, end = all_time(truth)
    response = await http.get(
        f"{endpoints.analytics}/v1/support/kpis",
        params={"start": start.isoformat(), "end": end.isoformat()},
        headers={"X-API-Key": endpoints.read_key},
    )
    return int(response.json()["total"]["opened"]) if response.status_code == 200 else 0


async def current_customers(
    endpoints: Endpoints, customer_ids: set[str], concurrency: int = 8
) -> dict[str, str]:
    """Each customer_id → the customer it is now (following merges)."""
    headers = {"X-API-Key": endpoints.admin_key}
    out: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=30) as http:

        async def read(url: str) -> httpx.Response:
            # A GET is safe to send again: a pooled keep-alive connection the server
            # closed as it was reused ends in RemoteProtocolError, not in an answer.
            for attempt in range(3):
                try:
                    return await http.get(url, headers=headers)
                except httpx.RemoteProtocolError:
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")

        async def one(cid: str) -> None:
            seen = cid
            for _ in range(10):
                response = await read(f"{endpoints.identity}/customers/{seen}")
                if response.status_code != 200:
                    break
                merged_into = response.json().get("merged_into")
                if not merged_into:
                    break
                seen = merged_into
            out[cid] = seen

        await _gather_limited(sorted(customer_ids), one, concurrency)
    return out


async def overview(endpoints: Endpoints, start: date, end: date) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.get(
            f"{endpoints.analytics}/v1/kpis/overview",
            params={"start": start.isoformat(), "end": end.isoformat()},
            headers={"X-API-Key": endpoints.read_key},
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


async def segments(endpoints: Endpoints) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.get(
            f"{endpoints.analytics}/v1/segments", headers={"X-API-Key": endpoints.read_key}
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def expected_totals(truth: dict[str, Any]) -> dict[str, int]:
    purchases = truth["purchases"]
    return {
        "orders": len(purchases),
        "revenue": sum(p["total"] - p["returned"] for p in purchases),
        "tickets": len(truth.get("tickets", ())),
    }


async def support_kpis(endpoints: Endpoints, start: date, end: date) -> dict[str, Any]:
    """The support KPIs of a period (all tickets opened in it), from the analytics API."""
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.get(
            f"{endpoints.analytics}/v1/support/kpis",
            params={"start": start.isoformat(), "end": end.isoformat()},
            headers={"X-API-Key": endpoints.read_key},
        )
        response.raise_for_status()
        total: dict[str, Any] = response.json()["total"]
        return total


def all_time(truth: dict[str, Any]) -> tuple[date, date]:
    """A period that holds everything the demo generated (its first purchase to today)."""
    days = sorted(p["day"] for p in truth["purchases"])
    first = date.fromisoformat(days[0]) - timedelta(days=1)
    return first, (datetime.now(UTC) + JST).date() + timedelta(days=2)
