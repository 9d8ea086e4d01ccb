"""The demo retailer's campaigns: created and launched through engagement's API, sent by
the real dispatcher, then answered by simulated recipients through the tracking links.

Deterministic: the same customers and seed give the same campaigns, and a message's
responses depend only on the seed and the message (its Message-ID), whatever order
things arrive in.

How it runs with the platform (``crm run``): the supervisor starts
``engagement mailsink`` (SMTP on 127.0.0.1:8025 into ``var/engagement/mail``, a Maildir;
SMS / LINE / app push webhooks on 8026 into ``var/engagement/outbox/<channel>.jsonl``)
and ``engagement dispatcher``, which sends to them. ``load_campaigns`` creates and
launches the campaigns, waits for the dispatcher to finish them, then plays the
recipients: it reads what they received (the Maildir, the outbox), and opens, clicks and
unsubscribes through the links in those messages — the same HTTP requests a mail client
makes. With ``purchases=True`` some clickers then buy online (``/v1/events``, their
e-mail as the identifier), so the campaign report has conversions to compare with the
holdout; leave it off where the demo checks its own purchase totals.

Talks to the services over HTTP only (the CLI never imports them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mailbox
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import httpx

SHOP = "shop.example.jp"
_TRACKED = re.compile(r"https?://[^\s\"'<>]+/t/(?:c/[A-Za-z0-9_=.-]+|o/[A-Za-z0-9_=.-]+\.gif)")


@dataclass(frozen=True)
class CampaignSpec:
    """One campaign's body for ``POST /v1/campaigns``, and how its recipients behave."""

    body: dict[str, Any]
    #: chance a recipient opens (e-mail), per variant; "*" for the rest
    open_rate: dict[str, float]
    #: chance an opener (or a LINE / push / SMS recipient) clicks
    click_rate: float
    unsubscribe_rate: float = 0.01


@dataclass
class CampaignDemoReport:
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    not_launched: list[str] = field(default_factory=list)
    messages_seen: int = 0
    opens: int = 0
    clicks: int = 0
    unsubscribes: int = 0
    purchases: int = 0
    #: the purchases made after a click: order_id, total (yen), occurred_at
    orders: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _link(path: str) -> str:
    return f"https://{SHOP}{path}"


