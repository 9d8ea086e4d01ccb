"""The vertical slice: POST a customer → event store → relay → contract event on Kafka,
with the request's trace id carried all the way. Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from crm_contracts.events.identity import CustomerRegistered
from crm_contracts.registry import decode
from crm_contracts.topics import IDENTITY_CUSTOMER
from crm_platform.crypto import open_sealed
from crm_platform.identifiers import blind_identifier
from crm_platform.kafka import EventProducer
from crm_platform.settings import Settings
from crm_platform.telemetry import in_memory_exporter
from crm_platform.testing import end_offsets, read_topic
from identity.bootstrap import build, build_relay
from identity.entrypoints.api import create

pytestmark = pytest.mark.integration
ADMIN = {"X-API-Key": "dev-admin-key"}


async def test_registered_customer_reaches_kafka_sealed_and_traced(
    store_settings: Settings, kafka_bootstrap: str
) -> None:
    spans = in_memory_exporter()
    settings = store_settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap})
    identity = build(settings)
    start = await end_offsets(kafka_bootstrap, IDENTITY_CUSTOMER.name)
    phone_suffix = f"{uuid.uuid4().int % 10_000:04d}"
    body = {
        "channel": "store",
        "name_kanji": "山田 太郎",
        "name_kana": "ヤマダ タロウ",
        "email": f"Taro.{uuid.uuid4().hex[:8]}@Example.JP",
        "phone": f"03-1234-{phone_suffix}",
        "birthday": "1985-04-12",
        "gender": "male",
        "prefecture": "東京都",
        "consents": {"email": True},
    }
    with TestClient(create(settings, identity)) as client:
        response = client.post("/customers", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    customer_id = response.json()["customer_id"]
    trace_id = response.headers["x-trace-id"]

    async with EventProducer(kafka_bootstrap, client_id="slice-test") as producer:
        relay = build_relay(identity, producer)
        while await relay.relay_once():
            pass
        assert relay.lag() == 0

    records = await read_topic(
        kafka_bootstrap,
        IDENTITY_CUSTOMER.name,
        expect=1,
        start=start,
        match=lambda r: r.key == customer_id.encode(),
    )
    assert len(records) == 1
    event = decode(records[0].value)
    assert isinstance(event, CustomerRegistered)
    assert str(event.payload.customer_id) == customer_id
    # The trace of the HTTP request continues on the event and the Kafka record.
    assert event.trace is not None and event.trace.traceparent.split("-")[1] == trace_id
    assert dict(records[0].headers)["traceparent"].decode().split("-")[1] == trace_id
    assert any(
        format(s.context.trace_id, "032x") == trace_id
        for s in spans.get_finished_spans()
        if s.name.startswith("publish ")
    )
    # No raw personal data on Kafka: identifiers are blind indexes, the rest is sealed.
    raw = records[0].value.decode()
    for secret in ("山田", "ヤマダ", "example.jp", "1234", "1985-04-12"):
        assert secret.lower() not in raw.lower()
    expected_email = blind_identifier(identity.indexer, "email", body["email"])
    assert expected_email in event.identifiers
    assert event.payload.attributes.birth_year == 1985
    assert event.payload.attributes.prefecture == "東京都"
    assert event.payload.personal is not None
    _, key = identity.keys.get_or_create(uuid.UUID(customer_id))
    personal = open_sealed(key, event.payload.personal, context="customer.registered")
    assert isinstance(personal, dict) and personal["name_kanji"] == "山田 太郎"
    identity.close()


def test_registering_a_known_person_again_resolves_to_them(store_settings: Settings) -> None:
    identity = build(store_settings)
    with TestClient(create(store_settings, identity)) as client:
        body = {"channel": "online", "email": "hanako@example.jp"}
        first = client.post("/customers", json=body, headers=ADMIN)
        again = client.post("/customers", json={**body, "email": "HANAKO@EXAMPLE.JP"}, headers=ADMIN)
        assert first.status_code == 201
        assert again.status_code == 200
        assert again.json() == {
            "customer_id": first.json()["customer_id"],
            "outcome": "matched",
            "merges": [],
            "reviews": [],
        }
        profile = client.get(f"/customers/{first.json()['customer_id']}", headers=ADMIN).json()
        assert profile["personal"]["contacts"] == {"email": ["hanako@example.jp"]}
    identity.close()
