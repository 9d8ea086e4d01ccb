"""Tickets reach Kafka through the outbox relay as contract events, content sealed, keyed
by the customer like the other services' events; an erasure on identity's topic shreds
the customer's tickets through the eraser."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crm_contracts.envelope import IdentifierKind, SealedValue
from crm_contracts.events.identity import CustomerErased, CustomerErasedPayload
from crm_contracts.events.support import TicketOpened, TicketRated, TicketReplied, TicketResolved
from crm_contracts.registry import decode
from crm_contracts.topics import SUPPORT_TICKET
from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import blind_identifier
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import read_topic
from support.bootstrap import build, build_relay
from support.entrypoints.api import create
from support.eraser import run_eraser

pytestmark = pytest.mark.integration
STAFF = {"X-API-Key": "staff"}


def settings_for(tmp_path: Path, bootstrap: str) -> Settings:
    return Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        api_keys={"staff": ["support:read", "support:write"]},
    )


def test_ticket_events_reach_kafka_sealed_and_keyed_by_the_customer(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = settings_for(tmp_path, kafka_bootstrap)
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    body = {
        "channel": "chat",
        "category": "product",
        "subject": "サイズ交換の相談",
        "body": "M を L に交換したい。電話 090-1234-5678",
        "customer": {"phone": "090-1234-5678", "member_no": "M0001"},
    }
    with TestClient(create(settings)) as client:
        tid = client.post("/v1/tickets", json=body, headers=STAFF).json()["ticket_id"]
        client.post(f"/v1/tickets/{tid}/replies", json={"body": "承知しました"}, headers=STAFF)
        client.post(f"/v1/tickets/{tid}/resolution", json={"resolution": "replaced"}, headers=STAFF)
        client.post(f"/v1/tickets/{tid}/rating", json={"score": 5, "comment": "助かりました"}, headers=STAFF)

    async def relay_all() -> int:
        app = build(settings, with_index=False)
        try:
            async with EventProducer(
                kafka_bootstrap, client_id="test", topic_prefix=settings.kafka_topic_prefix
            ) as producer:
                relay = build_relay(settings, app, producer)
                n = await relay.relay_available()
                assert relay.lag() == 0
                return n
        finally:
            app.close()

    assert asyncio.run(relay_all()) == 4
    assert asyncio.run(relay_all()) == 0  # the position was recorded: nothing sent twice
    topic = settings.kafka_topic_prefix + SUPPORT_TICKET.name
    records = asyncio.run(read_topic(kafka_bootstrap, topic, expect=4))
    events = [decode(r.value) for r in records]
    assert [type(e) for e in events] == [TicketOpened, TicketReplied, TicketResolved, TicketRated]
    indexer = BlindIndexer(settings.blind_index_key_bytes)
    member = blind_identifier(indexer, IdentifierKind.MEMBER_NO, "M0001").hash
    assert {r.key.decode() for r in records} == {member}  # the strongest identifier, as engagement keys
    assert all(
        e.customer_key == member and [i.kind for i in e.identifiers] == ["member_no", "phone"] for e in events
    )
    raw = b"".join(r.value for r in records)
    for clear in ("サイズ交換".encode(), b"090-1234-5678", "助かりました".encode(), b"+819012345678"):
        assert clear not in raw
    opened = events[0]
    assert isinstance(opened, TicketOpened) and isinstance(opened.payload.content, SealedValue)
    assert opened.payload.first_response_due_at is not None and opened.payload.sla_due_at is not None
    replied, resolved = events[1], events[2]
    assert isinstance(replied, TicketReplied) and replied.payload.first_response_seconds is not None
    assert isinstance(resolved, TicketResolved) and resolved.payload.sla_met is True
    assert len({e.event_id for e in events}) == 4


def test_the_eraser_shreds_an_erased_customer_s_tickets(tmp_path: Path, kafka_bootstrap: str) -> None:
    settings = settings_for(tmp_path, kafka_bootstrap)
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    body = {
        "channel": "email",
        "category": "complaint",
        "subject": "対応が悪い",
        "body": "店員の態度",
        "customer": {"email": "taro@example.jp"},
    }
    app = build(settings)
    with TestClient(create(settings)) as client:
        tid = client.post("/v1/tickets", json=body, headers=STAFF).json()["ticket_id"]
    email = blind_identifier(BlindIndexer(settings.blind_index_key_bytes), "email", "taro@example.jp")
    erased = CustomerErased(
        occurred_at=datetime.now(UTC),
        producer="identity.relay",
        customer_key=str(uuid.uuid4()),
        payload=CustomerErasedPayload(
            customer_id=uuid.uuid4(), requested_at=datetime.now(UTC), tombstoned=(email,)
        ),
    )

    async def publish() -> None:
        async with EventProducer(
            kafka_bootstrap, client_id="test", topic_prefix=settings.kafka_topic_prefix
        ) as producer:
            await producer.publish(erased)

    asyncio.run(publish())
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    worker = threading.Thread(target=loop.run_until_complete, args=(run_eraser(settings, stop),), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        ticket = app.ticket(uuid.UUID(tid))
        while app.content(ticket) is not None and time.monotonic() < deadline:
            time.sleep(0.3)
            app.keys._cache.clear()
        assert app.content(ticket) is None
    finally:
        loop.call_soon_threadsafe(stop.set)
        worker.join(timeout=15)
        app.close()
