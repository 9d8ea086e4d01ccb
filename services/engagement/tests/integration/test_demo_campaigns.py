"""The demo's campaigns (``crm_cli.demo_campaigns``) against the real processes' code:
identity, engagement and analytics APIs on ports, the local mail and webhook sinks, the
dispatcher running — created, launched, sent, then answered through the tracking links."""

from __future__ import annotations

import asyncio
import socket
import uuid
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from crm_cli.demo_campaigns import load_campaigns, plan_campaigns
from crm_platform.kafka import ensure_topics
from crm_platform.settings import DEV_API_KEYS, Settings
from engagement.dispatch.mailsink import start_mailsink, start_webhook_sink
from engagement.dispatch.process import run_dispatcher
from engagement.dispatch.settings import MessagingSettings

from .conftest import Served, serve, service_api

pytestmark = pytest.mark.integration
ADMIN = {"X-API-Key": "dev-admin-key"}
NAMES = ("青木 陽菜", "西村 湊", "岡田 結菜", "藤田 樹", "後藤 凛", "長谷川 蒼", "村上 紬", "近藤 律")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_plan_is_deterministic() -> None:
    ids = [str(uuid.UUID(int=i)) for i in range(50)]
    assert plan_campaigns(ids, seed=3) == plan_campaigns(list(reversed(ids)), seed=3)
    assert plan_campaigns(ids, seed=3)[0].body["audience"] != plan_campaigns(ids, seed=4)[0].body["audience"]


def test_demo_campaigns_are_sent_and_answered(
    tmp_path: Path, kafka_bootstrap: str, identity_api: Served
) -> None:
    from engagement.entrypoints.api import create as engagement_api

    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        api_keys=dict(DEV_API_KEYS),
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    smtp_port, hook_port = _port(), _port()
    mail, outbox = tmp_path / "mail", tmp_path / "outbox"
    controller = start_mailsink(mail, port=smtp_port)
    hooks = start_webhook_sink(outbox, port=hook_port)
    analytics_gen = service_api(
        "analytics",
        tmp_path,
        CRM_KAFKA_BOOTSTRAP=kafka_bootstrap,
        CRM_KAFKA_TOPIC_PREFIX=settings.kafka_topic_prefix,
    )
    analytics = next(analytics_gen)
    engagement_app = engagement_api(settings)
    # the API's own calls: segments from analytics, unsubscribes to identity
    engagement_app.state.messaging = MessagingSettings(
        identity_url=identity_api.url, analytics_url=analytics.url
    )
    engagement_gen = serve(engagement_app, "engagement-api")
    try:
        engagement = next(engagement_gen)
        messaging = MessagingSettings(
            identity_url=identity_api.url,
            analytics_url=analytics.url,
            tracking_base_url=engagement.url,
            smtp_port=smtp_port,
            line_webhook_url=f"http://127.0.0.1:{hook_port}/line",
            dispatch_poll_s=0.3,
            dispatch_backoff_s=0,
        )
        # customers: some on LINE (consented), the rest by e-mail. Fixed identifiers (a
        # fresh identity store per test) give fixed customer ids, so fixed message ids,
        # which seed the simulated responses: the same opens, clicks and unsubscribes
        # on every run.
        ids = []
        for i, name in enumerate(NAMES):
            body = {
                "channel": "store",
                "name_kanji": name,
                "email": f"demo{i}@example.jp",
                "consents": {"email": True, "line": i % 3 == 0},
            }
            if i % 3 == 0:
                body["line_id"] = f"U{10**11 + i}"
            got = httpx.post(f"{identity_api.url}/customers", json=body, headers=ADMIN)
            assert got.status_code == 201, got.text
            ids.append(got.json()["customer_id"])

        async def scenario() -> object:
            stop = asyncio.Event()
            dispatcher = asyncio.create_task(run_dispatcher(settings, messaging, stop))
            try:
                async with httpx.AsyncClient(timeout=30) as http:
                    return await load_campaigns(
                        http,
                        engagement.url,
                        "dev-admin-key",
                        ids,
                        mail_dir=mail,
                        outbox_dir=outbox,
                        seed=5,
                        wait_s=120,
                        # every recipient answers: each kind of response is exercised
                        specs=[
                            replace(spec, open_rate={"*": 1.0}, click_rate=1.0, unsubscribe_rate=0.5)
                            for spec in plan_campaigns(ids, seed=5)
                        ],
                    )
            finally:
                stop.set()
                await asyncio.wait_for(dispatcher, timeout=30)

        report = asyncio.run(scenario())
    finally:
        for gen in (engagement_gen, analytics_gen):
            gen.close()
        hooks.shutdown()
        controller.stop()
    from crm_cli.demo_campaigns import CampaignDemoReport

    assert isinstance(report, CampaignDemoReport)
    # the segments of an empty analytics store have nobody: those campaigns say so
    assert len(report.not_launched) == 2
    [birthday] = report.campaigns
    assert birthday["recipients"] == len(NAMES)
    sent = birthday["sent"]
    assert sent + sum(birthday["skipped"].values()) == len(NAMES)
    assert report.messages_seen == sent > 0
    assert set(birthday["sent_by_variant"]) <= {"regular", "birthday", "gold", "vip-birthday"}
    # responses went through the tracking endpoints and were recorded on the messages
    # (every recipient clicked here, and a click counts as an open: LINE has no pixel)
    assert birthday["opened"] == sent
    assert birthday["clicked"] == report.clicks
    assert birthday["opted_out"] == report.unsubscribes
    on_line = len((outbox / "line.jsonl").read_text(encoding="utf-8").splitlines())
    assert on_line > 0
    emailed = sent - on_line
    assert report.opens == emailed > 0  # LINE messages have no pixel
    assert report.clicks == sent
    assert 0 < report.unsubscribes < emailed + 1
