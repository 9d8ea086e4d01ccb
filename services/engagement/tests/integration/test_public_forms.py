"""Issue 17: a public form (no key) never silently changes a customer identity knows.

identity's and engagement's APIs run as processes of their own, the confirmation mail
goes over real SMTP to the local mail sink (a Maildir), on each store kind. Each attack
an outside tester used fails — consent without confirmation, a stranger's phone added to
a profile, two customers merged by presenting one's e-mail and the other's phone — and
the honest flows pass: a new customer through a form, double opt-in confirmed through the
link read from the Maildir (consent with its proof), an expired or replayed link refused.
"""

from __future__ import annotations

import json
import mailbox
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_binary_file
from email.policy import default
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from crm_platform.settings import Settings
from engagement.dispatch.mailsink import start_mailsink, start_webhook_sink
from engagement.dispatch.settings import MessagingSettings
from engagement.entrypoints.api import create
from engagement.surveys import SurveySettings

pytestmark = pytest.mark.integration
ADMIN = {"X-API-Key": "admin"}
STAFF = {"X-API-Key": "staff"}
KEYS = {
    "admin": ["*"],
    "staff": ["engagement:read", "engagement:write"],
    # all engagement's forms need of identity, and all they may do there
    "forms": ["identity:public-intake"],
}
SIGNUP = {
    "kind": "signup",
    "title": "メルマガ登録",
    "fields": [
        {"id": "email", "kind": "email", "label": "メール", "required": True},
        {"id": "phone", "kind": "phone", "label": "電話"},
        {"id": "name_kanji", "kind": "name_kanji", "label": "お名前"},
    ],
    "consent": {
        "purpose": "marketing",
        "wording": "新商品やセールのご案内をメールとSMSで受け取る",
        "wording_version": "v7",
        "channels": ["email", "sms"],
    },
}
LINK = re.compile(r"(http://\S+/v1/public/consent-confirmations/(c1\.[0-9a-f]{32}\.[A-Za-z0-9_-]+))")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _store_env(settings: Settings) -> dict[str, str]:
    env = {"CRM_EVENT_STORE": settings.event_store}
    if settings.event_store == "postgres":
        env |= {"CRM_POSTGRES_PORT": str(settings.postgres_port), "CRM_POSTGRES_DB": settings.postgres_db}
    return env


