"""The ingestion API against a real Kafka broker."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from crm_contracts.envelope import IdentifierKind
from crm_contracts.registry import decode
from crm_contracts.topics import COMMERCE_INTERACTION, COMMERCE_ORDER
from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import blind_identifier
from crm_platform.settings import Settings
from crm_platform.testing import end_offsets, read_topic
from engagement.entrypoints.api import create

pytestmark = pytest.mark.integration

POS = {"X-API-Key": "pos-key"}
SHOP = {"X-API-Key": "shop-key"}
APP = {"X-API-Key": "app-key"}
S1 = {"X-API-Key": "s1-key"}
S2 = {"X-API-Key": "s2-key"}
HQ = {"X-API-Key": "hq-key"}
KEYS = {
    "pos-key": ["engagement:ingest", "source:pos"],
    "shop-key": ["engagement:ingest", "source:webshop"],
    "app-key": ["engagement:ingest", "source:app"],
    "s1-key": ["engagement:ingest", "source:pos", "store:S001"],
    "s2-key": ["engagement:ingest", "source:pos", "store:S002"],
    # A source of this deployment's own (CRM_INGEST_SOURCES), allowed every type.
    "hq-key": ["engagement:ingest", "source:hq"],
    "kiosk-s1-key": ["engagement:ingest", "source:hq", "store:S001"],
    "staff-key": ["engagement:read", "engagement:write"],
}
SOURCES = {"hq": ["store_order", "online_order", "return", "interaction"]}


def make_settings(tmp_path: Path, bootstrap: str) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        api_keys=KEYS,
        ingest_sources=SOURCES,
    )


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    from crm_platform.kafka import ensure_topics

    s = make_settings(tmp_path, kafka_bootstrap)
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=s.kafka_topic_prefix))
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create(settings)) as c:
        yield c


def store_order(order_id: str, *, member: str | None = "M0001", quantity: int = 2, **extra: Any) -> dict:
    lines = [
        {"line_no": 1, "sku": "TS-001", "category": "tops", "quantity": quantity, "unit_price": 1990},
        {
            "line_no": 2,
            "sku": "SK-002",
            "category": "bottoms",
            "quantity": 1,
            "unit_price": 4990,
            "discount": 500,
        },
    ]
    total = quantity * 1990 + 4990 - 500
    return {
        "type": "store_order",
        "occurred_at": "2026-11-20T10:15:00+09:00",
        "identifiers": {"member_no": member} if member else {},
        "payload": {
            "order_id": order_id,
            "store_id": "S001",
            "register_id": "R2",
            "lines": lines,
            "total": total,
            "tax": total * 10 // 110,
            "payment_method": "credit_card",
            **extra,
        },
    }


def online_order(order_id: str, email: str) -> dict:
    return {
        "type": "online_order",
        "occurred_at": "2026-11-21T21:03:00+09:00",
        "identifiers": {"email": email, "ec_account": "shop-123"},
        "payload": {
            "order_id": order_id,
            "lines": [{"line_no": 1, "sku": "CT-9", "category": "outer", "quantity": 1, "unit_price": 12900}],
            "shipping": 550,
            "total": 13450,
            "shipping_prefecture": "東京都",
            "coupon_code": "WELCOME",
        },
    }


def a_return(return_id: str, order_id: str, quantity: int = 1, line_no: int = 1, sku: str = "TS-001") -> dict:
    return {
        "type": "return",
        "occurred_at": "2026-11-22T11:00:00+09:00",
        "payload": {
            "return_id": return_id,
            "original_order_id": order_id,
            "channel": "store",
            "store_id": "S001",
            "lines": [
                {
                    "line_no": line_no,
                    "sku": sku,
                    "category": "tops",
                    "quantity": quantity,
                    "amount": 1990 * quantity,
                }
            ],
            "refund_total": 1990 * quantity,
            "reason": "size",
        },
    }


def topic_records(settings: Settings, topic: str, expect: int) -> list[Any]:
    return asyncio.run(
        read_topic(settings.kafka_bootstrap, settings.kafka_topic_prefix + topic, expect, timeout=15)
    )


def topic_size(settings: Settings, topic: str) -> int:
    ends = asyncio.run(end_offsets(settings.kafka_bootstrap, settings.kafka_topic_prefix + topic))
    return sum(ends.values())


def test_a_store_purchase_goes_to_kafka_with_blind_identifiers_only(
    client: TestClient, settings: Settings
) -> None:
    response = client.post("/v1/events", json=store_order("S001-R2-000001", member="m-0001 "), headers=POS)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    [record] = topic_records(settings, COMMERCE_ORDER.name, 1)
    assert b"m-0001" not in record.value and b"M-0001" not in record.value  # no raw identifier on Kafka
    event = decode(record.value)
    assert str(event.event_id) == body["event_id"]
    member = blind_identifier(BlindIndexer(settings.blind_index_key_bytes), IdentifierKind.MEMBER_NO, "M0001")
    assert event.identifiers == (member,)  # "m-0001 " normalises like "M0001"
    assert event.customer_key == member.hash
    assert event.occurred_at.isoformat() == "2026-11-20T01:15:00+00:00"


def test_the_same_email_typed_at_a_counter_and_online_is_one_key(
    client: TestClient, settings: Settings
) -> None:
    counter = store_order("S001-R1-000777", member=None)
    counter["identifiers"] = {"email": " Taro.Yamada@Example.JP "}
    assert client.post("/v1/events", json=counter, headers=POS).status_code == 202
    assert (
        client.post(
            "/v1/events", json=online_order("W-1001", "taro.yamada@example.jp"), headers=SHOP
        ).status_code
        == 202
    )
    records = topic_records(settings, COMMERCE_ORDER.name, 2)
    emails = [
        {i.hash for i in decode(r.value).identifiers if i.kind is IdentifierKind.EMAIL} for r in records
    ]
    assert len(emails) == 2 and emails[0] == emails[1] and len(emails[0]) == 1


def test_a_rejected_event_in_a_batch_is_reported_and_the_rest_accepted(
    client: TestClient, settings: Settings
) -> None:
    bad = store_order("S001-R2-000003")
    bad["payload"]["lines"][0]["quantity"] = -1
    interaction = {
        "type": "interaction",
        "occurred_at": "2026-11-21T20:00:00+09:00",
        "identifiers": {"device": "ios-abc"},
        "payload": {"kind": "product_viewed", "channel": "app", "sku": "CT-9", "session_id": "s1"},
    }
    events = [store_order("S001-R2-000002"), bad, interaction, online_order("W-1002", "a@example.jp")]
    response = client.post("/v1/batch", json={"events": events}, headers=HQ)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 1)
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "rejected", "accepted", "accepted"]
    [error] = body["results"][1]["errors"]
    assert error["field"] == "payload.lines.0.quantity"
    assert len(topic_records(settings, COMMERCE_ORDER.name, 2)) == 2
    assert len(topic_records(settings, COMMERCE_INTERACTION.name, 1)) == 1


def test_an_interaction_resent_without_an_event_id_keeps_its_id(client: TestClient) -> None:
    view = {
        "type": "interaction",
        "occurred_at": "2026-11-21T20:00:00.250+09:00",
        "identifiers": {"device": "ios-abc"},
        "payload": {"kind": "product_viewed", "channel": "app", "sku": "CT-9", "session_id": "s1"},
    }
    first = client.post("/v1/events", json=view, headers=SHOP).json()["event_id"]
    again = client.post("/v1/events", json=view, headers=SHOP).json()["event_id"]
    assert first == again  # a retry after a timeout: the consumers see one view
    other_sku = {**view, "payload": {**view["payload"], "sku": "CT-10"}}
    later = {**view, "occurred_at": "2026-11-21T20:00:00.251+09:00"}
    anonymous = {k: v for k, v in view.items() if k != "identifiers"}
    ids = {
        client.post("/v1/events", json=e, headers=SHOP).json()["event_id"]
        for e in (other_sku, later, anonymous)
    }
    assert len(ids | {first}) == 4  # anything else that differs is another fact
    given = {**view, "event_id": str(uuid.uuid4())}
    assert client.post("/v1/events", json=given, headers=SHOP).json()["event_id"] == given["event_id"]


def test_a_duplicate_batch_changes_nothing(client: TestClient, settings: Settings) -> None:
    events = [store_order(f"S001-R3-{n:06d}") for n in range(5)]
    first = client.post("/v1/batch", json={"events": events}, headers=POS).json()
    assert [r["status"] for r in first["results"]] == ["accepted"] * 5
    before = topic_size(settings, COMMERCE_ORDER.name)
    again = client.post("/v1/batch", json={"events": events}, headers=POS).json()
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 5
    assert [r["event_id"] for r in again["results"]] == [r["event_id"] for r in first["results"]]
    assert topic_size(settings, COMMERCE_ORDER.name) == before
    # The same order id sent as a different fact is a conflict, not a silent overwrite.
    changed = store_order("S001-R3-000000", quantity=3)
    changed["event_id"] = str(uuid.uuid4())
    response = client.post("/v1/events", json=changed, headers=POS)
    assert response.status_code == 409
    assert response.json()["error"]["fields"][0]["field"] == "payload.order_id"


def test_returns_must_name_a_known_order_and_cannot_exceed_it(client: TestClient, settings: Settings) -> None:
    unknown = client.post("/v1/events", json=a_return("RET-1", "S001-R9-999999"), headers=POS)
    assert unknown.status_code == 422
    assert unknown.json()["error"]["fields"][0]["field"] == "payload.original_order_id"
    order = client.post("/v1/events", json=store_order("S001-R2-000010", quantity=2), headers=POS)
    assert order.status_code == 202
    too_many = client.post("/v1/events", json=a_return("RET-2", "S001-R2-000010", quantity=3), headers=POS)
    assert too_many.status_code == 422
    assert too_many.json()["error"]["fields"][0]["field"] == "payload.lines.0.quantity"
    ok = client.post("/v1/events", json=a_return("RET-3", "S001-R2-000010", quantity=2), headers=POS)
    assert ok.status_code == 202, ok.text
    again = client.post("/v1/events", json=a_return("RET-4", "S001-R2-000010", quantity=1), headers=POS)
    assert again.status_code == 422  # everything of line 1 is back already
    records = topic_records(settings, COMMERCE_ORDER.name, 2)
    by_type = {decode(r.value).event_type: decode(r.value) for r in records}
    # The return travels on the order's partition key: one customer's facts stay in order.
    assert by_type["order.returned"].customer_key == by_type["order.store_completed"].customer_key


def test_a_return_and_its_order_in_one_batch(client: TestClient) -> None:
    events = [store_order("S001-R2-000020"), a_return("RET-20", "S001-R2-000020")]
    body = client.post("/v1/batch", json={"events": events}, headers=POS).json()
    assert [r["status"] for r in body["results"]] == ["accepted", "accepted"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e["payload"].update(currency="USD"), "payload.currency"),
        (lambda e: e["payload"].update(total=1), "payload.total"),
        (
            lambda e: e["payload"]["lines"][0].update(unit_price=19.9),
            "payload.lines.0.unit_price",
        ),
        (lambda e: e.update(occurred_at="2026-11-20T10:15:00"), "occurred_at"),
        (lambda e: e["identifiers"].update(phone="12"), "identifiers.phone"),
        (lambda e: e["identifiers"].update(passport="X"), "identifiers.passport"),
        (lambda e: e.update(type="telepathy"), "type"),
    ],
)
def test_bad_input_names_the_field(client: TestClient, mutate: Any, field: str) -> None:
    event = store_order("S001-R2-000030")
    mutate(event)
    response = client.post("/v1/events", json=event, headers=POS)
    assert response.status_code == 422, response.text
    fields = [f["field"] for f in response.json()["error"]["fields"]]
    assert field in fields, fields


def test_malformed_json_and_size_limits(client: TestClient) -> None:
    response = client.post(
        "/v1/events", content=b'{"type": "store_order",', headers={**POS, "content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"].startswith("body")
    big = store_order("S001-R2-000040")
    big["payload"]["staff_id"] = "x" * 64
    big["padding"] = "y" * 70_000
    assert client.post("/v1/events", json=big, headers=POS).status_code == 413
    many = {"events": [{"type": "interaction"}] * 1001}
    assert client.post("/v1/batch", json=many, headers=POS).status_code == 413


def test_ingestion_keys_are_write_only_and_bound_to_their_stores(client: TestClient) -> None:
    event = store_order("S002-R1-000001")
    event["payload"]["store_id"] = "S002"
    assert client.post("/v1/events", json=event).status_code == 401
    assert client.post("/v1/events", json=event, headers={"X-API-Key": "staff-key"}).status_code == 403
    other_store = client.post("/v1/events", json=event, headers={"X-API-Key": "s1-key"})
    assert other_store.status_code == 403
    assert other_store.json()["error"]["fields"][0]["field"] == "payload.store_id"
    own = store_order("S001-R1-000002")
    assert client.post("/v1/events", json=own, headers={"X-API-Key": "s1-key"}).status_code == 202


def test_broker_down_means_503_and_nothing_accepted_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker of its own, stopped and started again around the requests."""
    from crm_cli.kafka_local import LocalKafka
    from crm_platform.kafka import ensure_topics

    # A JVM under libfaketime did not get ready within 60 s (the suite's run a year ahead,
    # scripts/test.sh): the broker runs at the real time, like the suite's own.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    # 19192 beside the default broker; beside another broker, its port + 10100.
    kafka = LocalKafka(
        data_dir=tmp_path / "kafka", port=int(os.environ.get("CRM_KAFKA_PORT", "9092")) + 10_100
    )
    kafka.start()
    try:
        settings = make_settings(tmp_path, kafka.bootstrap)
        asyncio.run(ensure_topics(kafka.bootstrap, prefix=settings.kafka_topic_prefix))
        with TestClient(create(settings)) as client:
            accepted = [store_order(f"S001-R5-{n:06d}") for n in range(3)]
            assert client.post("/v1/batch", json={"events": accepted}, headers=POS).status_code == 202
            kafka.stop()
            down = client.post("/v1/events", json=store_order("S001-R5-000100"), headers=POS)
            assert down.status_code == 503
            assert down.headers["retry-after"] == "1"
            assert down.json()["status"] == "unavailable"
            kafka.start()
            retried = client.post("/v1/events", json=store_order("S001-R5-000100"), headers=POS)
            assert retried.status_code == 202, retried.text
        records = topic_records(settings, COMMERCE_ORDER.name, 4)
        ids = {decode(r.value).payload.order_id for r in records}  # type: ignore[attr-defined]
        assert ids == {"S001-R5-000000", "S001-R5-000001", "S001-R5-000002", "S001-R5-000100"}
    finally:
        kafka.stop()


