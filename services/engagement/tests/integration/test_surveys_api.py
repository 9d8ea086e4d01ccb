"""Surveys and forms through engagement's HTTP API, with identity's real API in a process
of its own (forms create or link customers through it), then the relay to Kafka."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from crm_contracts.envelope import IdentifierKind
from crm_contracts.registry import decode
from crm_contracts.topics import ENGAGEMENT_FORM
from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import blind_identifier
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import read_topic
from engagement.adapters.crm_clients import AnalyticsClient
from engagement.dispatch.settings import MessagingSettings
from engagement.entrypoints.api import create
from engagement.survey_bootstrap import build_survey_relay, build_surveys
from engagement.surveys import SurveySettings

pytestmark = pytest.mark.integration
STAFF = {"X-API-Key": "staff"}
READER = {"X-API-Key": "reader"}
NPS_SURVEY = {
    "title": "ご購入後アンケート",
    "questions": [
        {"id": "recommend", "kind": "nps", "text": "友人に薦めますか?"},
        {"id": "satisfaction", "kind": "csat", "text": "満足度", "required": False},
        {"id": "channel", "kind": "single_choice", "text": "どこで?", "choices": ["store", "online"]},
        {"id": "comment", "kind": "free_text", "text": "ご意見", "required": False, "max_length": 200},
    ],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def identity_url(tmp_path: Path, kafka_bootstrap: str) -> Iterator[str]:
    """identity's API, started as its own process (services never import each other)."""
    port = _free_port()
    env = {
        **os.environ,
        "CRM_VAR_DIR": str(tmp_path / "identity-var"),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
        "CRM_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "identity.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "identity", "api", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "identity.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "identity's API did not start"
            time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def _settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        api_keys={"staff": ["engagement:read", "engagement:write"], "reader": ["engagement:read"]},
    )


def _client(settings: Settings, identity_url: str = "http://127.0.0.1:9", rate: int = 1000) -> TestClient:
    app = create(settings)
    app.state.survey_settings = SurveySettings(identity_url=identity_url, form_rate_per_minute=rate)
    # consent confirmation mail: nowhere (no SMTP server listens there), never a stray sink
    app.state.messaging = MessagingSettings(smtp_port=_free_port())
    return TestClient(app)


def _error_fields(response: httpx.Response) -> list[str]:
    return [f["field"] for f in response.json()["error"]["fields"]]


