"""Reading a topic back in tests, straight from the broker."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning, once at least ``expect`` arrived
    and no more came for a moment (so duplicates beyond ``expect`` are seen too)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        quiet_rounds = 0
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            got = [r for rs in batch.values() for r in rs]
            records.extend(got)
            quiet_rounds = 0 if got else quiet_rounds + 1
            if len(records) >= expect and quiet_rounds >= 2:
                break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records
