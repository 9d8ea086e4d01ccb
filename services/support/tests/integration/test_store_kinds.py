"""The same ticket slice on both event stores: SQLite (local mode) and PostgreSQL
(production: the event store, the outbox and the ticket keys in support's database)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid

import pytest
from fastapi.testclient import TestClient

from crm_contracts.events.support import TicketEscalated, TicketOpened, TicketResolved
from crm_contracts.registry import decode
from crm_contracts.topics import SUPPORT_TICKET
from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import blind_identifier
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import read_topic
from support.bootstrap import build, build_relay
from support.entrypoints.api import create

pytestmark = pytest.mark.integration
STAFF = {"X-API-Key": "staff"}


def test_tickets_are_opened_once_worked_published_and_shredded(
    store_settings: Settings, kafka_bootstrap: str
) -> None:
    settings = store_settings.model_copy(
        update={
            "kafka_bootstrap": kafka_bootstrap,
            "kafka_topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
            "api_keys": {"staff": ["support:read", "support:write"]},
        }
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=settings.kafka_topic_prefix))
    body = {
        "request_id": "call-0001",
        "channel": "phone",
        "category": "complaint",
        "priority": "high",
        "subject": "店舗での対応について",
        "body": "レジで長時間待たされた",
        "customer": {"phone": "080-1111-2222"},
        "store_id": "S003",
    }
    with TestClient(create(settings)) as client:
        # the same request sent four times at once opens one ticket
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/tickets", json=body, headers=STAFF), range(4)))
        assert sorted(a.status_code for a in answers) == [200, 200, 200, 201], [a.text for a in answers]
        assert len({a.json()["ticket_id"] for a in answers}) == 1
        tid = answers[0].json()["ticket_id"]
        client.post(f"/v1/tickets/{tid}/replies", json={"body": "申し訳ございません"}, headers=STAFF)
        client.post(f"/v1/tickets/{tid}/resolution", json={"resolution": "apologised"}, headers=STAFF)
        found = client.post(
            "/v1/tickets/search",
            json={"customer": {"phone": "08011112222"}, "status": "resolved"},
            headers=STAFF,
        )
        assert [t["ticket_id"] for t in found.json()["tickets"]] == [tid]

    async def relay_all() -> int:
        app = build(settings, with_index=False)
        try:
            async with EventProducer(
                kafka_bootstrap, client_id="t", topic_prefix=settings.kafka_topic_prefix
            ) as p:
                return await build_relay(settings, app, p).relay_available()
        finally:
            app.close()

    assert asyncio.run(relay_all()) == 4  # opened, escalated on open, replied, resolved
    records = asyncio.run(
        read_topic(kafka_bootstrap, settings.kafka_topic_prefix + SUPPORT_TICKET.name, expect=4)
    )
    kinds = [type(decode(r.value)) for r in records]
    assert kinds[0] is TicketOpened and TicketEscalated in kinds and kinds[-1] is TicketResolved

    app = build(settings)
    try:
        phone = blind_identifier(BlindIndexer(settings.blind_index_key_bytes), "phone", "08011112222").hash
        assert app.erase_identifiers([phone]) == 1
        assert app.content(app.ticket(uuid.UUID(tid))) is None
    finally:
        app.close()
