"""The demo retailer's customer centre: inquiries planned from the demo's people and
purchases, and loaded through the support API with their own timestamps.

**What it plans** (deterministic for a seed and a day):

* a few per cent of customers write in about products, sizes or the membership
  programme, by phone, e-mail, chat, the web form, LINE or at a store counter;
* more after online and app orders (delivery: "where is my parcel?", a few days after
  the order), and complaints or return questions after a return (some at the store,
  which the routing rules send to that store's manager, others to sales);
* each inquiry identifies the person as they would on that channel: the e-mail on
  mail, chat and the form, the mobile number (written one of three ways) on the phone
  and LINE, the member number at the counter — so identity resolution has to tie them
  to the customer;
* a life per ticket: assignment, a first staff reply (most within the SLA, some late),
  sometimes a wait on the customer and their answer, a resolution, often a CSAT rating
  (complaints rate lower); tickets of the last days are still open (the backlog).

**How it loads**: ``POST /v1/tickets`` with a ``request_id`` (a retry opens nothing
new) and ``occurred_at`` (history: the demo's key has ``support:import``), then each
step of the ticket's life with its own ``occurred_at``, in order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from crm_cli.demo import STORES, Purchase
from crm_platform.synthetic import Person

JST = timedelta(hours=9)
Progress = Callable[[str, int, int], None]

#: Staff of the customer centre (owners), by team.
AGENTS: tuple[tuple[str, str], ...] = (
    ("sato", "cs-tokyo"),
    ("suzuki", "cs-tokyo"),
    ("takahashi", "cs-tokyo"),
    ("tanaka", "cs-osaka"),
    ("ito", "cs-osaka"),
)
SUBJECTS: dict[str, tuple[tuple[str, str], ...]] = {
    "delivery": (
        ("商品がまだ届きません", "注文した商品がまだ届いていません。配送状況を教えてください。"),
        ("配送日を変更したい", "お届け日を週末に変更できますか。"),
        ("届いた商品が違います", "注文したものと違う色の商品が届きました。"),
    ),
    "product": (
        ("サイズについて", "普段 M を着ていますが、このブランドは小さめでしょうか。"),
        ("在庫の確認", "店舗に在庫があるか知りたいです。"),
        ("お手入れ方法", "ニットの洗濯方法を教えてください。"),
    ),
    "membership": (
        ("ポイントが付いていません", "先日の買い物のポイントが反映されていません。"),
        ("会員ランクについて", "ゴールドになる条件を教えてください。"),
    ),
    "returns": (
        ("返品の手続き", "サイズが合わなかったので返品したいです。"),
        ("返金はいつですか", "返品した商品の返金がまだです。"),
    ),
    "complaint": (
        ("店舗での対応について", "店員さんの対応が不親切でした。"),
        ("不良品でした", "購入してすぐに縫い目がほつれました。"),
        ("返品を断られた", "レシートがあるのに返品を断られました。"),
    ),
}
RESOLUTIONS: dict[str, tuple[str, ...]] = {
    "delivery": ("redelivered", "answered", "replaced"),
    "product": ("answered",),
    "membership": ("points_added", "answered"),
    "returns": ("refunded", "answered"),
    "complaint": ("apologised", "refunded", "replaced", "coupon_issued"),
}
#: (first response, resolution) targets per priority, hours — support's default policy.
TARGET_HOURS = {"low": (72, 168), "normal": (24, 72), "high": (4, 24), "urgent": (1, 8)}


@dataclass
class PlannedTicket:
    """One inquiry: the opening request and the later steps of its life, in order."""

    request_id: str
    person_id: int
    category: str
    channel: str
    opened: dict[str, Any]
    #: (path under /v1/tickets/{id}/, JSON body with its occurred_at)
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _at(day: date, hour: int, rng: random.Random) -> datetime:
    return datetime(day.year, day.month, day.day, hour, rng.randrange(60), tzinfo=UTC) - JST


def _phone(digits: str, rng: random.Random) -> str:
    style = rng.random()
    if style < 0.4:
        return digits
    if style < 0.75:
        return f"{digits[:3]}-{digits[3:-4]}-{digits[-4:]}"
    return f"+81 {digits[1:-8]} {digits[-8:-4]} {digits[-4:]}"


def _written(person: Person, channel: str, rng: random.Random) -> dict[str, str]:
    """The identifiers a person gives on ``channel``, as they write them."""
    if channel in ("email", "chat", "form") and person.email:
        email = person.email.upper() if rng.random() < 0.1 else person.email
        return {"email": email}
    if channel == "store" and person.member_no and rng.random() < 0.7:
        return {"member_no": person.member_no}
    return {"phone": _phone(person.mobile, rng)}


def plan_tickets(
    people: Sequence[Person], purchases: Sequence[Purchase], seed: int, today: date
) -> list[PlannedTicket]:
    """The customer centre's history up to (not including) ``today`` (JST), deterministic."""
    rng = random.Random(f"support:{seed}")
    cutoff = _at(today, 0, rng).replace(minute=0)  # nothing at or after today's start
    by_person = {p.person_id: p for p in people}
    first_day = min((date.fromisoformat(p.day) for p in purchases), default=today - timedelta(days=365))
    seeds: list[
        tuple[Person, date, str, str, str | None, str | None]
    ] = []  # who, day, category, channel, order, store

    for purchase in purchases:
        person = by_person.get(purchase.person_id)
        if person is None:
            continue
        day = date.fromisoformat(purchase.day)
        if purchase.channel != "store" and rng.random() < 0.015:
            channel = rng.choices(("email", "chat", "phone", "line"), weights=(0.4, 0.3, 0.2, 0.1))[0]
            seeds.append(
                (
                    person,
                    day + timedelta(days=rng.randint(2, 6)),
                    "delivery",
                    channel,
                    purchase.order_id,
                    None,
                )
            )
        if purchase.returned and rng.random() < 0.25:
            complaint = rng.random() < 0.4
            if purchase.channel == "store":
                channel = rng.choices(("store", "phone", "email"), weights=(0.5, 0.35, 0.15))[0]
                home = [s for s in STORES if s[1] == person.place[0]] or list(STORES)
                store: str | None = home[0][0]
            else:
                channel = rng.choices(("email", "phone", "form", "chat"), weights=(0.4, 0.3, 0.2, 0.1))[0]
                store = None
            category = "complaint" if complaint else "returns"
            seeds.append(
                (
                    person,
                    day + timedelta(days=rng.randint(1, 12)),
                    category,
                    channel,
                    purchase.order_id,
                    store,
                )
            )
    span = max(1, (today - first_day).days)
    for person in people:
        if rng.random() < 0.04:
            day = first_day + timedelta(days=rng.randrange(span))
            category = rng.choices(("product", "membership"), weights=(0.7, 0.3))[0]
            channel = rng.choices(
                ("phone", "email", "chat", "store", "form", "line"), weights=(3, 3, 2, 1, 1, 1)
            )[0]
            seeds.append((person, day, category, channel, None, None))

    seeds.sort(key=lambda s: (s[1], s[0].person_id, s[2]))
    planned = []
    for n, (person, day, category, channel, order_id, store_id) in enumerate(seeds):
        if day >= today:
            continue
        planned.append(_life(n, person, day, category, channel, order_id, store_id, cutoff, seed, rng))
    return planned