def test_survey_invitations_answers_versions_and_the_relay(tmp_path: Path, kafka_bootstrap: str) -> None:
    settings = _settings(tmp_path, kafka_bootstrap)
    with _client(settings) as client:
        bad = client.post(
            "/v1/surveys",
            json={
                **NPS_SURVEY,
                "questions": [{"id": "q", "kind": "single_choice", "text": "?", "choices": ["a"]}],
            },
            headers=STAFF,
        )
        assert bad.status_code == 422 and _error_fields(bad) == ["questions.0.choices"]
        assert client.post("/v1/surveys", json=NPS_SURVEY).status_code == 401
        assert client.post("/v1/surveys", json=NPS_SURVEY, headers=READER).status_code == 403
        created = client.post("/v1/surveys", json=NPS_SURVEY, headers=STAFF)
        assert created.status_code == 201, created.text
        survey = created.json()
        sid = survey["survey_id"]
        assert (survey["status"], survey["version"]) == ("open", 1)

        customers = [str(uuid.uuid4()) for _ in range(3)]
        invited = client.post(
            f"/v1/surveys/{sid}/invitations", json={"customer_ids": customers}, headers=STAFF
        )
        assert invited.status_code == 200, invited.text
        body = invited.json()
        assert (body["invited"], body["already_invited"]) == (3, 0)
        links = {i["customer_id"]: i["survey_url"] for i in body["invitations"]}
        again = client.post(
            f"/v1/surveys/{sid}/invitations", json={"customer_ids": customers[:1]}, headers=STAFF
        ).json()
        assert (again["invited"], again["already_invited"]) == (0, 1)
        assert again["invitations"][0]["survey_url"] == links[customers[0]]  # the same link
        one = client.get(f"/v1/surveys/{sid}/invitations/{customers[1]}", headers=READER).json()
        assert one["survey_url"] == links[customers[1]]
        assert client.get(f"/v1/surveys/{sid}/invitations/nobody", headers=READER).status_code == 404
        assert (
            client.post(f"/v1/surveys/{sid}/invitations", json={}, headers=STAFF).status_code == 422
        )  # no audience

        path = links[customers[0]].removeprefix("http://127.0.0.1:8002")
        page = client.get(path)
        assert page.status_code == 200 and next(q["id"] for q in page.json()["questions"]) == "recommend"
        invalid = client.post(f"{path}/answers", json={"answers": {"recommend": 11, "channel": "store"}})
        assert invalid.status_code == 422 and _error_fields(invalid) == ["answers.recommend"]
        missing = client.post(f"{path}/answers", json={"answers": {"recommend": 9}})
        assert missing.status_code == 422 and _error_fields(missing) == ["answers.channel"]
        answer = {
            "recommend": 9,
            "satisfaction": 5,
            "channel": "store",
            "comment": "店員さんの 山田 さんが親切",
        }
        first = client.post(f"{path}/answers", json={"answers": answer})
        assert first.status_code == 201, first.text
        assert client.post(f"{path}/answers", json={"answers": answer}).status_code == 200  # retry
        changed = client.post(f"{path}/answers", json={"answers": {**answer, "recommend": 0}})
        assert changed.status_code == 409 and changed.json()["error"]["code"] == "already_answered"
        tampered = path[:-2] + ("AA" if not path.endswith("AA") else "BB")
        assert client.post(f"{tampered}/answers", json={"answers": answer}).status_code == 404
        assert client.get(tampered).status_code == 404

        # after answers, an edit is a new version; earlier answers keep theirs
        edited = client.put(
            f"/v1/surveys/{sid}/questions", json={"questions": NPS_SURVEY["questions"][:1]}, headers=STAFF
        )
        assert edited.json()["version"] == 2
        path2 = links[customers[1]].removeprefix("http://127.0.0.1:8002")
        assert client.post(f"{path2}/answers", json={"answers": {"recommend": 3}}).status_code == 201

        # anonymous answers only where the survey allows them
        anon = {"response_id": str(uuid.uuid4()), "answers": {"recommend": 7}}
        assert client.post(f"/v1/public/surveys/{sid}/answers", json=anon).status_code == 403
        open_survey = client.post(
            "/v1/surveys", json={**NPS_SURVEY, "allow_anonymous": True}, headers=STAFF
        ).json()
        oid = open_survey["survey_id"]
        anon = {"response_id": str(uuid.uuid4()), "answers": {"recommend": 10, "channel": "online"}}
        assert client.post(f"/v1/public/surveys/{oid}/answers", json=anon).status_code == 201
        assert client.post(f"/v1/public/surveys/{oid}/answers", json=anon).status_code == 200

        assert client.post(f"/v1/surveys/{sid}/close", headers=STAFF).json()["status"] == "closed"
        path3 = links[customers[2]].removeprefix("http://127.0.0.1:8002")
        late = client.post(f"{path3}/answers", json={"answers": {"recommend": 8}})
        assert late.status_code == 409 and late.json()["error"]["code"] == "survey_not_open"

    events = _relay(settings, expect=3 + 2 + 1)
    by_type: dict[str, list[Any]] = {}
    for _raw, e in events:
        by_type.setdefault(e.event_type, []).append(e)
    assert len(by_type["survey.invited"]) == 3
    assert {e.customer_key for e in by_type["survey.invited"]} == set(customers)
    answered = sorted(by_type["survey.answered"], key=lambda e: e.payload.survey_version)
    assert [(e.payload.survey_version, e.payload.channel) for e in answered if not e.payload.anonymous] == [
        (1, "invitation"),
        (2, "invitation"),
    ]
    first_answer = next(e for e in answered if e.customer_key == customers[0])
    assert first_answer.payload.invitation_id is not None
    kinds = {a.question_id: (a.kind, a.score, a.choices, a.text_length) for a in first_answer.payload.answers}
    assert kinds == {
        "recommend": ("nps", 9, (), None),
        "satisfaction": ("csat", 5, (), None),
        "channel": ("single_choice", None, ("store",), None),
        "comment": ("free_text", None, (), len(answer["comment"])),
    }
    anonymous = [e for e in answered if e.payload.anonymous]
    assert len(anonymous) == 1 and anonymous[0].customer_key.startswith("anonymous:")
    # free text never reaches Kafka
    assert all("山田".encode() not in raw for raw, _ in events)