def test_openapi_documents_every_event_type(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    incoming = orjson.dumps(schema["components"]["schemas"]["Incoming"]).decode()
    for name in ("StoreOrderIn", "OnlineOrderIn", "ReturnIn", "InteractionIn"):
        assert name in incoming


def test_an_online_order_cancelled_before_shipping(client: TestClient, settings: Settings) -> None:
    assert (
        client.post("/v1/events", json=online_order("W-5001", "c@example.jp"), headers=SHOP).status_code
        == 202
    )
    cancel = {
        "type": "return",
        "occurred_at": "2026-11-21T22:00:00+09:00",
        "payload": {
            "return_id": "CAN-5001",
            "kind": "cancellation",
            "original_order_id": "W-5001",
            "channel": "online",
            "lines": [{"line_no": 1, "sku": "CT-9", "category": "outer", "quantity": 1, "amount": 12900}],
            "refund_total": 12900,
        },
    }
    response = client.post("/v1/events", json=cancel, headers=SHOP)
    assert response.status_code == 202, response.text
    assert client.post("/v1/events", json=cancel, headers=SHOP).json()["status"] == "duplicate"
    unknown = {
        **cancel,
        "payload": {**cancel["payload"], "original_order_id": "S001-R1-1", "return_id": "C2"},
    }
    # A cancellation of an order the web shop never sent is refused, naming the field.
    refused = client.post("/v1/events", json=unknown, headers=SHOP)
    assert refused.status_code == 422
    assert refused.json()["error"]["fields"][0]["field"] == "payload.original_order_id"
    records = topic_records(settings, COMMERCE_ORDER.name, 2)
    [cancelled] = [decode(r.value) for r in records if decode(r.value).event_type == "order.returned"]
    assert (cancelled.payload.kind, cancelled.payload.refund_total) == ("cancellation", 12900)
    order = next(decode(r.value) for r in records if decode(r.value).event_type == "order.online_completed")
    assert cancelled.customer_key == order.customer_key


def test_the_native_path_can_be_switched_off_and_publishes_the_same_record(
    settings: Settings,
) -> None:
    """``CRM_INGEST_NATIVE=false`` (an operator's switch): every event takes the Python
    path, and Kafka gets the same record — value (but for its id and recorded_at), key
    and headers — as from the native path."""
    import re

    for n, native in enumerate((False, True)):
        with TestClient(create(settings.model_copy(update={"ingest_native": native}))) as c:
            assert (c.app.state.ingestor._native is not None) is native  # type: ignore[attr-defined]
            order = store_order(f"S001-R2-SWITCH{n}", member="m-0001")
            assert c.post("/v1/events", json=order, headers=POS).status_code == 202
    python, rust = topic_records(settings, COMMERCE_ORDER.name, 2)  # one key: one partition, in order
    strip = re.compile(rb'"(recorded_at|event_id)":"[^"]*"|SWITCH[01]')
    assert strip.sub(b"", python.value) == strip.sub(b"", rust.value)
    assert python.key == rust.key
    assert [k for k, _ in python.headers] == [k for k, _ in rust.headers]


# -- keys bound to their source's event types and to their stores ----------------------------


def interaction(kind: str = "product_viewed", channel: str = "online") -> dict:
    payload: dict[str, Any] = {"kind": kind, "channel": channel, "session_id": "s9"}
    if kind == "product_viewed":
        payload["sku"] = "CT-9"
    return {
        "type": "interaction",
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-11-21T20:00:00+09:00",
        "identifiers": {"device": "ios-abc"},
        "payload": payload,
    }


def at_store(event: dict, store_id: str) -> dict:
    event["payload"]["store_id"] = store_id
    return event


def errors_of(response: Any) -> list[dict[str, str]]:
    body = response.json()
    return body["error"]["fields"] if "error" in body else body["errors"]


def test_a_source_may_send_only_the_event_types_of_its_allow_list(
    client: TestClient, settings: Settings
) -> None:
    refused = [
        (POS, online_order("W-7001", "p@example.jp"), "type"),
        (POS, interaction(), "type"),
        (SHOP, store_order("S001-R7-000001"), "type"),
        (SHOP, a_return("RET-7001", "S001-R7-000001"), "payload.channel"),  # online returns only
        (APP, online_order("W-7002", "q@example.jp"), "type"),
        (APP, store_order("S001-R7-000002"), "type"),
    ]
    for headers, event, field in refused:
        response = client.post("/v1/events", json=event, headers=headers)
        assert response.status_code == 403, (headers, event["type"], response.text)
        [error] = errors_of(response)
        assert error["field"] == field
        assert "may not send" in error["reason"] and "it may send:" in error["reason"]
    assert topic_size(settings, COMMERCE_ORDER.name) == 0
    assert topic_size(settings, COMMERCE_INTERACTION.name) == 0
    # What each may send goes through (the demo's flows).
    assert client.post("/v1/events", json=store_order("S001-R7-000003"), headers=POS).status_code == 202
    assert (
        client.post("/v1/events", json=online_order("W-7003", "r@example.jp"), headers=SHOP).status_code
        == 202
    )
    assert client.post("/v1/events", json=interaction("app_opened", "app"), headers=SHOP).status_code == 202
    assert client.post("/v1/events", json=interaction(), headers=APP).status_code == 202


def test_a_forbidden_event_in_a_batch_is_refused_on_its_own(client: TestClient, settings: Settings) -> None:
    events = [
        store_order("S001-R8-000001"),
        online_order("W-8001", "s@example.jp"),
        interaction(),
        store_order("S001-R8-000002"),
    ]
    response = client.post("/v1/batch", json={"events": events}, headers=POS)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "rejected", "accepted"]
    assert [r["errors"][0]["field"] for r in body["results"][1:3]] == ["type", "type"]
    assert "source 'pos' may not send online_order" in body["results"][1]["errors"][0]["reason"]
    records = topic_records(settings, COMMERCE_ORDER.name, 2)
    assert {decode(r.value).payload.order_id for r in records} == {"S001-R8-000001", "S001-R8-000002"}  # type: ignore[attr-defined]
    assert topic_size(settings, COMMERCE_INTERACTION.name) == 0