def _life(
    n: int,
    person: Person,
    day: date,
    category: str,
    channel: str,
    order_id: str | None,
    store_id: str | None,
    cutoff: datetime,
    seed: int,
    rng: random.Random,
) -> PlannedTicket:
    priority = (
        "high" if category == "complaint" else rng.choices(("low", "normal", "high"), weights=(1, 8, 1))[0]
    )
    first_target, resolution_target = TARGET_HOURS[priority]
    opened_at = _at(day, rng.randint(9, 20), rng)
    subject, body = rng.choice(SUBJECTS[category])
    customer: dict[str, str] = {**_written(person, channel, rng)}
    if rng.random() < 0.8:
        customer["name"] = f"{person.family[0]} {person.given[0]}"
    request_id = f"demo-{seed}-{n:06d}"
    opened: dict[str, Any] = {
        "request_id": request_id,
        "channel": channel,
        "category": category,
        "priority": priority,
        "subject": subject,
        "body": body,
        "customer": customer,
        "occurred_at": opened_at.isoformat(),
    }
    if order_id:
        opened["order_id"] = order_id
    if store_id:
        opened["store_id"] = store_id
    ticket = PlannedTicket(request_id, person.person_id, category, channel, opened)
    owner, team = rng.choice(AGENTS)
    clock = opened_at

    def step(path: str, after_hours: float, payload: dict[str, Any]) -> bool:
        nonlocal clock
        at = clock + timedelta(hours=after_hours)
        if at >= cutoff:
            return False
        clock = at
        ticket.steps.append((path, {**payload, "occurred_at": at.isoformat()}))
        return True

    if not step("assignment", rng.uniform(0.05, 0.5), {"owner": owner, "team": team}):
        return ticket
    # Most first replies well within the target; about one in twelve late.
    late = rng.random() < 0.08
    first = first_target * (rng.uniform(1.1, 3.0) if late else rng.uniform(0.05, 0.8))
    if not step(
        "replies",
        first,
        {
            "author": "staff",
            "by": owner,
            "body": "お問い合わせありがとうございます。確認いたします。",
            "request_id": f"{request_id}-r1",
        },
    ):
        return ticket
    if rng.random() < 0.3:  # waiting on the customer, who answers
        if not step("status", 0.1, {"status": "pending", "reason": "waiting_for_customer", "by": owner}):
            return ticket
        if not step(
            "replies",
            rng.uniform(2, 48),
            {
                "author": "customer",
                "body": "返信します。よろしくお願いします。",
                "request_id": f"{request_id}-r2",
            },
        ):
            return ticket
    slow = rng.random() < 0.1
    remaining = resolution_target * (rng.uniform(1.0, 2.5) if slow else rng.uniform(0.05, 0.7))
    resolution = rng.choice(RESOLUTIONS[category])
    if not step("resolution", max(0.2, remaining - first), {"resolution": resolution, "by": owner}):
        return ticket
    if rng.random() < 0.6:
        weights = (0.2, 0.25, 0.25, 0.2, 0.1) if category == "complaint" else (0.03, 0.05, 0.12, 0.35, 0.45)
        score = rng.choices((1, 2, 3, 4, 5), weights=weights)[0]
        rating: dict[str, Any] = {"score": score}
        if rng.random() < 0.3:
            rating["comment"] = "丁寧な対応でした" if score >= 4 else "もう少し早く対応してほしかった"
        step("rating", rng.uniform(1, 72), rating)
    if rng.random() < 0.5:
        step("status", rng.uniform(24, 24 * 7), {"status": "closed", "reason": "no_further_contact"})
    return ticket


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


