"""Channels other than e-mail go out through a signed HTTP webhook (a real local HTTP
server here), falling back along the campaign's channel order; temporary webhook errors
are retried, permanent ones recorded. And the dispatcher process follows identity's
profile topic on Kafka into its consent view: a withdrawal seen there is honoured."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from crm_contracts.events.identity import Consent, ConsentChannel, ProfileSnapshot, ProfileSnapshotPayload
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from engagement.campaigns import CampaignApplication
from engagement.dispatch.consent import ConsentView
from engagement.dispatch.process import dedupe_path, prune_handled, run_dispatcher
from engagement.dispatch.settings import MessagingSettings
from engagement.dispatch.wiring import DISPATCHER_GROUP, build_campaigns, build_clients, build_dispatcher
from engagement.domain.campaign import OptOut

from .conftest import Mailbox, Served

pytestmark = pytest.mark.integration
STAFF = {"X-API-Key": "dev-admin-key"}
NOW = datetime.now(UTC)
SECRET = "webhook-secret"
TOKYO = ZoneInfo("Asia/Tokyo")


class Hook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[int] = []  # status codes to answer first, then 200
        self.bad_signatures = 0


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers.get("X-CRM-Signature", "")):
                state.bad_signatures += 1
            status = state.answers.pop(0) if state.answers else 200
            if status == 200:
                state.received.append(
                    {
                        **json.loads(body),
                        "idempotency_key": self.headers["Idempotency-Key"],
                        "path": self.path,
                    }
                )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def after(moment: datetime, *, hour: int, minute: int) -> datetime:
    """The first time ``hour:minute`` in Tokyo after ``moment``."""
    tokyo = moment.astimezone(TOKYO)
    at = tokyo.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return (at if at > tokyo else at + timedelta(days=1)).astimezone(UTC)


def register(identity: Served, body: dict[str, Any]) -> uuid.UUID:
    response = httpx.post(
        f"{identity.url}/customers",
        json={"channel": "app", "phone": f"080-5555-{uuid.uuid4().int % 10_000:04d}", **body},
        headers=STAFF,
    )
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["customer_id"])


def launch(app: CampaignApplication, channels: list[str], customers: list[uuid.UUID]) -> uuid.UUID:
    campaign = app.create(
        name="アプリ限定クーポン",
        channels=channels,
        audience={"customer_ids": [str(c) for c in customers]},
        variants=[{"id": "d", "subject": "クーポン", "body": "{{ name }}様 クーポンをどうぞ"}],
        rules=[],
        default_variant="d",
        send_at=NOW,
        holdout_pct=0,
        attribution_days=7,
        quiet_hours=None,
        link_hosts=[],
        created_at=NOW,
    )
    app.launch(campaign.id, customers, NOW)
    return campaign.id


def test_line_and_sms_go_through_signed_webhooks_with_fallback_and_retries(
    tmp_path: Path, identity_api: Served, smtp: tuple[Mailbox, int], hook: tuple[Hook, str]
) -> None:
    state, url = hook
    box, smtp_port = smtp
    tag = str(uuid.uuid4().int % 10**8)  # identity upper-cases LINE ids: digits survive
    on_line = register(
        identity_api,
        {"name_kanji": "木村 拓也", "line_id": f"U{tag}", "consents": {"line": True, "sms": True}},
    )
    sms_only = register(identity_api, {"name_kanji": "林 優子", "consents": {"line": False, "sms": True}})
    refused = register(identity_api, {"name_kanji": "森 勇気", "consents": {"sms": True}})
    settings = Settings(var_dir=tmp_path / "var")
    messaging = MessagingSettings(
        identity_url=identity_api.url,
        smtp_port=smtp_port,
        line_webhook_url=f"{url}/line",
        sms_webhook_url=f"{url}/sms",
        webhook_secret=SECRET,
        dispatch_backoff_s=0,
    )
    app = build_campaigns(settings)
    try:
        campaign_id = launch(app, ["line", "sms"], [on_line, sms_only, refused])

        async def dispatch() -> tuple[int, int]:
            clients = build_clients(messaging)
            dispatcher, view = build_dispatcher(settings, messaging, app, clients)
            try:
                sent = failed = 0
                # LINE answers 503 once (retried), then the SMS gateway refuses the last one
                for customer, answers in ((on_line, [503]), (sms_only, []), (refused, [400])):
                    state.answers = answers
                    outcome = await dispatcher.deliver(app.campaign(campaign_id), customer, False, {})
                    sent += outcome == "sent"
                    failed += outcome == "failed"
                return sent, failed
            finally:
                view.close()
                await clients.aclose()
                for p in dispatcher.providers.values():
                    await p.aclose()

        sent, failed = asyncio.run(dispatch())
    finally:
        app.close()
    assert (sent, failed) == (2, 1)
    assert len(state.received) == 2  # the 503 was not counted as a delivery, its retry was
    assert state.bad_signatures == 0
    by_path = {r["path"]: r for r in state.received}
    assert set(by_path) == {"/line", "/sms"}
    assert by_path["/line"]["to"] == f"U{tag}"
    assert by_path["/line"]["text"] == "木村 拓也様 クーポンをどうぞ"
    assert by_path["/sms"]["to"].startswith("+8180")
    assert by_path["/sms"]["text"].startswith("林 優子様")
    assert by_path["/line"]["idempotency_key"] == by_path["/line"]["message_id"]
    assert box.mails == []
    app = build_campaigns(settings)
    try:
        failure = app.maybe_message(campaign_id, refused)
        assert failure is not None
        assert (failure.status, failure.reason) == ("failed", "webhook answered 400")
    finally:
        app.close()


def test_the_dispatcher_process_honours_a_withdrawal_seen_on_the_profile_topic(
    tmp_path: Path, kafka_bootstrap: str, identity_api: Served, smtp: tuple[Mailbox, int]
) -> None:
    box, smtp_port = smtp
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    messaging = MessagingSettings(identity_url=identity_api.url, smtp_port=smtp_port, dispatch_poll_s=0.2)
    tag = uuid.uuid4().hex[:8]
    # identity still says yes; the newest profile on the topic says no
    withdrawn = register(
        identity_api, {"name_kanji": "石井 誠", "email": f"m.{tag}@example.jp", "consents": {"email": True}}
    )
    kept = register(
        identity_api, {"name_kanji": "前田 愛", "email": f"a.{tag}@example.jp", "consents": {"email": True}}
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run_dispatcher(settings, messaging, stop))
        try:
            async with EventProducer(
                kafka_bootstrap, client_id="t", topic_prefix=settings.kafka_topic_prefix
            ) as producer:
                await producer.publish(
                    ProfileSnapshot(
                        occurred_at=NOW,
                        producer="identity.resolver",
                        customer_key=str(withdrawn),
                        payload=ProfileSnapshotPayload(
                            customer_id=withdrawn,
                            consents=(Consent(channel=ConsentChannel.EMAIL, granted=False, at=NOW),),
                        ),
                    )
                )
            view = ConsentView(settings.service_dir("engagement") / "consent-view.sqlite")
            deadline = time.monotonic() + 60
            while view.lookup(withdrawn) is None:
                assert not task.done(), task
                assert time.monotonic() < deadline, "the profile never reached the consent view"
                await asyncio.sleep(0.2)
            view.close()
            app = build_campaigns(settings)
            campaign_id = await asyncio.to_thread(launch, app, ["email"], [withdrawn, kept])
            while app.campaign(campaign_id).status != "completed":
                assert not task.done(), task
                assert time.monotonic() < deadline, "the campaign never completed"
                await asyncio.sleep(0.2)
            skipped = app.maybe_message(campaign_id, withdrawn)
            assert skipped is not None
            assert (skipped.status, skipped.reason) == ("skipped", "no_consent")
            app.close()
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    asyncio.run(scenario())
    assert [str(m["To"].addresses[0].addr_spec) for m in box.mails] == [f"a.{tag}@example.jp"]


def test_an_opt_out_identity_missed_is_passed_on_later(
    tmp_path: Path, identity_api: Served, smtp: tuple[Mailbox, int]
) -> None:
    _, smtp_port = smtp
    customer = register(
        identity_api,
        {
            "name_kanji": "清水 翼",
            "email": f"t.{uuid.uuid4().hex[:8]}@example.jp",
            "consents": {"email": True},
        },
    )
    settings = Settings(var_dir=tmp_path / "var")
    app = build_campaigns(settings)
    try:
        campaign_id = launch(app, ["email"], [customer])

        async def scenario() -> tuple[int, int, int]:
            away = MessagingSettings(identity_url="http://127.0.0.1:9", smtp_port=smtp_port)
            live = MessagingSettings(identity_url=identity_api.url, smtp_port=smtp_port)
            clients = build_clients(live)
            dispatcher, view = build_dispatcher(settings, live, app, clients)
            assert (await dispatcher.run_once()).sent == 1
            message = app.maybe_message(campaign_id, customer)
            assert message is not None
            app.opt_out(message.id, NOW)  # what the unsubscribe link records while identity is away
            dead_clients = build_clients(away)
            stalled, view2 = build_dispatcher(settings, away, app, dead_clients)
            first = await stalled.forward_opt_outs()
            second = await dispatcher.forward_opt_outs()
            third = await dispatcher.forward_opt_outs()
            for v in (view, view2):
                v.close()
            for c in (clients, dead_clients):
                await c.aclose()
            return first, second, third

        assert asyncio.run(scenario()) == (0, 1, 0)
        record = app.opt_out_of(customer, "email")
        assert record is not None
        assert record.forwarded_at is not None
    finally:
        app.close()
    contact = httpx.get(f"{identity_api.url}/customers/{customer}/contact/email", headers=STAFF).json()
    assert contact["consent"] is False


def test_an_erased_customers_opt_out_does_not_hold_up_the_next(tmp_path: Path, identity_api: Served) -> None:
    """identity answers 409 ``customer_inactive`` for an erased customer's consent: there
    is nobody left to tell, so the opt-out is done and the ones after it are passed on."""
    erased, active = (
        register(
            identity_api,
            {
                "name_kanji": "退会 花子",
                "email": f"e.{uuid.uuid4().hex[:8]}@example.jp",
                "consents": {"email": True},
            },
        )
        for _ in range(2)
    )
    answer = httpx.post(
        f"{identity_api.url}/customers/{erased}/erase", json={"reason": "request"}, headers=STAFF
    )
    assert answer.status_code == 200, answer.text
    refused = httpx.put(
        f"{identity_api.url}/customers/{erased}/consents/email",
        json={"granted": False, "at": NOW.isoformat()},
        headers=STAFF,
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "customer_inactive")
    settings = Settings(var_dir=tmp_path / "var")
    app = build_campaigns(settings)
    try:
        for customer in (erased, active):  # the erased one first in the store's log
            app.save(OptOut.record(customer, "email", uuid.uuid4(), NOW))

        async def scenario() -> tuple[int, int]:
            live = MessagingSettings(identity_url=identity_api.url)
            clients = build_clients(live)
            dispatcher, view = build_dispatcher(settings, live, app, clients)
            try:
                return await dispatcher.forward_opt_outs(), await dispatcher.forward_opt_outs()
            finally:
                view.close()
                await clients.aclose()

        assert asyncio.run(scenario()) == (2, 0)
        for customer in (erased, active):
            record = app.opt_out_of(customer, "email")
            assert record is not None and record.forwarded_at is not None
    finally:
        app.close()
    contact = httpx.get(f"{identity_api.url}/customers/{active}/contact/email", headers=STAFF).json()
    assert contact["consent"] is False


def test_quiet_hours_defer_and_a_cancellation_skips_the_rest(
    tmp_path: Path, identity_api: Served, smtp: tuple[Mailbox, int]
) -> None:
    box, smtp_port = smtp
    customers = [
        register(
            identity_api,
            {
                "name_kanji": n,
                "email": f"q{i}.{uuid.uuid4().hex[:6]}@example.jp",
                "consents": {"email": True},
            },
        )
        for i, n in enumerate(("早川 光", "坂本 望"))
    ]
    settings = Settings(var_dir=tmp_path / "var")
    messaging = MessagingSettings(identity_url=identity_api.url, smtp_port=smtp_port)
    app = build_campaigns(settings)
    try:
        quiet = app.create(
            name="夜は送らない",
            channels=["email"],
            audience={"customer_ids": [str(c) for c in customers]},
            variants=[{"id": "d", "subject": "s", "body": "{{ name }}"}],
            rules=[],
            default_variant="d",
            send_at=NOW,
            holdout_pct=0,
            attribution_days=7,
            quiet_hours=[21, 8],
            link_hosts=[],
            created_at=NOW,
        )
        app.launch(quiet.id, customers, NOW)
        # the dispatchers' clocks: after the campaign's send_at (NOW, the clock of the
        # identity process the customers were registered with), whatever the date
        night = after(NOW, hour=22, minute=30)
        morning = after(night, hour=9, minute=30)
        cancelled = launch(app, ["email"], customers)
        app.cancel(cancelled, NOW, "wrong coupon")

        async def rounds() -> tuple[int, int, int, int]:
            clients = build_clients(messaging)
            try:
                at_night, view = build_dispatcher(settings, messaging, app, clients)
                at_night.clock = lambda: night
                first = await at_night.run_once()
                view.close()
                in_the_morning, view = build_dispatcher(settings, messaging, app, clients)
                in_the_morning.clock = lambda: morning
                second = await in_the_morning.run_once()
                view.close()
                return first.deferred, first.sent, second.sent, first.skipped + second.skipped
            finally:
                await clients.aclose()

        deferred, sent_at_night, sent_in_the_morning, skipped = asyncio.run(rounds())
        assert (deferred, sent_at_night, sent_in_the_morning) == (1, 0, 2)
        assert skipped == 2  # the cancelled campaign's recipients
        for customer in customers:
            message = app.maybe_message(cancelled, customer)
            assert message is not None
            assert (message.status, message.reason) == ("skipped", "campaign_cancelled")
    finally:
        app.close()
    assert len(box.mails) == 2


def _handled(path: Path) -> dict[bytes, float]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT event_id, processed_at FROM processed_events").fetchall())
    finally:
        db.close()


def test_pruning_what_the_dispatcher_handled_never_sends_a_message_again(
    tmp_path: Path, kafka_bootstrap: str, identity_api: Served, smtp: tuple[Mailbox, int]
) -> None:
    """The dispatcher forgets handled profile events past CRM_DISPATCH_DEDUPE_RETENTION_S.
    Then the identity relay's copy of a withdrawal and a replayed older profile (granting)
    come again and are applied again: the consent view keeps the newest, so the
    withdrawal holds; a campaign already sent is not sent again by a dispatcher that
    remembers nothing."""
    box, smtp_port = smtp
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    retention = 3_600.0
    messaging = MessagingSettings(
        identity_url=identity_api.url,
        smtp_port=smtp_port,
        dispatch_poll_s=0.2,
        dispatch_dedupe_retention_s=retention,
    )
    group = settings.kafka_topic_prefix + DISPATCHER_GROUP
    handled_path = dedupe_path(settings, group)
    tag = uuid.uuid4().hex[:8]
    withdrawn = register(
        identity_api, {"name_kanji": "石井 誠", "email": f"m.{tag}@example.jp", "consents": {"email": True}}
    )
    kept = register(
        identity_api, {"name_kanji": "前田 愛", "email": f"a.{tag}@example.jp", "consents": {"email": True}}
    )

    def profile(granted: bool, recorded_at: datetime) -> ProfileSnapshot:
        return ProfileSnapshot(
            occurred_at=recorded_at,
            recorded_at=recorded_at,
            producer="identity.resolver",
            customer_key=str(withdrawn),
            payload=ProfileSnapshotPayload(
                customer_id=withdrawn,
                consents=(Consent(channel=ConsentChannel.EMAIL, granted=granted, at=recorded_at),),
            ),
        )

    granted_then = profile(True, datetime(2026, 11, 1, tzinfo=UTC))
    withdrawal = profile(False, datetime(2026, 11, 2, tzinfo=UTC))

    async def publish(*events: ProfileSnapshot) -> None:
        async with EventProducer(
            kafka_bootstrap, client_id="t", topic_prefix=settings.kafka_topic_prefix
        ) as producer:
            for event in events:
                await producer.publish(event)

    async def until(check: Any, what: str, task: asyncio.Task[None]) -> None:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(check):
            assert not task.done(), task
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.2)

    def completed(campaign_id: uuid.UUID) -> bool:
        app = build_campaigns(settings)
        try:
            return app.campaign(campaign_id).status == "completed"
        finally:
            app.close()

    async def first_run() -> uuid.UUID:
        stop = asyncio.Event()
        task = asyncio.create_task(run_dispatcher(settings, messaging, stop))
        try:
            await publish(granted_then, withdrawal)
            await until(lambda: len(_handled(handled_path)) == 2, "the profiles were never handled", task)
            app = build_campaigns(settings)
            campaign_id = await asyncio.to_thread(launch, app, ["email"], [withdrawn, kept])
            app.close()
            await until(lambda: completed(campaign_id), "the first campaign never completed", task)
            return campaign_id
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    first = asyncio.run(first_run())
    assert [str(m["To"].addresses[0].addr_spec) for m in box.mails] == [f"a.{tag}@example.jp"]

    marks = _handled(handled_path)
    assert set(marks) == {granted_then.event_id.bytes, withdrawal.event_id.bytes}
    newest = max(marks.values())
    # within the retention nothing is forgotten; past it, everything
    assert prune_handled(handled_path, retention, datetime.fromtimestamp(newest + retention - 1, UTC)) == 0

    async def second_run() -> uuid.UUID:
        stop = asyncio.Event()
        later = datetime.fromtimestamp(newest + retention + 1, UTC)
        task = asyncio.create_task(run_dispatcher(settings, messaging, stop, clock=lambda: later))
        try:
            # the process prunes at start: the ids are gone before anything comes again
            await until(lambda: not _handled(handled_path), "the dispatcher never pruned", task)
            await publish(withdrawal, granted_then)  # the relay's copy, then an older replay
            await until(lambda: len(_handled(handled_path)) == 2, "the copies were never handled", task)
            app = build_campaigns(settings)
            campaign_id = await asyncio.to_thread(launch, app, ["email"], [withdrawn, kept])
            app.close()
            await until(lambda: completed(campaign_id), "the second campaign never completed", task)
            return campaign_id
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)

    second = asyncio.run(second_run())
    app = build_campaigns(settings)
    try:
        for campaign_id in (first, second):
            skipped = app.maybe_message(campaign_id, withdrawn)
            assert skipped is not None and (skipped.status, skipped.reason) == ("skipped", "no_consent")
    finally:
        app.close()
    # one mail per campaign, to the customer who kept consent; the first campaign not again
    assert [str(m["To"].addresses[0].addr_spec) for m in box.mails] == [f"a.{tag}@example.jp"] * 2