def test_a_store_bound_key_refuses_events_naming_no_store_or_another(
    client: TestClient, settings: Settings
) -> None:
    kiosk = {"X-API-Key": "kiosk-s1-key"}  # bound to S001, its source allowed every type
    no_store_return = a_return("RET-9001", "S001-R9-000001")
    del no_store_return["payload"]["store_id"]
    online_return = at_store(a_return("RET-9002", "W-9001"), "S002")
    online_return["payload"]["channel"] = "online"
    cases = [
        (kiosk, online_order("W-9001", "t@example.jp"), "naming no store"),
        (kiosk, interaction(), "naming no store"),
        (kiosk, no_store_return, "naming no store"),
        (kiosk, online_return, "may not send for store 'S002'"),
        (S1, no_store_return, "naming no store"),
        (S1, at_store(store_order("S002-R1-000001"), "S002"), "may not send for store 'S002'"),
        (S1, at_store(a_return("RET-9003", "S002-R1-000001"), "S002"), "may not send for store 'S002'"),
    ]
    for headers, event, reason in cases:
        response = client.post("/v1/events", json=event, headers=headers)
        assert response.status_code == 403, (event, response.text)
        [error] = errors_of(response)
        assert error["field"] == "payload.store_id"
        assert reason in error["reason"], error
    # In a batch: each refused on its own, the store's own order accepted.
    events = [interaction(), store_order("S001-R9-000002"), at_store(store_order("S002-R9-000003"), "S002")]
    body = client.post("/v1/batch", json={"events": events}, headers=kiosk).json()
    assert [r["status"] for r in body["results"]] == ["rejected", "accepted", "rejected"]
    assert [e["field"] for r in body["results"] for e in r["errors"]] == ["payload.store_id"] * 2
    [record] = topic_records(settings, COMMERCE_ORDER.name, 1)
    assert decode(record.value).payload.order_id == "S001-R9-000002"  # type: ignore[attr-defined]
    assert topic_size(settings, COMMERCE_ORDER.name) == 1
    assert topic_size(settings, COMMERCE_INTERACTION.name) == 0


