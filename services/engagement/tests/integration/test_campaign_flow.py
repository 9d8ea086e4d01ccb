"""A campaign end to end: created and launched through engagement's API, sent by the
dispatcher over real SMTP to the customers identity knows (its real API on a port),
personalised per customer; non-consenting and unreachable customers skipped with their
reason; a restart sends nothing twice; the tracking links record opens, clicks and an
unsubscribe (which reaches identity); the campaign relay publishes it all to Kafka as
contract events without personal data. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from crm_contracts.events.identity import (
    Consent,
    ConsentChannel,
    CustomerAttributes,
    ProfileSnapshot,
    ProfileSnapshotPayload,
)
from crm_contracts.events.messaging import MessageSkipped
from crm_contracts.registry import decode
from crm_contracts.topics import ENGAGEMENT_MESSAGE
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import read_topic
from engagement.dispatch.dispatcher import RoundReport
from engagement.dispatch.settings import MessagingSettings
from engagement.dispatch.wiring import build_campaign_relay, build_campaigns, build_clients, build_dispatcher
from engagement.domain.campaign import Message, in_holdout
from engagement.entrypoints.api import create

from .conftest import Mailbox, Served

pytestmark = pytest.mark.integration
STAFF = {"X-API-Key": "dev-admin-key"}
EXTRA_NAMES = (
    "伊藤 健太",
    "渡辺 結衣",
    "中村 翔",
    "小林 さくら",
    "加藤 大輔",
    "吉田 美穂",
    "山口 蓮",
    "松本 葵",
)
NOW = datetime.now(UTC)


def register(
    identity: Served,
    name: str,
    email: str | None,
    consents: dict[str, bool],
    prefecture: str,
    phone: str | None = None,
) -> str:
    """A new customer; its id derives from its identifiers (identity's rule), so fixed
    identifiers give the same id on every run."""
    body: dict[str, Any] = {
        "channel": "online",
        "name_kanji": name,
        "prefecture": prefecture,
        "consents": consents,
        "phone": phone or f"090-1234-{uuid.uuid4().int % 10_000:04d}",
    }
    if email:
        body["email"] = email
    response = httpx.post(f"{identity.url}/customers", json=body, headers=STAFF)
    assert response.status_code == 201, response.text
    return str(response.json()["customer_id"])


def snapshot(customer_id: str, prefecture: str, email_consent: bool) -> ProfileSnapshot:
    return ProfileSnapshot(
        occurred_at=NOW,
        producer="identity.resolver",
        customer_key=customer_id,
        payload=ProfileSnapshotPayload(
            customer_id=uuid.UUID(customer_id),
            attributes=CustomerAttributes(prefecture=prefecture, birth_year=1990),
            consents=(Consent(channel=ConsentChannel.EMAIL, granted=email_consent, at=NOW),),
        ),
    )


#: The client's request id: the campaign id derives from it (see the holdout assertions).
REQUEST_ID = "test-campaign-flow-3"
CAMPAIGN: dict[str, Any] = {
    "name": "冬のセール",
    "channels": ["email"],
    "variants": [
        {
            "id": "tokyo",
            "subject": "{{ name }}様、東京店のご案内",
            "body": "{{ name }}様 https://shop.example.jp/tokyo 配信停止: {{ unsubscribe_url }}",
            "html": '<html><body><p>{{ name }}様</p><a href="https://shop.example.jp/tokyo">店舗</a></body></html>',
        },
        {
            "id": "default",
            "subject": "{{ name }}様へ冬のセール",
            "body": "{{ name }}様 https://shop.example.jp/sale",
            "html": '<html><body><p>{{ name }}様</p><a href="https://shop.example.jp/sale">SALE</a></body></html>',
        },
    ],
    "rules": [{"variant": "tokyo", "when": {"prefecture": ["東京都"]}}],
    "default_variant": "default",
    "holdout_pct": 25,
    "link_hosts": ["shop.example.jp"],
}


def test_campaign_sends_personalised_mail_once_and_tracks_responses(
    store_settings: Settings, kafka_bootstrap: str, identity_api: Served, smtp: tuple[Mailbox, int]
) -> None:
    box, smtp_port = smtp
    settings = store_settings.model_copy(
        update={"kafka_bootstrap": kafka_bootstrap, "kafka_topic_prefix": f"t{uuid.uuid4().hex[:8]}."}
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    messaging = MessagingSettings(
        identity_url=identity_api.url,
        analytics_url="http://127.0.0.1:9",  # not needed: no rank or segment rules
        smtp_port=smtp_port,
        tracking_base_url="https://crm.example.jp",
        dispatch_backoff_s=0.01,
    )
    # Fixed identifiers (a fresh identity store per test), fixed customer ids, and a fixed
    # request id, so a fixed campaign id: the holdout is the same on every run, and the
    # assertions below hold unconditionally.
    tag = "flow"
    people = {
        "tokyo": register(
            identity_api, "山田 太郎", f"taro.{tag}@example.jp", {"email": True}, "東京都", "090-1234-0001"
        ),
        "osaka": register(
            identity_api, "佐藤 花子", f"hanako.{tag}@example.jp", {"email": True}, "大阪府", "090-1234-0002"
        ),
        "no_consent": register(
            identity_api, "鈴木 一郎", f"ichiro.{tag}@example.jp", {"email": False}, "東京都", "090-1234-0003"
        ),
        "no_address": register(identity_api, "高橋 美咲", None, {"email": True}, "東京都", "090-1234-0004"),
    }
    # more consenting customers, so the holdout has someone to hold out
    extra = [
        register(
            identity_api, name, f"c{i}.{tag}@example.jp", {"email": True}, "北海道", f"090-1234-{10 + i:04d}"
        )
        for i, name in enumerate(EXTRA_NAMES)
    ]
    unknown = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:test:campaign-flow:unknown-customer"))
    audience = [*people.values(), *extra, unknown]

    app = create(settings)
    app.state.messaging = messaging
    with TestClient(app) as api:
        # a template naming a field that does not exist: refused at creation, by name
        bad = {**CAMPAIGN, "audience": {"customer_ids": audience}}
        bad["variants"] = [{**CAMPAIGN["variants"][1], "body": "{{ nickname }}様"}, CAMPAIGN["variants"][0]]
        refused = api.post("/v1/campaigns", json=bad, headers=STAFF)
        assert refused.status_code == 422
        assert "variants.0.body" in refused.text
        assert "nickname" in refused.text

        created = api.post(
            "/v1/campaigns",
            json={**CAMPAIGN, "audience": {"customer_ids": audience}, "request_id": REQUEST_ID},
            headers=STAFF,
        )
        assert created.status_code == 201, created.text
        campaign_id = uuid.UUID(created.json()["campaign_id"])
        launched = api.post(f"/v1/campaigns/{campaign_id}/launch", headers=STAFF)
        assert launched.status_code == 200, launched.text
        assert launched.json()["recipients"] == len(audience)
        assert api.post(f"/v1/campaigns/{campaign_id}/launch", headers=STAFF).status_code == 409

        held = {c for c in audience if in_holdout(campaign_id, uuid.UUID(c), 25)}
        # what REQUEST_ID was chosen for: someone held out, and each skip reason and the
        # Tokyo variant represented outside the holdout
        assert held
        assert not held & {people["tokyo"], people["no_consent"], people["no_address"], unknown}, held
        reachable = {people["tokyo"], people["osaka"], *extra}
        expected = reachable - held

        box.fail_next = 1  # the first delivery attempt meets a temporary SMTP error
        report, again = asyncio.run(_dispatch_twice(settings, messaging, people, extra))
        assert report.sent == len(expected)
        assert report.completed == [campaign_id]
        assert box.refused == 1
        # a restart: the same recipients are not sent anything again
        assert (again.sent, again.skipped) == (0, 0)

        # exactly the right mails, each personalised
        by_to = {str(m["To"].addresses[0].addr_spec): m for m in box.mails}
        assert len(box.mails) == len(expected)
        names = {people["tokyo"]: "山田 太郎", people["osaka"]: "佐藤 花子"}
        for customer in expected:
            mail = _mail_of(by_to, customer, tag, people, extra)
            name = names.get(customer) or EXTRA_NAMES[extra.index(customer)]
            assert mail["Subject"].startswith(name)
            assert mail["X-CRM-Variant"] == ("tokyo" if customer == people["tokyo"] else "default")
            assert mail["List-Unsubscribe"].startswith("<https://crm.example.jp/t/u/")
            plain = mail.get_body(preferencelist=("plain",))
            assert plain is not None
            text = plain.get_content()
            assert "shop.example.jp" not in text  # the link goes through the click tracker
            assert customer not in mail.as_string()  # no customer id in any link

        progress = api.get(f"/v1/campaigns/{campaign_id}", headers=STAFF).json()
        assert progress["status"] == "completed"
        skipped = progress["progress"]["skipped"]
        assert progress["progress"]["sent"] == len(expected)
        assert skipped == {
            "holdout": len(held),
            "no_consent": 1,
            "no_address": 1,
            "unknown_customer": 1,
        }

        # responses through the links of one received mail
        customer = sorted(expected)[0]
        mail = _mail_of(by_to, customer, tag, people, extra)
        html_part = mail.get_body(preferencelist=("html",))
        assert html_part is not None
        html = html_part.get_content()
        click = re.search(r'href="https://crm\.example\.jp(/t/c/[^"]+)"', html)
        pixel = re.search(r'src="https://crm\.example\.jp(/t/o/[^"]+)"', html)
        unsubscribe = re.search(r"<https://crm\.example\.jp(/t/u/[^>]+)>", mail["List-Unsubscribe"])
        assert click and pixel and unsubscribe
        opened = api.get(pixel.group(1))
        assert opened.status_code == 200
        assert opened.headers["content-type"] == "image/gif"
        redirected = api.get(click.group(1), follow_redirects=False)
        assert redirected.status_code == 302
        assert redirected.headers["location"].startswith("https://shop.example.jp/")
        tampered = click.group(1)[:-3] + ("AAA" if not click.group(1).endswith("AAA") else "BBB")
        assert api.get(tampered, follow_redirects=False).status_code == 404
        # an open token is not a click token
        assert api.get("/t/c/" + pixel.group(1).removeprefix("/t/o/").removesuffix(".gif")).status_code == 404
        page = api.get(unsubscribe.group(1))
        assert page.status_code == 200
        assert "<form" in page.text
        done = api.post(unsubscribe.group(1), data={"List-Unsubscribe": "One-Click"})
        assert done.status_code == 200
        # identity heard of it
        contact = httpx.get(f"{identity_api.url}/customers/{customer}/contact/email", headers=STAFF).json()
        assert contact["consent"] is False
        final = api.get(f"/v1/campaigns/{campaign_id}", headers=STAFF).json()["progress"]
        assert (final["opened"], final["clicked"], final["opted_out"]) == (1, 1, 1)

    # the relay publishes the campaign's facts: keyed by customer, nothing personal
    events = asyncio.run(_relay_and_read(settings))
    kinds = Counter(e.event_type for e in events)
    assert kinds["campaign.launched"] == 1
    assert kinds["message.sent"] == len(expected)
    assert kinds["message.skipped"] == len(audience) - len(expected)
    assert (kinds["message.opened"], kinds["message.clicked"], kinds["message.opted_out"]) == (1, 1, 1)
    for e in events:
        raw = e.model_dump_json()
        assert "@example.jp" not in raw and "山田" not in raw
        if e.event_type.startswith("message."):
            assert e.customer_key == str(e.payload.customer_id)
    holdout = [e for e in events if isinstance(e, MessageSkipped) and e.payload.reason == "holdout"]
    assert {str(e.payload.customer_id) for e in holdout} == held


async def _dispatch_twice(
    settings: Settings, messaging: MessagingSettings, people: dict[str, str], extra: list[str]
) -> tuple[RoundReport, RoundReport]:
    """One dispatch round, then another by a new dispatcher (a restart)."""
    campaigns = build_campaigns(settings)
    clients = build_clients(messaging)
    try:
        dispatcher, view = build_dispatcher(settings, messaging, campaigns, clients)
        # identity's profiles, as the dispatcher's consumer applies them
        view.apply(snapshot(people["tokyo"], "東京都", True))
        view.apply(snapshot(people["osaka"], "大阪府", True))
        for c in extra:
            view.apply(snapshot(c, "北海道", True))
        first = await dispatcher.run_once()
        view.close()
        restarted, view2 = build_dispatcher(settings, messaging, campaigns, clients)
        second = await restarted.run_once()
        view2.close()
        return first, second
    finally:
        await clients.aclose()
        campaigns.close()


def _mail_of(
    by_to: dict[str, EmailMessage], customer: str, tag: str, people: dict[str, str], extra: list[str]
) -> EmailMessage:
    if customer == people["tokyo"]:
        return by_to[f"taro.{tag}@example.jp"]
    if customer == people["osaka"]:
        return by_to[f"hanako.{tag}@example.jp"]
    return by_to[f"c{extra.index(customer)}.{tag}@example.jp"]


async def _relay_and_read(settings: Settings) -> list[Any]:
    campaigns = build_campaigns(settings)
    try:
        async with EventProducer(
            settings.kafka_bootstrap, client_id="t-relay", topic_prefix=settings.kafka_topic_prefix
        ) as producer:
            relay = build_campaign_relay(settings, campaigns, producer)
            await relay.relay_available()
            assert relay.lag() == 0
    finally:
        campaigns.close()
    records = await read_topic(
        settings.kafka_bootstrap, settings.kafka_topic_prefix + ENGAGEMENT_MESSAGE.name, expect=5, timeout=30
    )
    return [decode(r.value) for r in records]


def test_a_crash_between_recording_and_sending_never_sends_twice(
    tmp_path: Any, identity_api: Served, smtp: tuple[Mailbox, int]
) -> None:
    box, smtp_port = smtp
    settings = Settings(var_dir=tmp_path / "var")
    messaging = MessagingSettings(identity_url=identity_api.url, smtp_port=smtp_port, dispatch_backoff_s=0)
    customer = register(
        identity_api, "山田 花子", f"h.{uuid.uuid4().hex[:8]}@example.jp", {"email": True}, "東京都"
    )
    campaigns = build_campaigns(settings)
    try:
        c = campaigns.create(
            name="x",
            channels=["email"],
            audience={"customer_ids": [customer]},
            variants=[{"id": "d", "subject": "s", "body": "{{ name }}"}],
            rules=[],
            default_variant="d",
            send_at=NOW,
            holdout_pct=0,
            attribution_days=7,
            quiet_hours=None,
            link_hosts=[],
            created_at=NOW,
        )
        campaigns.launch(c.id, [uuid.UUID(customer)], NOW)
        # the dispatcher recorded the message and died before the provider answered, longer
        # ago than the lease (a younger one may be a live dispatcher's: test_dispatcher.py)
        died = NOW - timedelta(seconds=messaging.dispatch_lease_s + 60)
        campaigns.record_new(Message.prepare(c.id, uuid.UUID(customer), "email", "d", [], died))

        async def restart() -> int:
            clients = build_clients(messaging)
            dispatcher, view = build_dispatcher(settings, messaging, campaigns, clients)
            try:
                assert dispatcher.recover() == 1
                return (await dispatcher.run_once()).sent
            finally:
                view.close()
                await clients.aclose()

        assert asyncio.run(restart()) == 0
        assert box.mails == []
        message = campaigns.maybe_message(c.id, uuid.UUID(customer))
        assert message is not None
        assert (message.status, message.reason) == ("failed", "interrupted: outcome unknown")
        assert campaigns.campaign(c.id).status == "completed"
    finally:
        campaigns.close()