def _serve(name: str, tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = (tmp_path / f"{name}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", name, "api", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        assert server.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{name}'s API did not start"
        time.sleep(0.3)


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()


@dataclass
class Platform:
    identity: str
    engagement: str | None
    maildir: Path
    smtp_port: int
    settings: Settings
    #: where the SMS webhook sink appends what it receives (``sms.jsonl``)
    outbox: Path | None = None


def _common_env(tmp_path: Path, settings: Settings, kafka_bootstrap: str, name: str) -> dict[str, str]:
    return {
        **_store_env(settings),
        "CRM_VAR_DIR": str(tmp_path / f"{name}-var"),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "CRM_LOG_LEVEL": "WARNING",
        "CRM_API_KEYS": json.dumps(KEYS),
    }


@pytest.fixture
def platform(tmp_path: Path, store_settings: Settings, kafka_bootstrap: str) -> Iterator[Platform]:
    """identity and engagement as processes on one store kind, the mail sink on SMTP."""
    smtp_port = _free_port()
    maildir = tmp_path / "mail"
    sink = start_mailsink(maildir, port=smtp_port)
    outbox, webhook_port = tmp_path / "outbox", _free_port()
    webhooks = start_webhook_sink(outbox, port=webhook_port)
    identity, identity_url = _serve(
        "identity", tmp_path, _common_env(tmp_path, store_settings, kafka_bootstrap, "identity")
    )
    engagement = None
    try:
        engagement_env = {
            **_common_env(tmp_path, store_settings, kafka_bootstrap, "engagement"),
            "CRM_IDENTITY_URL": identity_url,
            "CRM_IDENTITY_API_KEY": "forms",
            "CRM_SMTP_PORT": str(smtp_port),
            "CRM_MAIL_FROM": "Omni Retail <hello@example.jp>",
            "CRM_SMS_WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/sms",
        }
        port = _free_port()
        engagement_env["CRM_SURVEY_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
        engagement, engagement_url = _serve_on("engagement", tmp_path, engagement_env, port)
        yield Platform(identity_url, engagement_url, maildir, smtp_port, store_settings, outbox)
    finally:
        if engagement is not None:
            _stop(engagement)
        _stop(identity)
        sink.stop()
        webhooks.shutdown()


def _serve_on(
    name: str, tmp_path: Path, env: dict[str, str], port: int
) -> tuple[subprocess.Popen[bytes], str]:
    log = (tmp_path / f"{name}.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", name, "api", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        assert server.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{name}'s API did not start"
        time.sleep(0.3)


def _register(identity: str, **body: Any) -> str:
    response = httpx.post(f"{identity}/customers", json={"channel": "store", **body}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return str(response.json()["customer_id"])


def _profile(identity: str, customer_id: str) -> dict[str, Any]:
    response = httpx.get(f"{identity}/customers/{customer_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _parsed(f: Any) -> Any:
    return message_from_binary_file(f, policy=default)


def _mails_to(maildir: Path, address: str) -> list[Any]:
    box = mailbox.Maildir(
        maildir, factory=lambda f: message_from_binary_file(f, policy=default), create=False
    )
    return [m for m in box if address in str(m["To"]).lower()]


def _sms_code(outbox: Path | None, phone: str) -> str:
    assert outbox is not None
    sent = [json.loads(line) for line in (outbox / "sms.jsonl").read_text().splitlines()]
    (text,) = [m["text"] for m in sent if m["to"] == phone]
    found = re.search(r"確認コード (\d{6})", text)
    assert found, text
    return found.group(1)


def _link(mail: Any) -> tuple[str, str]:
    body = mail.get_body(preferencelist=("plain",)).get_content()
    found = LINK.search(body)
    assert found, body
    return found.group(1), found.group(2)


def test_public_form_attacks_fail_and_the_honest_flows_pass(platform: Platform) -> None:
    identity, engagement = platform.identity, platform.engagement
    assert engagement is not None
    a = _register(
        identity, name_kanji="山田 花子", email="hanako@example.jp", consents={"email": False, "sms": False}
    )
    b = _register(identity, name_kanji="鈴木 一郎", phone="03-1234-5678", consents={"sms": False})
    before_a, before_b = _profile(identity, a), _profile(identity, b)
    form = httpx.post(f"{engagement}/v1/forms", json=SIGNUP, headers=STAFF)
    assert form.status_code == 201, form.text
    url = f"{engagement}/v1/public/forms/{form.json()['form_id']}/submissions"

    # Attack 1: A's e-mail, a stranger's phone, every consent ticked — no key.
    stranger = {
        "fields": {"email": "hanako@example.jp", "phone": "090-9999-0000"},
        "consent": {"email": True, "sms": True},
    }
    first = httpx.post(url, json=stranger)
    assert first.status_code == 201, first.text
    assert "customer_id" not in first.json() and "outcome" not in first.json()
    after_a = _profile(identity, a)
    assert after_a == before_a  # no consent, no phone, not even a new version
    assert after_a["consents"]["email"]["granted"] is False and after_a["consents"]["sms"]["granted"] is False
    found = httpx.post(
        f"{identity}/customers/search", json={"q": "09099990000", "kind": "phone"}, headers=ADMIN
    )
    assert found.json() == []  # the stranger's phone is on nobody's profile
    claims = [
        r
        for r in httpx.get(f"{identity}/reviews", headers=ADMIN).json()["reviews"]
        if r["kind"] == "intake_claim"
    ]
    assert [(c["customer_a"], [i["kind"] for i in c["identifiers"]]) for c in claims] == [(a, ["phone"])]
    assert claims[0]["evidence"]["source"]["form_id"] == form.json()["form_id"]
    # the confirmation link went to the address's owner, who did not follow it: nothing granted
    assert first.json()["confirmation"] == {"email": "sent", "sms": "sent"}
    assert len(_mails_to(platform.maildir, "hanako@example.jp")) == 1
    # the stranger receives the SMS code (it is their phone) and types it: it proves the
    # phone, which is on nobody's profile, so A's SMS consent stays as it was
    sms_url = f"{url}/{first.json()['submission_id']}/sms-confirmation"
    wrong = httpx.post(
        sms_url,
        json={"code": "000000" if _sms_code(platform.outbox, "+819099990000") != "000000" else "111111"},
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_code"
    typed = httpx.post(sms_url, json={"code": _sms_code(platform.outbox, "+819099990000")})
    assert typed.status_code == 200, typed.text
    assert _profile(identity, a) == before_a

    # Attack 2: A's e-mail with B's phone does not make them one customer.
    both = httpx.post(
        url, json={"submission_id": "mix-1", "fields": {"email": "hanako@example.jp", "phone": "0312345678"}}
    )
    assert both.status_code == 201, both.text
    assert (_profile(identity, a), _profile(identity, b)) == (before_a, before_b)
    assert _profile(identity, b)["status"] == "active" and _profile(identity, a)["merged_ids"] == []
    pairs = [
        r for r in httpx.get(f"{identity}/reviews", headers=ADMIN).json()["reviews"] if r["kind"] == "pair"
    ]
    assert [{p["customer_a"], p["customer_b"]} for p in pairs] == [{a, b}]
    assert pairs[0]["evidence"]["rule"] == "public-intake"

    # Honest: a new person signs up; the customer is created, consent waits for the link.
    honest = {
        "fields": {"email": "Kenta@Example.jp", "phone": "080-1234-5678", "name_kanji": "佐藤 健太"},
        "consent": {"email": True, "sms": True},
    }
    created = httpx.post(url, json=honest)
    assert created.status_code == 201, created.text
    sid = created.json()["submission_id"]
    view = httpx.get(
        f"{engagement}/v1/forms/{form.json()['form_id']}/submissions/{sid}", headers=STAFF
    ).json()
    assert view["outcome"] == "created"
    kenta = view["customer_id"]
    assert _profile(identity, kenta)["consents"] == {}  # nothing before confirmation
    (mail,) = _mails_to(platform.maildir, "kenta@example.jp")
    link, token = _link(mail)
    assert "kenta" not in link.lower() and "example" not in link  # no personal data in the URL
    page = httpx.get(link)
    assert page.status_code == 200 and page.json()["status"] == "pending"
    assert page.json()["wording_version"] == "v7"
    assert _profile(identity, kenta)["consents"] == {}  # reading the link grants nothing
    confirmed = httpx.post(link)
    assert confirmed.status_code == 200, confirmed.text
    consents = _profile(identity, kenta)["consents"]
    assert set(consents) == {"email"}  # SMS is not confirmed by an e-mail link: by its code
    assert consents["email"]["granted"] is True
    proof = consents["email"]["proof"]
    assert proof["form_id"] == form.json()["form_id"] and proof["submission_id"] == sid
    assert (proof["wording_version"], proof["purpose"], proof["confirmed_via"]) == (
        "v7",
        "marketing",
        "email",
    )
    assert proof["token_id"] == str(uuid.UUID(hex=token.split(".")[1])) and proof["confirmed_at"]
    # replayed: refused, and nothing changes
    version = _profile(identity, kenta)["version"]
    replay = httpx.post(link)
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "already_confirmed"
    assert _profile(identity, kenta)["version"] == version
    forged = httpx.post(link[:-2] + ("AA" if not link.endswith("AA") else "BB"))
    assert forged.status_code == 404
    # the submission's answer now says so (a retry of the same submission)
    again = httpx.post(url, json=honest)
    assert again.status_code == 200 and again.json()["confirmation"] == {"email": "confirmed", "sms": "sent"}
    code = _sms_code(platform.outbox, "+818012345678")
    by_sms = httpx.post(f"{url}/{sid}/sms-confirmation", json={"code": code})
    assert by_sms.status_code == 200, by_sms.text
    sms = _profile(identity, kenta)["consents"]["sms"]
    assert sms["granted"] is True and sms["proof"]["confirmed_via"] == "sms"
    assert sms["proof"]["submission_id"] == sid and sms["proof"]["wording_version"] == "v7"
    replayed = httpx.post(f"{url}/{sid}/sms-confirmation", json={"code": code})
    assert replayed.status_code == 409 and replayed.json()["error"]["code"] == "already_confirmed"

    # The address's owner follows the link the stranger caused: the consent is theirs to give.
    (to_a,) = _mails_to(platform.maildir, "hanako@example.jp")
    owner_link, _ = _link(to_a)
    assert httpx.post(owner_link).status_code == 200
    consents_a = _profile(identity, a)["consents"]
    assert consents_a["email"]["granted"] is True and consents_a["sms"]["granted"] is False
    assert "090" not in json.dumps(_profile(identity, a)["personal"])  # still no stranger's phone


@pytest.fixture
def identity_only(tmp_path: Path, store_settings: Settings, kafka_bootstrap: str) -> Iterator[Platform]:
    smtp_port = _free_port()
    maildir = tmp_path / "mail"
    sink = start_mailsink(maildir, port=smtp_port)
    identity, identity_url = _serve(
        "identity", tmp_path, _common_env(tmp_path, store_settings, kafka_bootstrap, "identity")
    )
    try:
        yield Platform(identity_url, None, maildir, smtp_port, store_settings)
    finally:
        _stop(identity)
        sink.stop()


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _in_process(
    platform: Platform, tmp_path: Path, kafka_bootstrap: str, clock: Clock | None = None, **survey: Any
) -> TestClient:
    settings = platform.settings.model_copy(
        update={
            "var_dir": tmp_path / "engagement-var",
            "kafka_bootstrap": kafka_bootstrap,
            "kafka_topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
            "api_keys": KEYS,
        }
    )
    app = create(settings)
    app.state.survey_settings = SurveySettings(
        identity_url=platform.identity, identity_api_key="forms", **survey
    )
    app.state.messaging = MessagingSettings(smtp_port=platform.smtp_port)
    if clock is not None:
        app.state.survey_clock = clock
    return TestClient(app)


def test_an_expired_link_is_refused_and_grants_nothing(
    identity_only: Platform, tmp_path: Path, kafka_bootstrap: str
) -> None:
    clock = Clock(datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
    with _in_process(
        identity_only, tmp_path, kafka_bootstrap, clock, consent_confirmation_ttl_s=3600
    ) as client:
        fid = client.post("/v1/forms", json=SIGNUP, headers=STAFF).json()["form_id"]
        sent = client.post(
            f"/v1/public/forms/{fid}/submissions",
            json={"fields": {"email": "late@example.jp"}, "consent": {"email": True}},
        )
        assert sent.status_code == 201 and sent.json()["confirmation"] == {"email": "sent"}
        view = client.get(f"/v1/forms/{fid}/submissions/{sent.json()['submission_id']}", headers=STAFF).json()
        (mail,) = _mails_to(identity_only.maildir, "late@example.jp")
        _, token = _link(mail)
        path = f"/v1/public/consent-confirmations/{token}"
        clock.at += timedelta(seconds=3600)
        assert client.get(path).json()["status"] == "expired"
        expired = client.post(path)
        assert expired.status_code == 410 and expired.json()["error"]["code"] == "confirmation_expired"
    assert _profile(identity_only.identity, view["customer_id"])["consents"] == {}


def test_rate_limits_key_on_the_client_a_trusted_proxy_names(
    identity_only: Platform, tmp_path: Path, kafka_bootstrap: str
) -> None:
    body = {"fields": {"email": "someone@example.jp"}}
    # No trusted proxy: X-Forwarded-For is whatever the sender wrote; the socket counts.
    with _in_process(identity_only, tmp_path, kafka_bootstrap, form_rate_per_minute=2) as client:
        fid = client.post("/v1/forms", json=SIGNUP, headers=STAFF).json()["form_id"]
        url = f"/v1/public/forms/{fid}/submissions"
        codes = [
            client.post(url, json=body, headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(3)
        ]
        assert codes[:2] != [429, 429] and codes[2] == 429
        # the confirmation route is limited too (its own bucket)
        bogus = "/v1/public/consent-confirmations/c1." + "0" * 32 + ".AAAAAAAAAAAAAAAAAAAAAA"
        assert [client.post(bogus).status_code for _ in range(3)] == [404, 404, 429]
    # Behind a trusted proxy (the peer): each forwarded client has its own bucket.
    trusted = _in_process(
        identity_only, tmp_path, kafka_bootstrap, form_rate_per_minute=2, trusted_proxies=["10.0.0.0/8"]
    )
    trusted = TestClient(trusted.app, client=("10.1.2.3", 50000))
    with trusted as client:
        fid = client.post("/v1/forms", json=SIGNUP, headers=STAFF).json()["form_id"]
        url = f"/v1/public/forms/{fid}/submissions"
        one = [
            client.post(url, json=body, headers={"X-Forwarded-For": "203.0.113.7"}).status_code
            for _ in range(3)
        ]
        assert one[2] == 429
        other = client.post(url, json=body, headers={"X-Forwarded-For": "203.0.113.8"})
        assert other.status_code != 429
    # A peer outside the list cannot pick its bucket with the header.
    untrusted = _in_process(
        identity_only, tmp_path, kafka_bootstrap, form_rate_per_minute=2, trusted_proxies=["10.0.0.0/8"]
    )
    with TestClient(untrusted.app, client=("192.0.2.50", 50000)) as client:
        fid = client.post("/v1/forms", json=SIGNUP, headers=STAFF).json()["form_id"]
        url = f"/v1/public/forms/{fid}/submissions"
        codes = [
            client.post(url, json=body, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
            for i in range(3)
        ]
        assert codes[2] == 429


def test_a_retry_by_someone_else_never_sends_the_code_to_their_phone(
    identity_only: Platform, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A submission is keyed by its first identifier (the e-mail). When the SMS code of
    the owner's submission could not be sent (the provider was down), a stranger who
    submits the same e-mail with their own phone must not receive the owner's code: with
    it and the submission id the answer gives, they would confirm SMS consent for the
    owner's phone."""
    clock = Clock(datetime(2026, 11, 20, 10, 0, tzinfo=UTC))
    outbox, webhook_port = tmp_path / "outbox", _free_port()
    owner = {
        "fields": {"email": "owner@example.jp", "phone": "080-1111-2222"},
        "consent": {"email": True, "sms": True},
    }
    stranger = {
        "fields": {"email": "owner@example.jp", "phone": "090-3333-4444"},
        "consent": {"email": True, "sms": True},
    }
    in_process = _in_process(identity_only, tmp_path, kafka_bootstrap, clock)
    in_process.app.state.messaging = MessagingSettings(  # type: ignore[attr-defined]
        smtp_port=identity_only.smtp_port, sms_webhook_url=f"http://127.0.0.1:{webhook_port}/sms"
    )
    with in_process as client:
        fid = client.post("/v1/forms", json=SIGNUP, headers=STAFF).json()["form_id"]
        url = f"/v1/public/forms/{fid}/submissions"
        # the SMS provider is down: the owner's code is not sent
        first = client.post(url, json=owner)
        assert first.status_code == 201, first.text
        assert first.json()["confirmation"] == {"email": "sent", "sms": "unsent"}
        owner_id = client.get(f"/v1/forms/{fid}/submissions/{first.json()['submission_id']}", headers=STAFF)
        customer = owner_id.json()["customer_id"]
        webhooks = start_webhook_sink(outbox, port=webhook_port)
        try:
            again = client.post(url, json=stranger)
            sent = (outbox / "sms.jsonl").read_text().splitlines() if (outbox / "sms.jsonl").exists() else []
            assert [json.loads(line)["to"] for line in sent] == []  # nothing to the stranger's phone
            sid = again.json()["submission_id"]
            # (before the fix, the stranger typed the code they received here)
            assert client.post(f"{url}/{sid}/sms-confirmation", json={"code": "000000"}).status_code in (
                404,
                422,
            )
            # the owner's own retry sends the code to the owner's phone
            client.post(url, json=owner)
            sent = (outbox / "sms.jsonl").read_text().splitlines()
            assert [json.loads(line)["to"] for line in sent] == ["+818011112222"]
        finally:
            webhooks.shutdown()
    assert "sms" not in _profile(identity_only.identity, customer)["consents"]


def test_ipv6_clients_of_one_network_share_a_rate_limit(
    identity_only: Platform, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """An IPv6 client holds a whole /64 (every home connection has one): counting each
    address on its own would give it 2^64 buckets, so no limit at all."""
    body = {"fields": {"email": "someone@example.jp"}}
    app = _in_process(
        identity_only, tmp_path, kafka_bootstrap, form_rate_per_minute=2, trusted_proxies=["10.0.0.0/8"]
    ).app
    with TestClient(app, client=("10.1.2.3", 50000)) as client:
        fid = client.post("/v1/forms", json=SIGNUP, headers=STAFF).json()["form_id"]
        url = f"/v1/public/forms/{fid}/submissions"
        codes = [
            client.post(url, json=body, headers={"X-Forwarded-For": f"2001:db8:1:2::{i:x}"}).status_code
            for i in range(1, 4)
        ]
        assert codes[2] == 429, codes
        # another network has its own bucket; an IPv4 client is counted by its address
        other = client.post(url, json=body, headers={"X-Forwarded-For": "2001:db8:1:3::1"})
        assert other.status_code != 429
        assert client.post(url, json=body, headers={"X-Forwarded-For": "203.0.113.9"}).status_code != 429