def test_a_store_return_names_its_store(client: TestClient) -> None:
    assert client.post("/v1/events", json=store_order("S001-R9-000010"), headers=POS).status_code == 202
    anywhere = a_return("RET-9010", "S001-R9-000010")
    del anywhere["payload"]["store_id"]
    response = client.post("/v1/events", json=anywhere, headers=POS)
    assert response.status_code == 422
    assert errors_of(response) == [
        {"field": "payload.store_id", "reason": "a store return names the store of its order"}
    ]


def test_order_ids_are_per_store_and_a_store_cannot_return_another_s_orders(
    client: TestClient, settings: Settings
) -> None:
    # Both stores number their receipts alike: neither blocks nor claims the other's.
    s1 = client.post("/v1/events", json=store_order("R1-000001"), headers=S1)
    s2 = client.post("/v1/events", json=at_store(store_order("R1-000001"), "S002"), headers=S2)
    assert (s1.status_code, s2.status_code) == (202, 202), s2.text
    assert s1.json()["event_id"] != s2.json()["event_id"]
    assert (
        client.post("/v1/events", json=store_order("R1-000001"), headers=S1).json()["status"] == "duplicate"
    )
    again = client.post("/v1/events", json=at_store(store_order("R1-000001"), "S002"), headers=S2).json()
    assert (again["status"], again["event_id"]) == ("duplicate", s2.json()["event_id"])
    # S001 sends its own R1-000001 as another fact: a conflict in its namespace only.
    changed = store_order("R1-000001", quantity=3)
    changed["event_id"] = str(uuid.uuid4())
    assert client.post("/v1/events", json=changed, headers=S1).status_code == 409

    # An order only S002 has: S001 cannot return it, under its own name or S002's.
    only_b = at_store(store_order("R1-000777"), "S002")
    assert client.post("/v1/events", json=only_b, headers=S2).status_code == 202
    as_a = client.post("/v1/events", json=a_return("RET-1", "R1-000777"), headers=S1)
    assert as_a.status_code == 422
    assert errors_of(as_a) == [
        {"field": "payload.original_order_id", "reason": "no order 'R1-000777' of store 'S001' was ingested"}
    ]
    as_b = client.post("/v1/events", json=at_store(a_return("RET-1", "R1-000777"), "S002"), headers=S1)
    assert as_b.status_code == 403
    # Even a key for every store returns an order only against its own store.
    assert client.post("/v1/events", json=a_return("RET-1", "R1-000777"), headers=POS).status_code == 422
    # Return ids are per store too; each store's return counts against its own order.
    r1 = client.post("/v1/events", json=a_return("RET-1", "R1-000001", quantity=2), headers=S1)
    r2 = client.post("/v1/events", json=at_store(a_return("RET-1", "R1-000001"), "S002"), headers=S2)
    assert (r1.status_code, r2.status_code) == (202, 202), (r1.text, r2.text)
    more = client.post("/v1/events", json=a_return("RET-2", "R1-000001"), headers=S1)
    assert more.status_code == 422  # S001's line 1 is all back; S002's still has one left
    assert errors_of(more)[0]["field"] == "payload.lines.0.quantity"
    last = client.post("/v1/events", json=at_store(a_return("RET-2", "R1-000001"), "S002"), headers=S2)
    assert last.status_code == 202, last.text
    records = [decode(r.value) for r in topic_records(settings, COMMERCE_ORDER.name, 6)]
    returns = [e for e in records if e.event_type == "order.returned"]
    assert sorted((e.payload.store_id, e.payload.return_id) for e in returns) == [  # type: ignore[attr-defined]
        ("S001", "RET-1"),
        ("S002", "RET-1"),
        ("S002", "RET-2"),
    ]
    assert topic_size(settings, COMMERCE_ORDER.name) == 6