def plan_campaigns(
    customer_ids: Sequence[str], seed: int = 11, birthday_audience: int = 600
) -> list[CampaignSpec]:
    """Three campaigns a fashion retailer runs: a birthday coupon by rank (LINE first,
    else e-mail; an explicit list), a dormant win-back with a 20 % holdout (the segment,
    variants by age band), and a new-customer follow-up (app push first, variants by
    prefecture)."""
    ranked = sorted(customer_ids, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    birthday = {
        "name": "お誕生月クーポン（ランク別）",
        "channels": ["line", "email"],
        "audience": {"customer_ids": ranked[:birthday_audience]},
        "variants": [
            {
                "id": "vip-birthday",
                "subject": "{{ name }}様、お誕生日おめでとうございます — {{ rank }}会員さまはポイント3倍",
                "body": "{{ name }}様\nお誕生月の特典をご用意しました。"
                "{{ rank }}会員さまはポイント3倍です。\n"
                + _link("/birthday?tier=vip")
                + "\n配信停止: {{ unsubscribe_url }}",
                "html": "<html><body><p>{{ name }}様</p><p>お誕生月はポイント<b>3倍</b>。</p>"
                f'<p><a href="{_link("/birthday?tier=vip")}">特典を見る</a></p></body></html>',
            },
            {
                "id": "birthday",
                "subject": "{{ name }}様、お誕生日おめでとうございます",
                "body": "{{ name }}様\nお誕生月限定の10%OFFクーポンです。\n" + _link("/birthday"),
                "html": "<html><body><p>{{ name }}様</p><p>お誕生月限定の10%OFFクーポンです。</p>"
                f'<p><a href="{_link("/birthday")}">クーポンを使う</a></p></body></html>',
            },
            {
                "id": "gold",
                "subject": "{{ name }}様だけのゴールド会員セール",
                "body": "{{ name }}様\n{{ rank }}会員さま限定の先行セールです。\n" + _link("/members/sale"),
                "html": "<html><body><p>{{ name }}様</p><p>会員さま限定の先行セール。</p>"
                f'<p><a href="{_link("/members/sale")}">先行セールへ</a></p></body></html>',
            },
            {
                "id": "regular",
                "subject": "{{ name }}様へ今月のおすすめ",
                "body": "{{ name }}様\n今月のおすすめをお届けします。\n" + _link("/new"),
                "html": "<html><body><p>{{ name }}様</p><p>今月のおすすめ。</p>"
                f'<p><a href="{_link("/new")}">新作を見る</a></p></body></html>',
            },
        ],
        "rules": [
            {
                "variant": "vip-birthday",
                "when": {"rank": ["gold", "platinum"], "birthday_month": ["current"]},
            },
            {"variant": "birthday", "when": {"birthday_month": ["current"]}},
            {"variant": "gold", "when": {"rank": ["silver", "gold", "platinum"]}},
        ],
        "default_variant": "regular",
        "holdout_pct": 10,
        "attribution_days": 14,
        "link_hosts": [SHOP],
    }
    winback = {
        "name": "休眠顧客ウィンバック（20%ホールドアウト）",
        "channels": ["email"],
        "audience": {"segment": "dormant"},
        "variants": [
            {
                "id": f"winback-{band}",
                "subject": subject,
                "body": "{{ name }}様\nお久しぶりです。" + text + "\n" + _link(f"/comeback?b={band}"),
                "html": f"<html><body><p>{{{{ name }}}}様</p><p>お久しぶりです。{text}</p>"
                f'<p><a href="{_link(f"/comeback?b={band}")}">今すぐチェック</a></p></body></html>',
            }
            for band, subject, text in (
                ("young", "{{ name }}様、トレンドの新作が入荷しました", "SNSで話題の新作をどうぞ。"),
                (
                    "mid",
                    "{{ name }}様、お久しぶりです — 500円クーポン",
                    "次のお買い物で使える500円クーポンです。",
                ),
                ("senior", "{{ name }}様、上質な定番をご紹介", "長く使える定番アイテムをご紹介します。"),
                ("all", "{{ name }}様、お久しぶりです", "新しいアイテムが揃いました。"),
            )
        ],
        "rules": [
            {"variant": "winback-young", "when": {"age_band": ["under20", "20s"]}},
            {"variant": "winback-mid", "when": {"age_band": ["30s", "40s"]}},
            {"variant": "winback-senior", "when": {"age_band": ["50s", "60plus"]}},
        ],
        "default_variant": "winback-all",
        "holdout_pct": 20,
        "attribution_days": 14,
        "link_hosts": [SHOP],
    }
    welcome = {
        "name": "新規会員フォローアップ（アプリ優先）",
        "channels": ["app_push", "email"],
        "audience": {"segment": "new"},
        "variants": [
            {
                "id": f"welcome-{key}",
                "subject": f"{{{{ name }}}}様、{store}からのご案内",
                "body": f"{{{{ name }}}}様、ご来店ありがとうございました。{store}の今週のおすすめです。\n"
                + _link(f"/stores/{key}"),
            }
            for key, store in (("tokyo", "銀座店"), ("osaka", "梅田店"), ("online", "オンラインストア"))
        ],
        "rules": [
            {"variant": "welcome-tokyo", "when": {"prefecture": ["東京都", "神奈川県", "埼玉県", "千葉県"]}},
            {"variant": "welcome-osaka", "when": {"prefecture": ["大阪府", "京都府", "兵庫県"]}},
        ],
        "default_variant": "welcome-online",
        "holdout_pct": 10,
        "attribution_days": 7,
        "link_hosts": [SHOP],
    }
    return [
        CampaignSpec(birthday, {"vip-birthday": 0.62, "birthday": 0.55, "*": 0.38}, click_rate=0.3),
        CampaignSpec(winback, {"*": 0.22}, click_rate=0.18, unsubscribe_rate=0.03),
        CampaignSpec(welcome, {"*": 0.45}, click_rate=0.25),
    ]


@dataclass(frozen=True)
class Received:
    """A message as its recipient got it."""

    message_key: str
    campaign_id: str
    variant: str
    channel: str
    to: str
    opens: tuple[str, ...]
    clicks: tuple[str, ...]
    unsubscribe: str | None


def received_messages(mail_dir: Path, outbox_dir: Path) -> list[Received]:
    """What the local providers hold: mails in the Maildir, webhook bodies in the outbox."""
    out: list[Received] = []
    if (mail_dir / "new").exists():
        for raw in mailbox.Maildir(mail_dir, factory=None, create=False):
            mail = message_from_bytes(raw.as_bytes(), policy=default)
            assert isinstance(mail, EmailMessage)
            html = mail.get_body(preferencelist=("html",))
            text = html.get_content() if html is not None else ""
            plain = mail.get_body(preferencelist=("plain",))
            text += "\n" + (plain.get_content() if plain is not None else "")
            links = sorted(set(_TRACKED.findall(text)))
            unsub = re.search(r"<(https?://[^>]+/t/u/[^>]+)>", str(mail.get("List-Unsubscribe", "")))
            out.append(
                Received(
                    message_key=str(mail["Message-ID"]),
                    campaign_id=str(mail.get("X-CRM-Campaign", "")),
                    variant=str(mail.get("X-CRM-Variant", "")),
                    channel="email",
                    to=str(mail.get("X-Envelope-To", "")),
                    opens=tuple(u for u in links if "/t/o/" in u),
                    clicks=tuple(u for u in links if "/t/c/" in u),
                    unsubscribe=unsub.group(1) if unsub else None,
                )
            )
    for path in sorted(outbox_dir.glob("*.jsonl")) if outbox_dir.exists() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            body = json.loads(line)
            meta = body.get("metadata") or {}
            links = sorted(set(_TRACKED.findall(body.get("text") or "")))
            out.append(
                Received(
                    message_key=str(body.get("message_id")),
                    campaign_id=str(meta.get("Campaign", "")),
                    variant=str(meta.get("Variant", "")),
                    channel=str(body.get("channel")),
                    to=str(body.get("to")),
                    opens=(),
                    clicks=tuple(u for u in links if "/t/c/" in u),
                    unsubscribe=None,
                )
            )
    return out


async def load_campaigns(
    http: httpx.AsyncClient,
    engagement: str,
    admin_key: str,
    customer_ids: Sequence[str],
    *,
    mail_dir: Path,
    outbox_dir: Path,
    shop_key: str = "dev-shop-key",
    seed: int = 11,
    wait_s: float = 300.0,
    purchases: bool = False,
    progress: Callable[[str], None] | None = None,
    specs: Sequence[CampaignSpec] | None = None,
) -> CampaignDemoReport:
    """Create and launch the planned campaigns (``plan_campaigns(customer_ids, seed)``
    unless ``specs`` are given), wait for the dispatcher to send them, then answer them
    as recipients would. Returns what happened."""
    say = progress or (lambda _: None)
    report = CampaignDemoReport()
    started = asyncio.get_running_loop().time()
    staff = {"X-API-Key": admin_key}
    specs = list(specs) if specs is not None else plan_campaigns(customer_ids, seed)
    by_id: dict[str, CampaignSpec] = {}
    for number, spec in enumerate(specs):
        # a request id per campaign: loading again finds the campaigns made the first time
        body = {"request_id": f"demo-{seed}-{number}", **spec.body}
        created = await http.post(f"{engagement}/v1/campaigns", json=body, headers=staff)
        if created.status_code not in (200, 201):
            raise RuntimeError(
                f"campaign {spec.body['name']!r} refused: {created.status_code} {created.text[:300]}"
            )
        campaign_id = created.json()["campaign_id"]
        if created.json()["status"] != "draft":  # launched by an earlier, interrupted load
            by_id[campaign_id] = spec
            continue
        launched = await http.post(f"{engagement}/v1/campaigns/{campaign_id}/launch", headers=staff)
        if launched.status_code != 200:
            # an empty segment (a small demo may have no dormant customers yet): say so, go on
            report.not_launched.append(
                f"{spec.body['name']}: {launched.json().get('error', {}).get('message')}"
            )
            continue
        by_id[campaign_id] = spec
        say(f"launched {spec.body['name']} to {launched.json()['recipients']} customers")
    deadline = asyncio.get_running_loop().time() + wait_s
    pending = set(by_id)
    while pending:
        for campaign_id in sorted(pending):
            got = await http.get(f"{engagement}/v1/campaigns/{campaign_id}", headers=staff)
            if got.status_code == 200 and got.json()["status"] in ("completed", "cancelled"):
                pending.discard(campaign_id)
        if pending:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"{len(pending)} campaigns not sent within {wait_s:.0f} s:"
                    " is `engagement dispatcher` running?"
                )
            await asyncio.sleep(1.0)

    received = [r for r in received_messages(mail_dir, outbox_dir) if r.campaign_id in by_id]
    received.sort(key=lambda r: r.message_key)
    report.messages_seen = len(received)
    for r in received:
        spec = by_id[r.campaign_id]
        rng = random.Random(f"{seed}:{r.message_key}")
        reads = rng.random() < spec.open_rate.get(r.variant, spec.open_rate["*"])
        opened = bool(r.opens) and reads
        if opened:
            await _get(http, r.opens[0])
            report.opens += 1
        # a click needs the message read: opened (HTML mail, its pixel fetched), or read
        # without a trace (text-only mail, LINE, push, SMS)
        if r.clicks and reads and rng.random() < spec.click_rate:
            await _get(http, r.clicks[0])
            report.clicks += 1
            if purchases and r.channel == "email" and rng.random() < 0.35:
                report.orders.append(await _buy(http, engagement, shop_key, r, rng))
                report.purchases += 1
        if r.unsubscribe and rng.random() < spec.unsubscribe_rate:
            response = await http.post(r.unsubscribe, data={"List-Unsubscribe": "One-Click"})
            response.raise_for_status()
            report.unsubscribes += 1
    for campaign_id in by_id:
        got = await http.get(f"{engagement}/v1/campaigns/{campaign_id}", headers=staff)
        got.raise_for_status()
        view = got.json()
        report.campaigns.append(
            {
                "campaign_id": campaign_id,
                "name": view["name"],
                "recipients": view["recipients"],
                **view["progress"],
            }
        )
    report.seconds = asyncio.get_running_loop().time() - started
    say(f"{report.opens} opens, {report.clicks} clicks, {report.unsubscribes} unsubscribes simulated")
    return report


