"""Ingestion → Kafka → membership worker → member, with identity's profile topic in between."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crm_contracts.envelope import IdentifierKind
from crm_contracts.events.identity import ProfileSnapshot, ProfileSnapshotPayload
from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import blind_identifier
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from engagement.entrypoints.api import create
from engagement.membership import luhn_digit
from engagement.programme import InvalidProgramme
from engagement.worker import run_worker

pytestmark = pytest.mark.integration
POS = {"X-API-Key": "pos"}
SHOP = {"X-API-Key": "shop"}
STAFF = {"X-API-Key": "staff"}
# The programme counts the 12 months up to the API's and the worker's (real) clock.
ORDERED = datetime.now(UTC) - timedelta(days=2)
RETURNED = ORDERED + timedelta(days=1)


def order(kind: str, order_id: str, total: int, identifiers: dict[str, str]) -> dict:
    payload: dict = {
        "order_id": order_id,
        "lines": [{"line_no": 1, "sku": "SKU-1", "category": "tops", "quantity": 1, "unit_price": total}],
        "total": total,
    }
    if kind == "store_order":
        payload["store_id"] = "S001"
    return {
        "type": kind,
        "occurred_at": ORDERED.isoformat(),
        "identifiers": identifiers,
        "payload": payload,
    }


def wait_for(check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def test_store_and_online_purchases_of_one_person_count_for_one_member(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        api_keys={
            "pos": ["engagement:ingest", "source:pos"],
            "shop": ["engagement:ingest", "source:webshop"],
            "staff": ["engagement:read", "engagement:write"],
        },
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    worker = threading.Thread(target=loop.run_until_complete, args=(run_worker(settings, stop),), daemon=True)
    worker.start()
    try:
        with TestClient(create(settings)) as client:
            enrolled = client.post(
                "/v1/members", json={"member_no": "M0001", "channel": "store"}, headers=STAFF
            )
            assert enrolled.status_code == 201, enrolled.text
            assert (
                client.post(
                    "/v1/members", json={"member_no": "m0001", "channel": "online"}, headers=STAFF
                ).status_code
                == 409
            )
            store = [order("store_order", "S001-R1-1", 20_000, {"member_no": "M0001"})]
            assert client.post("/v1/batch", json={"events": store}, headers=POS).status_code == 202
            online = order("online_order", "W-77", 15_000, {"email": "Hanako@Example.jp"})
            assert client.post("/v1/events", json=online, headers=SHOP).status_code == 202

            def member() -> dict:
                response = client.post("/v1/members/lookup", json={"member_no": "M0001"}, headers=STAFF)
                assert response.status_code == 200, response.text
                return response.json()

            wait_for(lambda: member()["spend_12m"] == 20_000)
            # identity links the e-mail to the card's customer: the waiting online order counts
            indexer = BlindIndexer(settings.blind_index_key_bytes)
            card = blind_identifier(indexer, IdentifierKind.MEMBER_NO, "M0001")
            email = blind_identifier(indexer, IdentifierKind.EMAIL, "hanako@example.jp")
            customer = uuid.uuid4()
            snapshot = ProfileSnapshot(
                occurred_at=ORDERED,
                producer="identity.resolver",
                customer_key=str(customer),
                identifiers=(card, email),
                payload=ProfileSnapshotPayload(customer_id=customer, identifiers=(card, email)),
            )

            async def publish() -> None:
                async with EventProducer(
                    kafka_bootstrap, client_id="t", topic_prefix=settings.kafka_topic_prefix
                ) as p:
                    await p.publish(snapshot)

            asyncio.run(publish())
            wait_for(lambda: member()["spend_12m"] == 35_000)
            view = member()
            assert view["rank"] == "silver"
            assert view["points"] == 350
            assert view["next_rank"] == {"rank": "gold", "spend_needed": 65_000, "visits_needed": 11}

            # a duplicate batch changes nothing; a return reverses points and spend
            assert (
                client.post("/v1/batch", json={"events": store}, headers=POS).json()["results"][0]["status"]
                == "duplicate"
            )
            ret = {
                "type": "return",
                "occurred_at": RETURNED.isoformat(),
                "payload": {
                    "return_id": "RET-1",
                    "original_order_id": "S001-R1-1",
                    "channel": "store",
                    "store_id": "S001",
                    "lines": [
                        {"line_no": 1, "sku": "SKU-1", "category": "tops", "quantity": 1, "amount": 20_000}
                    ],
                    "refund_total": 20_000,
                },
            }
            assert client.post("/v1/events", json=ret, headers=POS).status_code == 202
            wait_for(lambda: member()["spend_12m"] == 15_000)
            view = member()
            assert (view["points"], view["rank"]) == (150, "regular")

            spend = {"member_no": "M0001", "redemption_id": "r1", "points": 100}
            spent = client.post("/v1/members/redemptions", json=spend, headers=STAFF)
            assert spent.status_code == 200 and spent.json()["points"] == 50
            too_much = client.post(
                "/v1/members/redemptions", json={**spend, "redemption_id": "r2"}, headers=STAFF
            )
            assert too_much.status_code == 409
            unknown = client.post("/v1/members/lookup", json={"member_no": "M9999"}, headers=STAFF)
            assert unknown.status_code == 404
            assert (
                client.post("/v1/members/lookup", json={"member_no": "M0001"}, headers=POS).status_code == 403
            )  # ingestion keys are write-only
    finally:
        loop.call_soon_threadsafe(stop.set)
        worker.join(30)
    _check_membership_topic(settings)


def _check_membership_topic(settings: Settings) -> None:
    """The relay publishes the programme's events for analytics and identity."""
    from crm_contracts.registry import decode
    from crm_contracts.topics import ENGAGEMENT_MEMBERSHIP
    from crm_platform.testing import read_topic
    from engagement.bootstrap import build_membership, build_relay

    app = build_membership(settings)

    async def relay() -> None:
        async with EventProducer(
            settings.kafka_bootstrap, client_id="relay", topic_prefix=settings.kafka_topic_prefix
        ) as producer:
            await build_relay(settings, app, producer).relay_available()

    try:
        asyncio.run(relay())
    finally:
        app.close()
    topic = settings.kafka_topic_prefix + ENGAGEMENT_MEMBERSHIP.name
    events = [
        decode(r.value) for r in asyncio.run(read_topic(settings.kafka_bootstrap, topic, 7, timeout=20))
    ]
    card = events[0].identifiers[0]
    assert all(e.identifiers == (card,) and e.customer_key == card.hash for e in events)
    summary = [
        (
            e.event_type,
            getattr(e.payload, "reason", None) if e.event_type == "member.points_changed" else None,
        )
        for e in events
    ]
    assert summary[0] == ("member.enrolled", None)
    points = [e.payload.points for e in events if e.event_type == "member.points_changed"]  # type: ignore[attr-defined]
    assert points == [200, 150, -200, -100]
    ranks = [e.payload.rank for e in events if e.event_type == "member.rank_changed"]  # type: ignore[attr-defined]
    assert ranks == ["silver", "regular"]


