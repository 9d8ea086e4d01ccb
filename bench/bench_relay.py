"""Outbox relay throughput: stored identity events → contract events acknowledged by Kafka.

Registers N customers in a fresh SQLite event store (not timed), then times the relay
from position 0 until every stored event is acknowledged by the local broker
(acks=all, idempotent producer). The translator's real work is included: blind indexes
for every identifier, a per-customer data key, and AES-GCM sealing of personal fields.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common import Metric

from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from identity.bootstrap import build, build_relay
from identity.domain.customer import Customer

N = int(os.environ.get("BENCH_RELAY_EVENTS", "50000"))
BATCH = 1000


def _populate(identity, n: int) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    for start in range(0, n, 2000):
        customers = []
        for i in range(start, min(start + 2000, n)):
            identifiers = identity.app.hash_identifiers(
                [("email", f"bench{i}@example.jp"), ("phone", f"+8190{i:08d}")]
            )
            customer = Customer.register(
                customer_id=uuid.uuid4(),
                channel="store",
                personal={
                    "name_kanji": "山田 太郎",
                    "name_kana": "ヤマダ タロウ",
                    "birthday": "1985-04-12",
                    "contacts": {"email": [f"bench{i}@example.jp"]},
                },
                attributes={"gender": "male", "prefecture": "東京都"},
                identifiers=[
                    {**ident.as_dict(), "evidence": {"rule": "registration"}} for ident in identifiers
                ],
                consents={"email": True},
                registered_at=now,
            )
            identity.keys.get_or_create(customer.id)  # as registration does
            customers.append(customer)
        identity.app.save(*customers)


async def _relay_all(identity, bootstrap: str) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    await ensure_topics(bootstrap)
    async with EventProducer(bootstrap, client_id="bench-relay", linger_ms=10) as producer:
        relay = build_relay(identity, producer, batch_size=BATCH)
        started = time.perf_counter()
        await relay.relay_available()
        elapsed = time.perf_counter() - started
        return elapsed, relay.stats.published


def run() -> dict[str, Metric]:
    bootstrap = os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    with tempfile.TemporaryDirectory() as tmp:
        identity = build(Settings(var_dir=Path(tmp), kafka_bootstrap=bootstrap))
        _populate(identity, N)
        elapsed, published = asyncio.run(_relay_all(identity, bootstrap))
        identity.close()
    assert published == N, f"published {published} of {N}"
    return {
        "relay_throughput": Metric(published / elapsed, "events/s", 5000),
        "relay_events": Metric(published, "events", N),
    }
