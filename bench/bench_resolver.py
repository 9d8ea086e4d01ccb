"""Resolver throughput, end to end through Kafka, one Faust worker process.

Phase 1 — new customers: ``NEW`` orders, each with a member card nobody has seen, so each
one is a decision recorded in the identity store (a customer and its claim).
Phase 2 — known identifiers: ``KNOWN`` orders carrying cards resolved in phase 1, the
fast path.

Each phase's events are on the broker *before* the worker starts (the producer would
otherwise share the two cores with the worker and the figure would be the producer's).
The worker's committed offsets are then sampled: the rate is the events committed
between the first sample that shows progress and the one that reaches the end of the
topic, over the time between them — steady-state throughput, without start-up and
partition assignment. Targets: ≥ 1,000 new customers/s and ≥ 10,000
known-identifier events/s per worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from common import Metric

from crm_contracts.envelope import IdentifierKind
from crm_contracts.events.commerce import OrderLine, StoreOrderCompleted, StoreOrderCompletedPayload
from crm_contracts.topics import COMMERCE_ORDER
from crm_platform.crypto import BlindIndexer
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings

NEW = int(os.environ.get("BENCH_RESOLVER_NEW", "20000"))
KNOWN = int(os.environ.get("BENCH_RESOLVER_KNOWN", "200000"))
BOOTSTRAP = os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _orders(indexer: BlindIndexer, people: int, count: int, with_email: bool) -> list[StoreOrderCompleted]:
    line = OrderLine(line_no=1, sku="SKU-1", category="tops", quantity=2, unit_price=1990, discount=0)
    out = []
    for n in range(count):
        i = n % people
        member = indexer.identifier(IdentifierKind.MEMBER_NO, f"M{i:08d}")
        identifiers = (
            (member, indexer.identifier(IdentifierKind.EMAIL, f"m{i}@example.jp"))
            if with_email
            else (member,)
        )
        out.append(
            StoreOrderCompleted(
                occurred_at=datetime.now(UTC),
                producer="bench",
                customer_key=member.hash,
                identifiers=identifiers,
                payload=StoreOrderCompletedPayload(
                    order_id=f"R{n}", store_id="S001", lines=(line,), total=3980
                ),
            )
        )
    return out


async def _produce(prefix: str, events: list[StoreOrderCompleted]) -> None:
    async with EventProducer(BOOTSTRAP, client_id="bench", topic_prefix=prefix, linger_ms=20) as producer:
        for start in range(0, len(events), 5000):
            await producer.publish_many(events[start : start + 5000])


async def _progress(group: str, topic: str) -> tuple[int, int]:
    """(committed, end) summed over the topic's partitions."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await consumer.start()
    await admin.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(COMMERCE_ORDER.partitions)]
        ends = await consumer.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(group)
        done = sum(committed[tp].offset for tp in partitions if tp in committed and committed[tp].offset > 0)
        return done, sum(ends.values())
    finally:
        await consumer.stop()
        await admin.close()


def _measure(group: str, topic: str, expected_end: int, timeout: float) -> float:
    """Events per second between the first progress seen and the end of the topic."""
    deadline = time.monotonic() + timeout
    first: tuple[float, int] | None = None
    baseline: int | None = None
    while time.monotonic() < deadline:
        done, end = asyncio.run(_progress(group, topic))
        now = time.monotonic()
        if baseline is None:
            baseline = done
        elif first is None and done > baseline:
            first = (now, done)
        if end >= expected_end and done >= end:
            if first is None or now - first[0] < 1.0:
                raise RuntimeError("too few events to measure a rate; raise BENCH_RESOLVER_*")
            return (done - first[1]) / (now - first[0])
        time.sleep(0.2)
    raise TimeoutError(f"resolver did not catch up on {topic}")


def _start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "identity", "resolver"], env=env, start_new_session=True)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(60)


def run() -> dict[str, Metric]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    group = f"resolver-bench-{uuid.uuid4().hex[:6]}"
    topic = prefix + COMMERCE_ORDER.name
    settings = Settings()
    indexer = BlindIndexer(settings.blind_index_key_bytes)
    new_orders = _orders(indexer, NEW, NEW, with_email=False)
    known_orders = _orders(indexer, NEW, KNOWN, with_email=False)
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "CRM_VAR_DIR": tmp,
            "CRM_KAFKA_TOPIC_PREFIX": prefix,
            "CRM_RESOLVER_APP_ID": group,
            "CRM_LOG_LEVEL": "WARNING",
        }
        asyncio.run(ensure_topics(BOOTSTRAP, prefix=prefix))
        asyncio.run(_produce(prefix, new_orders))
        worker = _start_worker(env)
        try:
            new_rate = _measure(group, topic, NEW, 600)
        finally:
            _stop_worker(worker)
        asyncio.run(_produce(prefix, known_orders))
        worker = _start_worker(env)
        try:
            known_rate = _measure(group, topic, NEW + KNOWN, 600)
        finally:
            _stop_worker(worker)
    print(
        f"new customers: {new_rate:,.0f}/s over {NEW:,}; "
        f"known identifiers: {known_rate:,.0f} events/s over {KNOWN:,}"
    )
    return {
        "resolver_known_events_per_s": Metric(known_rate, "events/s", 10_000),
        "resolver_new_customers_per_s": Metric(new_rate, "customers/s", 1_000),
    }
