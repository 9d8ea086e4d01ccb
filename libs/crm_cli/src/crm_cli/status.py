"""What ``crm status`` reads from Kafka: events per topic and lag per consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from crm_contracts.topics import ALL_TOPICS


async def kafka_overview(
    bootstrap: str, prefix: str = ""
) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """``{topic: (partitions, events)}`` for the platform's topics (events = end offsets
    minus start offsets: what the log holds now) and ``{group: lag}`` for every group
    that committed offsets on them."""
    names = [prefix + t.name for t in ALL_TOPICS]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        partitions = [
            TopicPartition(d["topic"], p["partition"])
            for d in described
            if not d.get("error_code")
            for p in d.get("partitions", ())
        ]
        groups = [g[0] if isinstance(g, tuple) else g["group_id"] for g in await admin.list_consumer_groups()]
        committed = {group: await admin.list_consumer_group_offsets(group) for group in groups}
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions) if partitions else {}
        starts = await consumer.beginning_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()
    topics: dict[str, tuple[int, int]] = {}
    for tp in partitions:
        count, events = topics.get(tp.topic, (0, 0))
        topics[tp.topic] = (count + 1, events + ends[tp] - starts[tp])
    lag: dict[str, int] = {}
    for group, offsets in committed.items():
        mine = {tp: meta.offset for tp, meta in offsets.items() if tp in ends}
        if mine:
            lag[group] = sum(max(0, ends[tp] - offset) for tp, offset in mine.items())
    return topics, lag


async def wait_until_settled(
    bootstrap: str,
    groups: Collection[str],
    prefix: str = "",
    *,
    quiet_s: float = 2.0,
    stall_s: float = 120.0,
    poll_s: float = 0.5,
) -> None:
    """Wait until the pipeline has nothing in flight: each of ``groups`` (the
    deployment's stream processors, ``Settings.platform_groups()``) has consumed its
    topics to the end and no topic has grown for ``quiet_s`` seconds (so no relay or
    worker is still publishing consequences, such as a merge decided after the purchases
    were counted). Groups not named — a BI tool's, another data directory's sink left
    behind by a test — are not waited for.

    A large load takes its time to settle, so there is no deadline as such: it raises
    TimeoutError only when the lag has stayed above zero without reaching a new low for
    ``stall_s`` seconds (a stuck consumer, a crashed worker)."""
    loop = asyncio.get_running_loop()
    previous: dict[str, tuple[int, int]] | None = None
    wanted = set(groups)
    quiet_since = progress_at = loop.time()
    lowest: int | None = None
    while True:
        topics, lag = await kafka_overview(bootstrap, prefix)
        behind = {group: n for group, n in lag.items() if n and group in wanted}
        now = loop.time()
        total = sum(behind.values())
        if lowest is None or total < lowest or total == 0:
            lowest, progress_at = total, now
        if behind or topics != previous:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return
        if now - progress_at >= stall_s:
            raise TimeoutError(f"the pipeline made no progress for {stall_s:g} s (lag: {behind})")
        previous = topics
        await asyncio.sleep(poll_s)