async def _get(http: httpx.AsyncClient, url: str) -> None:
    response = await http.get(url, follow_redirects=False)
    if response.status_code not in (200, 302):
        raise RuntimeError(f"tracking link answered {response.status_code}: {url}")


async def _buy(
    http: httpx.AsyncClient, engagement: str, shop_key: str, r: Received, rng: random.Random
) -> dict[str, Any]:
    price = rng.choice((2_990, 4_990, 7_990, 12_800))
    digest = hashlib.sha256(r.message_key.encode()).digest()
    order_id = "CMP" + digest.hex()[:12].upper()
    event = {
        "type": "online_order",
        # fixed per message: the same purchase sent again (a second load) counts once
        "event_id": str(uuid.UUID(bytes=digest[:16], version=4)),
        "occurred_at": (now := datetime.now(UTC)).isoformat(),
        "identifiers": {"email": r.to},
        "payload": {
            "order_id": order_id,
            "channel": "online",
            "lines": [
                {"line_no": 1, "sku": f"CMP-{price}", "category": "tops", "quantity": 1, "unit_price": price}
            ],
            "total": price,
            "payment_method": "credit_card",
        },
    }
    response = await http.post(f"{engagement}/v1/events", json=event, headers={"X-API-Key": shop_key})
    if response.status_code != 202:
        raise RuntimeError(f"a campaign purchase was refused: {response.status_code} {response.text[:200]}")
    return {"order_id": order_id, "total": price, "occurred_at": now.isoformat()}
