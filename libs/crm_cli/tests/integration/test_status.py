"""``crm status``'s view of Kafka: events per topic and lag per consumer group."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition

from crm_cli.status import kafka_overview
from crm_contracts.topics import COMMERCE_ORDER
from crm_platform.kafka import EventProducer, ensure_topics


def test_counts_events_per_topic_and_lag_per_group(kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topic = prefix + COMMERCE_ORDER.name
    group = f"{prefix}status-test"

    async def scenario() -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        await ensure_topics(kafka_bootstrap, prefix=prefix)
        async with EventProducer(kafka_bootstrap, client_id="status-test", topic_prefix=prefix) as producer:
            for _ in range(5):
                await producer.publish_raw(COMMERCE_ORDER.name, b"{}", key=b"k", headers=[])
        partition = [TopicPartition(topic, p) for p in range(COMMERCE_ORDER.partitions)]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(partition)
            ends = await consumer.end_offsets(partition)
            # the group has read all but two of the five
            hot = next(tp for tp, end in ends.items() if end)
            await consumer.commit({hot: ends[hot] - 2})
        finally:
            await consumer.stop()
        return await kafka_overview(kafka_bootstrap, prefix)

    topics, lag = asyncio.run(scenario())
    assert topics[topic] == (COMMERCE_ORDER.partitions, 5)
    assert lag[group] == 2