def _relay(settings: Settings, expect: int) -> list[tuple[bytes, Any]]:
    asyncio.run(ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    app = build_surveys(settings)

    async def relay() -> None:
        async with EventProducer(
            settings.kafka_bootstrap, client_id="relay", topic_prefix=settings.kafka_topic_prefix
        ) as producer:
            await build_survey_relay(app, producer).relay_available()

    try:
        asyncio.run(relay())
    finally:
        app.close()
    topic = settings.kafka_topic_prefix + ENGAGEMENT_FORM.name
    records = asyncio.run(read_topic(settings.kafka_bootstrap, topic, expect, timeout=30))
    assert len(records) == expect, [decode(r.value).event_type for r in records]
    for r in records:  # keyed by the customer key
        assert r.key.decode() == decode(r.value).customer_key
    return [(r.value, decode(r.value)) for r in records]


def test_invitations_from_an_analytics_segment(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The audience comes from analytics' segment API, page by page (a fake analytics at
    the HTTP boundary: the real one is exercised in analytics' own tests)."""
    members = [str(uuid.uuid4()) for _ in range(5)]
    asked: list[dict[str, str]] = []

    def analytics(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        if request.url.path != "/v1/segments/loyal/customers":
            return httpx.Response(404, json={"error": {"code": "unknown_segment"}})
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        rows = [{"customer_id": c} for c in members[offset : offset + limit]]
        return httpx.Response(200, json={"customers": rows})

    settings = _settings(tmp_path, kafka_bootstrap)
    with _client(settings) as client:
        fake = AnalyticsClient("http://analytics", "k", transport=httpx.MockTransport(analytics))
        fake.PAGE = 2  # several pages
        client.app.state.surveys.analytics = fake  # type: ignore[attr-defined]
        sid = client.post("/v1/surveys", json=NPS_SURVEY, headers=STAFF).json()["survey_id"]
        done = client.post(
            f"/v1/surveys/{sid}/invitations", json={"segment": {"name": "loyal", "limit": 4}}, headers=STAFF
        )
        assert done.status_code == 200, done.text
        assert [i["customer_id"] for i in done.json()["invitations"]] == members[:4]
        assert done.json()["audience"] == "segment:loyal"
        assert [a["offset"] for a in asked] == ["0", "2"]
        unknown = client.post(
            f"/v1/surveys/{sid}/invitations", json={"segment": {"name": "vip"}}, headers=STAFF
        )
        assert unknown.status_code == 422 and _error_fields(unknown) == ["body.segment.name"]


SEMINAR = {
    "kind": "event_registration",
    "title": "秋のスタイリングセミナー",
    "fields": [
        {"id": "email", "kind": "email", "label": "メール", "required": True},
        {"id": "name_kanji", "kind": "name_kanji", "label": "お名前", "required": True},
        {"id": "name_kana", "kind": "name_kana", "label": "フリガナ"},
        {"id": "store", "kind": "choice", "label": "店舗", "choices": ["shibuya", "umeda"]},
    ],
    "consent": {
        "purpose": "event_updates",
        "wording": "本セミナーに関するご案内をメールでお送りします。",
        "wording_version": "2026-11",
        "channels": ["email"],
    },
    "capacity": 1,
    "waitlist": 1,
    "event_starts_at": "2026-12-05T14:00:00+09:00",
}


def test_forms_create_or_link_customers_through_identity(
    tmp_path: Path, kafka_bootstrap: str, identity_url: str
) -> None:
    settings = _settings(tmp_path, kafka_bootstrap)
    with _client(settings, identity_url) as client:
        bad = client.post("/v1/forms", json={**SEMINAR, "capacity": None}, headers=STAFF)
        assert bad.status_code == 422 and _error_fields(bad) == ["capacity"]
        form = client.post("/v1/forms", json=SEMINAR, headers=STAFF)
        assert form.status_code == 201, form.text
        fid = form.json()["form_id"]
        url = f"/v1/public/forms/{fid}/submissions"
        assert client.get(f"/v1/public/forms/{fid}").json()["capacity"] == 1

        hanako = {
            "submission_id": "web-1",
            "fields": {
                "email": "Hanako@Example.jp",
                "name_kanji": "山田 花子",
                "name_kana": "ヤマダ ハナコ",
                "store": "umeda",
            },
            "consent": {"email": True},
        }
        invalid = client.post(url, json={**hanako, "fields": {**hanako["fields"], "email": "not-an-email"}})
        assert invalid.status_code == 422 and _error_fields(invalid) == ["fields.email"]
        missing = client.post(url, json={**hanako, "fields": {"email": "a@example.jp"}})
        assert missing.status_code == 422 and _error_fields(missing) == ["fields.name_kanji"]
        wrong_consent = client.post(url, json={**hanako, "consent": {"sms": True}})
        assert wrong_consent.status_code == 422 and _error_fields(wrong_consent) == ["consent.sms"]

        first = client.post(url, json=hanako)
        assert first.status_code == 201, first.text
        result = first.json()
        assert result["registration"] == "confirmed"
        # the public answer does not tell whether the person was known; staff can read it
        assert "customer_id" not in result and "outcome" not in result
        staff_view = client.get(f"/v1/forms/{fid}/submissions/{result['submission_id']}", headers=READER)
        assert staff_view.status_code == 200
        assert staff_view.json()["outcome"] == "created"
        result["customer_id"] = staff_view.json()["customer_id"]
        assert result["consent"] == {
            "purpose": "event_updates",
            "wording_version": "2026-11",
            "channels": {"email": True},
        }
        retry = client.post(url, json=hanako)
        assert retry.status_code == 200
        assert retry.json()["submission_id"] == result["submission_id"]

        taro = {
            "fields": {"email": "taro@example.jp", "name_kanji": "鈴木 太郎"},
            "consent": {"email": False},
        }
        second = client.post(url, json=taro)
        assert second.status_code == 201, second.text
        assert (second.json()["registration"], second.json()["waitlist_position"]) == ("waitlisted", 1)
        assert (
            client.post(url, json=taro).status_code == 200
        )  # no key: the same person is the same submission
        full = client.post(url, json={"fields": {"email": "jiro@example.jp", "name_kanji": "佐藤 次郎"}})
        assert full.status_code == 409 and full.json()["error"]["code"] == "event_full"
        # refused before identity was asked: jiro was not registered as a customer
        found = httpx.post(
            f"{identity_url}/customers/search",
            json={"q": "jiro@example.jp", "kind": "email"},
            headers={"X-API-Key": "dev-admin-key"},
        )
        assert found.status_code == 200 and found.json() == []
        assert client.post(url, json=hanako).status_code == 200  # a retry still answers, full or not

        cancelled = client.delete(f"/v1/forms/{fid}/registrations/{result['submission_id']}", headers=STAFF)
        assert cancelled.status_code == 200
        assert (cancelled.json()["confirmed"], cancelled.json()["waitlisted"]) == (1, 0)

        # the same person through a sign-up form: identity links to the same customer
        signup = client.post(
            "/v1/forms",
            json={
                "kind": "signup",
                "title": "会員登録",
                "fields": [
                    {"id": "email", "kind": "email", "label": "メール", "required": True},
                    {"id": "name_kana", "kind": "name_kana", "label": "フリガナ"},
                    {"id": "newsletter", "kind": "boolean", "label": "ニュースレター"},
                ],
                "consent": {
                    "purpose": "marketing",
                    "wording": "新商品やセールのご案内を受け取る",
                    "wording_version": "v3",
                    "channels": ["email", "sms"],
                },
            },
            headers=STAFF,
        ).json()
        linked = client.post(
            f"/v1/public/forms/{signup['form_id']}/submissions",
            json={
                "fields": {"email": "hanako@example.jp", "name_kana": "やまだ はなこ", "newsletter": True},
                "consent": {"email": True, "sms": False},
            },
        )
        assert linked.status_code == 201, linked.text
        linked_view = client.get(
            f"/v1/forms/{signup['form_id']}/submissions/{linked.json()['submission_id']}", headers=READER
        ).json()
        assert linked_view["customer_id"] == result["customer_id"]
        assert linked_view["outcome"] != "created"
        assert (
            client.get(
                f"/v1/forms/{fid}/submissions/{linked.json()['submission_id']}", headers=READER
            ).status_code
            == 404
        )

        # a public form's consent is granted only once confirmed (double opt-in:
        # test_public_forms.py); the link could not even be mailed here (no SMTP server)
        assert first.json()["confirmation"] == {"email": "unsent"}
        profile = httpx.get(
            f"{identity_url}/customers/{result['customer_id']}", headers={"X-API-Key": "dev-admin-key"}
        ).json()
        assert "email" not in profile["consents"]
        assert "sms" not in profile["consents"]  # left unticked: nothing given, nothing withdrawn
        assert profile["channel"] == "form"

        closed = client.post(f"/v1/forms/{fid}/close", headers=STAFF)
        assert closed.json()["status"] == "closed"
        late = client.post(url, json={"fields": {"email": "x@example.jp", "name_kanji": "x"}})
        assert late.status_code == 409 and late.json()["error"]["code"] == "form_closed"

    events = _relay(settings, expect=3 + 2 + 2)  # 3 submissions, 2 registrations, cancel + promote
    kinds = sorted(e.event_type for _, e in events)
    assert kinds == sorted(
        ["form.submitted"] * 3 + ["form.registered"] * 2 + ["form.registration_changed"] * 2
    )
    indexer = BlindIndexer(settings.blind_index_key_bytes)
    email = blind_identifier(indexer, IdentifierKind.EMAIL, "hanako@example.jp")
    submitted = [e for _, e in events if e.event_type == "form.submitted"]
    hanakos = [e for e in submitted if e.customer_key == result["customer_id"]]
    assert len(hanakos) == 2 and all(e.identifiers == (email,) for e in hanakos)
    marketing = next(e for e in hanakos if e.payload.consent.purpose == "marketing")
    assert (marketing.payload.consent.email, marketing.payload.consent.sms) == (True, False)
    assert marketing.payload.fields == {"newsletter": True}
    changes = sorted(
        (e.payload.status, e.payload.reason) for _, e in events if e.event_type == "form.registration_changed"
    )
    assert changes == [("cancelled", "cancelled"), ("confirmed", "promoted_from_waitlist")]
    raw_all = b"".join(raw for raw, _ in events)
    assert b"hanako@example.jp" not in raw_all.lower() and "山田".encode() not in raw_all


def test_form_submissions_when_identity_is_down_and_the_rate_limit(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = _settings(tmp_path, kafka_bootstrap)
    with _client(settings, identity_url=f"http://127.0.0.1:{_free_port()}", rate=2) as client:
        fid = client.post("/v1/forms", json={**SEMINAR, "capacity": 10}, headers=STAFF).json()["form_id"]
        body = {"submission_id": "s-1", "fields": {"email": "a@example.jp", "name_kanji": "a"}}
        down = client.post(f"/v1/public/forms/{fid}/submissions", json=body)
        assert down.status_code == 503 and down.headers["Retry-After"]
        assert client.get(f"/v1/forms/{fid}", headers=READER).json()["confirmed"] == 0  # nothing half-written
        assert client.post(f"/v1/public/forms/{fid}/submissions", json=body).status_code == 503
        limited = client.post(f"/v1/public/forms/{fid}/submissions", json=body)
        assert limited.status_code == 429
    assert orjson.loads(limited.content)["error"]["code"] == "rate_limited"


def test_a_membership_application_enrols_a_member_identity_links(
    tmp_path: Path, kafka_bootstrap: str, identity_url: str
) -> None:
    settings = _settings(tmp_path, kafka_bootstrap)
    application = {
        "kind": "membership",
        "title": "会員登録",
        "fields": [
            {"id": "email", "kind": "email", "label": "メール", "required": True},
            {"id": "name_kanji", "kind": "name_kanji", "label": "お名前", "required": True},
            {"id": "birthday", "kind": "birthday", "label": "生年月日"},
        ],
        "consent": {
            "purpose": "marketing",
            "wording": "会員特典のご案内",
            "wording_version": "v1",
            "channels": ["email"],
        },
    }
    with _client(settings, identity_url) as client:
        bad = client.post(
            "/v1/forms",
            json={
                **application,
                "fields": [*application["fields"], {"id": "member_no", "kind": "member_no", "label": "No"}],
            },
            headers=STAFF,
        )
        assert bad.status_code == 422 and _error_fields(bad) == ["fields"]
        fid = client.post("/v1/forms", json=application, headers=STAFF).json()["form_id"]
        body = {
            "submission_id": "app-1",
            "fields": {"email": "kenji@example.jp", "name_kanji": "田中 健二", "birthday": "1990-07-15"},
            "consent": {"email": True},
        }
        first = client.post(f"/v1/public/forms/{fid}/submissions", json=body)
        assert first.status_code == 201, first.text
        number = first.json()["member_no"]
        assert len(number) == 13 and number.isdigit()
        member = client.post("/v1/members/lookup", json={"member_no": number}, headers=READER).json()
        assert member["channel"] == "form" and member["rank"] == "regular"
        # a retry with the client's key gives the same number again. Without a key the
        # submission is keyed by the e-mail: its first answer shows the number it issued,
        # a retry does not (whoever knows an e-mail must not learn a member number)
        again = client.post(f"/v1/public/forms/{fid}/submissions", json=body)
        assert (again.status_code, again.json()["member_no"]) == (200, number)
        unkeyed = {k: v for k, v in body.items() if k != "submission_id"}
        assert (
            client.post(f"/v1/public/forms/{fid}/submissions", json=unkeyed).json()["member_no"] is not None
        )
        assert client.post(f"/v1/public/forms/{fid}/submissions", json=unkeyed).json()["member_no"] is None
        view = client.get(
            f"/v1/forms/{fid}/submissions/{first.json()['submission_id']}", headers=READER
        ).json()
        # identity holds the new member number with the person
        identifiers = httpx.get(
            f"{identity_url}/customers/{view['customer_id']}/identifiers",
            headers={"X-API-Key": "dev-admin-key"},
        ).json()
        assert {"member_no", "email"} <= {i["kind"] for i in identifiers}
        assert view["member_key"] in {i["hash"] for i in identifiers}

    events = [e for _, e in _relay(settings, expect=2) if e.event_type == "form.submitted"]
    keys = {e.payload.member_key for e in events}
    assert view["member_key"] in keys
    first_event = next(e for e in events if e.payload.member_key == view["member_key"])
    assert {i.kind.value for i in first_event.identifiers} == {"email", "member_no"}
