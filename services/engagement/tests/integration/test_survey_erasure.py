"""Survey free text is sealed with a data key per response and shredded when identity
publishes ``customer.erased``: not in clear in the store, readable by staff while the
customer exists, unreadable after the erasure (through real Kafka and the eraser
process's code), while the scores still count in analytics' survey results (analytics'
real API in a process of its own, its embedded sink reading the relayed events)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from crm_contracts.events.identity import (
    CustomerErased,
    CustomerErasedPayload,
    CustomersMerged,
    CustomersMergedPayload,
    LinkEvidence,
    MergeUndone,
    MergeUndonePayload,
)
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from engagement.domain.survey import Question
from engagement.entrypoints.api import create
from engagement.eraser import apply, run_eraser
from engagement.survey_bootstrap import build_survey_relay, build_surveys
from engagement.surveys import SurveySettings

from .conftest import Served, service_api

pytestmark = pytest.mark.integration
STAFF = {"X-API-Key": "staff"}
READER = {"X-API-Key": "reader"}
STEWARD = {"X-API-Key": "steward"}
SURVEY = {
    "title": "ご購入後アンケート",
    "questions": [
        {"id": "recommend", "kind": "nps", "text": "友人に薦めますか?"},
        {"id": "satisfaction", "kind": "csat", "text": "満足度"},
        {"id": "comment", "kind": "free_text", "text": "ご意見", "required": False, "max_length": 200},
    ],
}
# What people really write in a comment box: a name and a phone number.
SECRET_A = "山田太郎です。090-1234-5678 に電話ください"
SECRET_B = "佐藤花子 sato.hanako@example.jp"


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    return Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=prefix,
        api_keys={
            "staff": ["engagement:read", "engagement:write"],
            "reader": ["engagement:read"],
            "steward": ["engagement:read", "engagement:pii"],
        },
    )


@pytest.fixture
def analytics(tmp_path: Path, settings: Settings) -> Iterator[Served]:
    yield from service_api(
        "analytics",
        tmp_path,
        CRM_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        CRM_KAFKA_TOPIC_PREFIX=settings.kafka_topic_prefix,
    )


def _client(settings: Settings) -> TestClient:
    app = create(settings)
    app.state.survey_settings = SurveySettings(identity_url="http://127.0.0.1:9")
    return TestClient(app)


def _store_bytes(settings: Settings) -> bytes:
    """Every byte engagement keeps on disk (store files, their WAL, the key tables)."""
    return b"".join(
        p.read_bytes() for p in sorted((settings.var_dir / "engagement").rglob("*")) if p.is_file()
    )


def _comment(response: dict[str, object]) -> dict[str, object]:
    answers = response["answers"]
    assert isinstance(answers, list)
    return next(a for a in answers if a["question_id"] == "comment")


def _publish_erasure(settings: Settings, customer_id: str) -> CustomerErased:
    erased = CustomerErased(
        occurred_at=datetime.now(UTC),
        producer="identity.relay",
        customer_key=customer_id,
        payload=CustomerErasedPayload(customer_id=uuid.UUID(customer_id), requested_at=datetime.now(UTC)),
    )

    async def publish() -> None:
        async with EventProducer(
            settings.kafka_bootstrap, client_id="test", topic_prefix=settings.kafka_topic_prefix
        ) as producer:
            await producer.publish(erased)

    asyncio.run(publish())
    return erased


def _relay(settings: Settings) -> None:
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


def test_free_text_is_sealed_readable_then_shredded_by_customer_erased(
    settings: Settings, analytics: Served
) -> None:
    erased_customer, kept_customer = str(uuid.uuid4()), str(uuid.uuid4())
    with _client(settings) as client:
        sid = client.post("/v1/surveys", json=SURVEY, headers=STAFF).json()["survey_id"]
        invited = client.post(
            f"/v1/surveys/{sid}/invitations",
            json={"customer_ids": [erased_customer, kept_customer]},
            headers=STAFF,
        ).json()
        ids = {i["customer_id"]: i["invitation_id"] for i in invited["invitations"]}
        paths = {
            i["customer_id"]: i["survey_url"].removeprefix("http://127.0.0.1:8002")
            for i in invited["invitations"]
        }
        answer_a = {"recommend": 10, "satisfaction": 5, "comment": SECRET_A}
        answer_b = {"recommend": 3, "satisfaction": 2, "comment": SECRET_B}
        assert client.post(f"{paths[erased_customer]}/answers", json={"answers": answer_a}).status_code == 201
        assert client.post(f"{paths[kept_customer]}/answers", json={"answers": answer_b}).status_code == 201
        # a retry is still recognised (the sealed text is opened and compared)
        assert client.post(f"{paths[erased_customer]}/answers", json={"answers": answer_a}).status_code == 200
        changed = {**answer_a, "comment": SECRET_A + "!"}
        assert client.post(f"{paths[erased_customer]}/answers", json={"answers": changed}).status_code == 409

        # the text is nowhere on disk in clear, and its length is (for analytics)
        disk = _store_bytes(settings)
        assert SECRET_A.encode() not in disk and SECRET_B.encode() not in disk
        assert "山田太郎".encode() not in disk and b"090-1234-5678" not in disk

        # a read key sees the scores, never the text (personal data: engagement:pii)
        withheld = client.get(f"/v1/surveys/{sid}/responses/{ids[erased_customer]}", headers=READER)
        assert withheld.status_code == 200, withheld.text
        assert SECRET_A not in withheld.text
        assert _comment(withheld.json()) == {
            "question_id": "comment",
            "kind": "free_text",
            "value": None,
            "erased": False,
            "withheld": True,
        }
        assert {a["question_id"]: a["value"] for a in withheld.json()["answers"]}["recommend"] == 10
        # a steward reads it back while the customer exists
        read = client.get(f"/v1/surveys/{sid}/responses/{ids[erased_customer]}", headers=STEWARD)
        assert read.status_code == 200, read.text
        assert read.json()["customer_id"] == erased_customer
        assert _comment(read.json()) == {
            "question_id": "comment",
            "kind": "free_text",
            "value": SECRET_A,
            "erased": False,
            "withheld": False,
        }
        scores = {a["question_id"]: a["value"] for a in read.json()["answers"]}
        assert (scores["recommend"], scores["satisfaction"]) == (10, 5)
        assert client.get(f"/v1/surveys/{sid}/responses/{ids[erased_customer]}").status_code == 401
        assert (
            client.get(
                f"/v1/surveys/{uuid.uuid4()}/responses/{ids[erased_customer]}", headers=READER
            ).status_code
            == 404
        )
        assert client.get(f"/v1/surveys/{sid}/responses/{uuid.uuid4()}", headers=READER).status_code == 404

    _relay(settings)
    erasure = _publish_erasure(settings, erased_customer)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    worker = threading.Thread(target=loop.run_until_complete, args=(run_eraser(settings, stop),), daemon=True)
    worker.start()
    surveys = build_surveys(settings)
    try:
        deadline = time.monotonic() + 45
        while True:
            comment = _comment(surveys.read_response(uuid.UUID(ids[erased_customer])))
            if comment["erased"]:
                break
            assert time.monotonic() < deadline, "the eraser did not shred the customer's text"
            time.sleep(0.3)
            surveys.text_keys._cache.clear()  # another process's erasure, seen at once
        assert apply(surveys, erasure) == 0  # idempotent: nothing live is left to erase
    finally:
        loop.call_soon_threadsafe(stop.set)
        worker.join(timeout=15)
        surveys.close()

    with _client(settings) as client:
        gone = client.get(f"/v1/surveys/{sid}/responses/{ids[erased_customer]}", headers=STEWARD).json()
        assert _comment(gone) == {
            "question_id": "comment",
            "kind": "free_text",
            "value": None,
            "erased": True,
            "withheld": False,
        }
        assert {a["question_id"]: a["value"] for a in gone["answers"]}["recommend"] == 10  # the score stays
        kept = client.get(f"/v1/surveys/{sid}/responses/{ids[kept_customer]}", headers=STEWARD).json()
        assert _comment(kept)["value"] == SECRET_B  # another customer's text is untouched

    # the scores still count in analytics' results (relayed before the erasure, untouched by it)
    today = date.today()
    params = {"start": str(today - timedelta(days=2)), "end": str(today + timedelta(days=2))}
    deadline = time.monotonic() + 60
    while True:
        result = httpx.get(
            f"{analytics.url}/v1/surveys/{sid}/results",
            params=params,
            headers={"X-API-Key": "dev-read-key"},
            timeout=10,
        )
        assert result.status_code == 200, result.text
        if result.json()["responses"] == 2:
            break
        assert time.monotonic() < deadline, result.json()
        time.sleep(0.5)
    body = result.json()
    assert body["questions"]["recommend"]["nps"] == 0.0  # one promoter (10), one detractor (3)
    assert body["questions"]["satisfaction"]["average"] == 3.5
    assert body["questions"]["comment"]["avg_length"] == (len(SECRET_A) + len(SECRET_B)) / 2


def test_sealing_and_erasure_on_each_store_kind(store_settings: Settings) -> None:
    """The key store beside the surveys store: SQLite file or PostgreSQL tables."""
    surveys = build_surveys(store_settings)
    t0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
    try:
        survey = surveys.define_survey(
            "NPS",
            [Question("recommend", "nps", "?"), Question("comment", "free_text", "?", required=False)],
            True,
            t0,
        )
        surveys.set_survey_status(survey.id, "open", t0)
        customer = str(uuid.uuid4())
        [invitation] = surveys.invite(survey.id, [customer], "customers", t0)
        surveys.answer_invitation(invitation.token, {"recommend": 9, "comment": SECRET_A}, t0)
        anonymous, _ = surveys.answer_anonymously(
            survey.id, "client-1", {"recommend": 4, "comment": SECRET_B}, t0
        )

        stored = surveys.response(invitation.invitation_id)
        assert stored is not None and SECRET_A not in str(stored.answers)  # sealed in the event
        assert stored.answers["comment"]["key_id"] == f"survey-response-{invitation.invitation_id}"
        assert _comment(surveys.read_response(invitation.invitation_id))["value"] == SECRET_A

        assert surveys.erase_customers([customer]) == 1
        assert surveys.erase_customers([customer]) == 0  # idempotent
        assert _comment(surveys.read_response(invitation.invitation_id)) == {
            "question_id": "comment",
            "kind": "free_text",
            "value": None,
            "erased": True,
        }
        # an anonymous response names nobody: no erasure finds it, its text stays readable
        assert _comment(surveys.read_response(anonymous.id))["value"] == SECRET_B
    finally:
        surveys.close()

    again = build_surveys(store_settings)  # a fresh process: no cache, the tables persist
    try:
        assert _comment(again.read_response(invitation.invitation_id))["erased"] is True
        assert _comment(again.read_response(anonymous.id))["value"] == SECRET_B
    finally:
        again.close()


def _identity_event(kind: str, survivor: str, other: str) -> CustomersMerged | MergeUndone | CustomerErased:
    now = datetime.now(UTC)
    common = {"occurred_at": now, "producer": "identity.relay", "customer_key": survivor}
    if kind == "merged":
        return CustomersMerged(
            **common,
            payload=CustomersMergedPayload(
                merge_id=uuid.uuid4(),
                survivor_id=uuid.UUID(survivor),
                merged_id=uuid.UUID(other),
                evidence=LinkEvidence(rule="exact:email"),
            ),
        )
    if kind == "undone":
        return MergeUndone(
            **common,
            payload=MergeUndonePayload(
                merge_id=uuid.uuid4(),
                survivor_id=uuid.UUID(survivor),
                restored_id=uuid.UUID(other),
                reason="t",
            ),
        )
    return CustomerErased(
        **common, payload=CustomerErasedPayload(customer_id=uuid.UUID(survivor), requested_at=now)
    )


def test_erasing_a_survivor_reaches_the_text_of_the_customers_merged_into_it(
    store_settings: Settings,
) -> None:
    """identity erases the survivor of a merge; the invitation may have named the merged
    id. An undone merge no longer carries the survivor's erasure to the restored one."""
    surveys = build_surveys(store_settings)
    t0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
    try:
        questions = [Question("recommend", "nps", "?"), Question("comment", "free_text", "?")]
        survey = surveys.define_survey("NPS", questions, False, t0)
        surveys.set_survey_status(survey.id, "open", t0)
        survivor, merged, restored = (str(uuid.uuid4()) for _ in range(3))
        invitations = {
            i.customer_key: i for i in surveys.invite(survey.id, [survivor, merged, restored], "c", t0)
        }
        for key, text in ((survivor, "s"), (merged, SECRET_A), (restored, SECRET_B)):
            surveys.answer_invitation(invitations[key].token, {"recommend": 8, "comment": text}, t0)

        assert apply(surveys, _identity_event("merged", survivor, merged)) == 0
        assert apply(surveys, _identity_event("merged", survivor, restored)) == 0
        assert apply(surveys, _identity_event("undone", survivor, restored)) == 0
        assert (
            apply(surveys, _identity_event("erased", survivor, survivor)) == 2
        )  # its own and the merged one's

        def comment(key: str) -> dict[str, object]:
            return _comment(surveys.read_response(invitations[key].invitation_id))

        assert comment(survivor)["erased"] is True and comment(merged)["erased"] is True
        assert comment(restored)["value"] == SECRET_B  # unmerged before the erasure: kept
    finally:
        surveys.close()
