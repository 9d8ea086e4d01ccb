"""Rebuild ClickHouse from the log: drop every table, apply the migrations, consume every
partition from its start to where the log ended when the replay began (the log is the
source of truth), then hand the sink's consumer group those positions, so the sink goes
on from there and nothing counts twice. The partitions are assigned, not joined: no
group join to wait for, and the consumer connects while the tables are rebuilt.

Embedded (chDB) mode: run it with the analytics API stopped (one process per data
directory). With a server, stop the sink first (``analytics-sink`` replicas to 0).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from analytics.sink import Sink
from analytics.store.migrations import migrate


@dataclass(frozen=True)
class ReplayResult:
    records: int
    #: the whole rebuild: dropping the tables, the migrations, the sink's start, the
    #: group's join, consuming
    seconds: float
    #: from the first record taken to the last batch flushed: the rebuild's own pace
    consuming_seconds: float

    @property
    def rate(self) -> float:
        """Records per second of the whole rebuild (start-up included)."""
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def consuming_rate(self) -> float:
        """Records per second while consuming: what a longer log approaches."""
        return self.records / self.consuming_seconds if self.consuming_seconds > 0 else 0.0


def reset(client: Client) -> list[str]:
    """Drop every table and view of the current database (views first); returns them."""
    rows = client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
    ).result_rows
    ordered = sorted(rows, key=lambda r: (r[1] not in ("MaterializedView", "View"), r[0]))
    for name, _ in ordered:
        client.command(f"DROP TABLE IF EXISTS `{name}` SYNC")
    return [name for name, _ in ordered]


async def replay(
    client: Client,
    *,
    bootstrap: str,
    group_id: str,
    topic_prefix: str = "",
    batch_rows: int = 50_000,
    validators: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    started = time.perf_counter()
    scratch = f"{group_id}-replay-{uuid.uuid4().hex[:8]}"
    # Every partition assigned, no group to join: the replay reads from the start and
    # stops at the offsets the log had when it began.
    sink = Sink(
        client,
        bootstrap=bootstrap,
        group_id=scratch,
        topic_prefix=topic_prefix,
        batch_rows=batch_rows,
        validators=validators,
        assign=True,
    )

    def rebuild_schema() -> None:
        reset(client)
        migrate(client)

    # The checker processes start, and the consumer connects, while the tables are
    # dropped and made again.
    try:
        await asyncio.gather(asyncio.to_thread(rebuild_schema), sink.warm_up(), sink.open())
        ends = await sink.end_offsets()
        total = sum(ends.values())
        await sink.start()
        done = 0
        while done < total:
            handled = await sink.drain(timeout_s=5, until=ends)
            done += handled
            if progress:
                progress(done, total)
            if handled == 0 and sink.stats.total_lag() == 0:
                break
    finally:
        await sink.stop()
    seconds = time.perf_counter() - started
    await _commit(bootstrap, group_id, ends)
    stats = sink.stats
    consuming = stats.last_flush_at - stats.first_taken_at if stats.first_taken_at else 0.0
    return ReplayResult(records=stats.records_in, seconds=seconds, consuming_seconds=consuming)


async def _commit(bootstrap: str, group_id: str, offsets: dict[TopicPartition, int]) -> None:
    """The sink's group continues where the replay stopped."""
    if not offsets:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()