def test_the_programme_issues_member_numbers_and_follows_its_own_file(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    programme = tmp_path / "programme.json"
    programme.write_text(
        '{"ranks": [{"name": "bronze", "min_spend": 0, "points_per_100": 1},'
        ' {"name": "black", "min_spend": 50000, "points_per_100": 4, "discount_rate": 0.12}],'
        ' "window_days": 180}'
    )
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        api_keys={"staff": ["engagement:read", "engagement:write"]},
        membership_programme=programme,
    )
    with TestClient(create(settings)) as client:
        issued = client.post("/v1/members", json={"channel": "form", "birthday_month": 4}, headers=STAFF)
        assert issued.status_code == 201, issued.text
        number = issued.json()["member_no"]
        assert len(number) == 13 and number.isdigit()
        assert luhn_digit(number[:-1]) == number[-1]
        assert issued.json()["rank"] == "bronze"
        again = client.post("/v1/members", json={"channel": "form"}, headers=STAFF).json()["member_no"]
        assert again != number  # each enrolment its own number

        view = client.post("/v1/members/lookup", json={"member_no": number}, headers=STAFF).json()
        assert view["member_no"] is None  # the number is handed out once, at enrolment
        assert view["next_rank"] == {"rank": "black", "spend_needed": 50_000, "visits_needed": None}
        typo = number[:-1] + str((int(number[-1]) + 1) % 10)
        assert client.post("/v1/members/lookup", json={"member_no": typo}, headers=STAFF).status_code == 404

    settings_bad = settings.model_copy(update={"membership_programme": tmp_path / "absent.json"})
    with pytest.raises(InvalidProgramme, match=r"absent\.json"), TestClient(create(settings_bad)):
        pass


def test_member_numbers_travel_in_the_body_and_the_old_paths_are_gone(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """A member number never needs to be in a URL (access logs, traces): reads and
    redemptions take it in the body; the former routes answer 410 Gone without looking
    the number up (an enrolled member's number gets the same answer as an unknown one)."""
    settings = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        api_keys={"staff": ["engagement:read", "engagement:write"]},
    )
    with TestClient(create(settings)) as client:
        enrolled = client.post("/v1/members", json={"member_no": "M0042", "channel": "store"}, headers=STAFF)
        assert enrolled.status_code == 201, enrolled.text
        found = client.post("/v1/members/lookup", json={"member_no": "m-0042"}, headers=STAFF)
        assert found.status_code == 200 and found.json()["member_key"] == enrolled.json()["member_key"]
        assert found.json()["points"] == 0
        redeemed = client.post(
            "/v1/members/redemptions",
            json={"member_no": "M0042", "redemption_id": "r1", "points": 1},
            headers=STAFF,
        )
        assert redeemed.status_code == 409 and redeemed.json()["error"]["code"] == "not_enough_points"

        for number in ("M0042", "M9999"):
            gone = client.get(f"/v1/members/{number}", headers=STAFF)
            assert gone.status_code == 410, gone.text
            assert gone.json()["error"]["code"] == "gone"
            assert "/v1/members/lookup" in gone.json()["error"]["message"]
            assert number not in gone.text
            old_redeem = client.post(
                f"/v1/members/{number}/redemptions", json={"redemption_id": "r", "points": 1}, headers=STAFF
            )
            assert old_redeem.status_code == 410
        paths = client.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith("/v1/members/{")]
        assert {"/v1/members/lookup", "/v1/members/redemptions"} <= set(paths)

        missing = client.post("/v1/members/lookup", json={}, headers=STAFF)
        assert missing.status_code == 422
        assert missing.json()["error"]["fields"][0]["field"] == "body.member_no"
        bad = client.post("/v1/members/lookup", json={"member_no": "@@@"}, headers=STAFF)
        assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "body.member_no"