@pytest.mark.parametrize("store_settings", ["sqlite", "postgres"], indirect=True)
def test_ledger_rows_from_before_store_namespaces_still_count(
    store_settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Orders recorded when all stores shared one namespace (``store``) stay: resent, an
    order is a duplicate (its old derived id recognised); its id stays taken for every
    store; only a key bound to no store may return it (its store is unknown)."""
    from datetime import datetime

    from crm_contracts.envelope import deterministic_event_id
    from crm_platform.kafka import ensure_topics
    from engagement.adapters.ledger import LedgerOrder, LedgerReturn, open_ledger

    base = make_settings(tmp_path, kafka_bootstrap)
    settings = store_settings.model_copy(
        update={
            "kafka_bootstrap": kafka_bootstrap,
            "kafka_topic_prefix": base.kafka_topic_prefix,
            "api_keys": KEYS,
            "ingest_sources": SOURCES,
        }
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    old = store_order("OLD-1")
    at = datetime.fromisoformat(old["occurred_at"])
    old_id = str(deterministic_event_id(at, "store", "OLD-1"))
    old_return_at = datetime.fromisoformat(a_return("x", "y")["occurred_at"])
    ledger = open_ledger(settings)
    try:
        ledger.record(
            [
                LedgerOrder("store", "OLD-1", old_id, "k1", {1: ("TS-001", 2, 3980), 2: ("SK-002", 1, 4490)}),
                LedgerOrder("store", "OLD-2", "e-old-2", "k2", {1: ("TS-001", 2, 3980)}),
            ],
            [
                LedgerReturn(
                    "store",
                    "OLD-2",
                    "RET-OLD",
                    str(deterministic_event_id(old_return_at, "store", "return", "RET-OLD")),
                    {1: 1},
                )
            ],
        )
    finally:
        ledger.close()
    with TestClient(create(settings)) as client:
        resent = client.post("/v1/events", json=old, headers=POS).json()
        assert (resent["status"], resent["event_id"]) == ("duplicate", old_id)
        # Its id is still taken, in every store (another sale with that receipt id).
        another = at_store(store_order("OLD-1"), "S002")
        another["occurred_at"] = "2026-11-20T18:00:00+09:00"
        other = client.post("/v1/events", json=another, headers=S2)
        assert other.status_code == 409
        assert errors_of(other) == [
            {"field": "payload.order_id", "reason": f"order already ingested as event {old_id}"}
        ]
        # A bound key cannot vouch for the store of an old order; a key for all stores can.
        bound = client.post("/v1/events", json=a_return("RET-A", "OLD-1"), headers=S1)
        assert bound.status_code == 403
        assert errors_of(bound)[0]["field"] == "payload.original_order_id"
        ok = client.post("/v1/events", json=a_return("RET-A", "OLD-1", quantity=2), headers=POS)
        assert ok.status_code == 202, ok.text
        # Returns recorded then and now both count against the old order.
        assert client.post("/v1/events", json=a_return("RET-B", "OLD-1"), headers=POS).status_code == 422
        assert client.post("/v1/events", json=a_return("RET-C", "OLD-2"), headers=POS).status_code == 202
        assert client.post("/v1/events", json=a_return("RET-D", "OLD-2"), headers=POS).status_code == 422
        # An old return resent (its id derived) is a duplicate, not a conflict.
        old_return = a_return("RET-OLD", "OLD-2")
        assert client.post("/v1/events", json=old_return, headers=POS).json()["status"] == "duplicate"
    records = topic_records(settings, COMMERCE_ORDER.name, 2)
    assert sorted(decode(r.value).payload.return_id for r in records) == ["RET-A", "RET-C"]  # type: ignore[attr-defined]
    assert topic_size(settings, COMMERCE_ORDER.name) == 2


def test_an_allow_list_that_names_no_known_type_stops_the_start(settings: Settings) -> None:
    from engagement.ingest.sources import SourceRulesError

    with pytest.raises(SourceRulesError, match="telepathy"):
        create(settings.model_copy(update={"ingest_sources": {"kiosk": ["telepathy"]}}))
    with pytest.raises(SourceRulesError, match="'fax'"):
        create(settings.model_copy(update={"ingest_sources": {"kiosk": ["return:fax"]}}))


def test_the_demo_retailer_s_events_are_all_accepted_from_its_keys(
    client: TestClient, settings: Settings
) -> None:
    """The honest flows: the demo's purchases, returns and browsing, each sent with the
    key of its source as the demo loader does (the POS for the stores, the web shop for
    the rest), orders before returns."""
    from datetime import date

    from crm_cli.demo import plan

    events = plan(60, seed=3, today=date(2026, 11, 30), months=12).events
    kinds = {(e["type"], e["payload"].get("channel")) for e in events}
    assert {("store_order", None), ("online_order", "online"), ("online_order", "app")} <= kinds
    assert ("return", "store") in kinds and ("interaction", "app") in kinds
    orders = [e for e in events if e["type"] != "return"]
    returns = [e for e in events if e["type"] == "return"]
    for phase in (orders, returns):
        for headers in (POS, SHOP):
            mine = [
                e
                for e in phase
                if (e["type"] == "store_order" or e["payload"].get("channel") == "store") == (headers is POS)
            ]
            body = client.post("/v1/batch", json={"events": mine}, headers=headers).json()
            assert body["rejected"] == 0, [r for r in body["results"] if r["status"] != "accepted"][:3]
    assert topic_size(settings, COMMERCE_ORDER.name) == len(orders) - sum(
        e["type"] == "interaction" for e in orders
    ) + len(returns)