async def load_tickets(
    http: httpx.AsyncClient,
    support_url: str,
    api_key: str,
    tickets: Sequence[PlannedTicket],
    progress: Progress,
    concurrency: int = 8,
) -> int:
    """Open each ticket and replay its life through the support API; returns how many
    tickets were opened (or found opened by an earlier run: the request ids make a
    second load harmless). The key needs support:write and support:import."""
    headers = {"X-API-Key": api_key}
    semaphore = asyncio.Semaphore(concurrency)
    loaded = done = 0

    async def send(path: str, body: dict[str, Any]) -> httpx.Response:
        for attempt in range(4):
            try:
                response = await http.post(f"{support_url}{path}", json=body, headers=headers)
            except httpx.TransportError:
                if attempt == 3:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if response.status_code == 503 and attempt < 3:
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            if response.status_code == 409 and _code(response) == "concurrent_update" and attempt < 3:
                # optimistic concurrency: nothing was written; the step is sent again
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            return response
        raise AssertionError("unreachable")

    async def one(ticket: PlannedTicket) -> None:
        nonlocal loaded, done
        async with semaphore:
            opened = await send("/v1/tickets", ticket.opened)
            if opened.status_code not in (200, 201):
                raise RuntimeError(
                    f"ticket {ticket.request_id} refused: {opened.status_code} {opened.text[:300]}"
                )
            state = opened.json()
            tid = state["ticket_id"]
            # A ticket an earlier, interrupted load opened: its steps up to its last
            # change are there already; the rest follow.
            last = datetime.fromisoformat(state["updated_at"])
            for path, body in ticket.steps:
                if opened.status_code == 200 and datetime.fromisoformat(body["occurred_at"]) <= last:
                    continue
                response = await send(f"/v1/tickets/{tid}/{path}", body)
                if response.status_code != 200:
                    raise RuntimeError(
                        f"ticket {ticket.request_id} {path}: {response.status_code} {response.text[:300]}"
                    )
            loaded += 1
            done += 1
            progress("support tickets", done, len(tickets))

    await asyncio.gather(*(one(t) for t in tickets))
    return loaded
