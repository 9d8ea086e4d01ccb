"""The sink: every topic into ClickHouse, in batches, exactly once in effect.

* **Batches** by size and time (``CRM_SINK_BATCH_ROWS``, ``CRM_SINK_BATCH_MS``): records
  accumulate until either bound, then go to ClickHouse in one insert.
* **Offsets are committed only after the insert succeeded.** A crash between the two
  re-delivers the batch; the fact tables collapse the copies (ReplacingMergeTree, sort
  key ending in event_id, read with FINAL), so nothing counts twice and nothing is lost.
  An insert that fails is retried with back-off, holding the batch, until it goes in or
  the sink is stopped (then the uncommitted records are consumed again on restart).
* **Validation** against the contracts (the event registry: known type and version,
  every field). What cannot be decoded or validated goes to the dead-letter topic with
  the reason in its headers, before the batch's offsets are committed, and the pipeline
  goes on.
* **Parsing happens in ClickHouse.** Valid records are written as they came off Kafka
  (RowBinary: topic, partition, offset, raw JSON) into the ``events_queue`` Null table;
  materialised views turn them into ``events``, ``orders``, ``identity_map`` and
  ``customers`` (see ``store/sql``). The one thing done here is re-pointing, after a
  merge, the keys that pointed at the merged customer (a merge chain).
* **Observability:** a span per batch linked to the producers' traces (W3C context from
  the Kafka headers), and :class:`SinkStats` with consumer lag per partition, which the
  API exposes at ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from clickhouse_connect.driver.client import Client
from opentelemetry import trace
from pydantic import Field, TypeAdapter, ValidationError

from crm_contracts.envelope import Event
from crm_contracts.events.identity import CustomersMerged
from crm_contracts.registry import InvalidEvent, UnknownEventType, registry
from crm_contracts.topics import ALL_TOPICS, DEAD_LETTER
from crm_platform.kafka import EventProducer
from crm_platform.telemetry import extract_context

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("analytics.sink")

#: Every topic analytics reads (the contracts name analytics.sink among the consumers).
SINK_TOPICS: tuple[str, ...] = tuple(t.name for t in ALL_TOPICS if "analytics.sink" in t.consumers)
_MAX_LINKS = 64


@dataclass
class SinkStats:
    records_in: int = 0
    rows_inserted: int = 0
    batches: int = 0
    dead_lettered: int = 0
    tombstones: int = 0
    insert_failures: int = 0
    last_batch_rows: int = 0
    last_insert_seconds: float = 0.0
    last_flush_at: float = 0.0
    #: topic/partition → records on the broker not yet committed by the sink
    lag: dict[str, int] = field(default_factory=dict)

    def total_lag(self) -> int:
        return sum(self.lag.values())


@dataclass(slots=True)
class _Pending:
    rows: list[bytes] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    dead: list[tuple[ConsumerRecord[bytes, bytes], str]] = field(default_factory=list)
    merges: list[CustomersMerged] = field(default_factory=list)
    links: list[trace.Link] = field(default_factory=list)
    started: float = 0.0
    count: int = 0


class EventValidator:
    """Contract validation of one raw record: the registry's classes in one discriminated
    union, validated straight from JSON bytes (a third cheaper than parse-then-validate).
    An older schema_version goes through the registry's upcasters."""

    def __init__(self) -> None:
        classes = registry.classes()
        latest: dict[str, int] = {}
        for cls in classes:
            event_type, version = cls.type_key()
            latest[event_type] = max(latest.get(event_type, 0), version)
        newest = tuple(c for c in classes if c.type_key()[1] == latest[c.type_key()[0]])
        self._latest = latest
        union: Any = Annotated[Union[newest], Field(discriminator="event_type")]  # noqa: UP007
        self._adapter: TypeAdapter[Event] = TypeAdapter(union)

    def __call__(self, raw: bytes) -> Event:
        try:
            event = self._adapter.validate_json(raw)
        except ValidationError as exc:
            # Not the latest version, or not valid: the registry tells which (it upcasts).
            try:
                return registry.decode(raw)
            except (InvalidEvent, UnknownEventType) as inner:
                raise InvalidEvent(_reason(exc, inner)) from None
        if event.schema_version != self._latest[event.event_type]:  # pragma: no cover - pinned literals
            return registry.decode(raw)
        return event


def _reason(exc: ValidationError, inner: Exception) -> str:
    if isinstance(inner, UnknownEventType):
        return str(inner)
    errors = exc.errors()[:5]
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or '<event>'}: {e['msg']}" for e in errors)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _row(topic: bytes, partition: int, offset: int, raw: bytes) -> bytes:
    """One ``events_queue`` row in RowBinary: String, UInt32, UInt64, String."""
    return b"".join((topic, struct.pack("<IQ", partition, offset), _varint(len(raw)), raw))


class Sink:
    def __init__(
        self,
        client: Client,
        *,
        bootstrap: str,
        group_id: str = "analytics-sink",
        topic_prefix: str = "",
        batch_rows: int = 10_000,
        batch_ms: int = 500,
        dead_letter: EventProducer | None = None,
        topics: Sequence[str] = SINK_TOPICS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._prefix = topic_prefix
        self._topics = [topic_prefix + t for t in topics]
        self._consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
        )
        self._batch_rows = batch_rows
        self._batch_s = batch_ms / 1000
        self._dead_letter = dead_letter
        self._validate = EventValidator()
        self._clock = clock
        self._topic_cells: dict[str, bytes] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._taken: dict[TopicPartition, int] = {}
        self.stats = SinkStats()

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, batch, insert, commit — until ``stop`` is set. What is pending when
        it is set is flushed first (a clean shutdown leaves nothing to re-deliver)."""
        pending = _Pending(started=self._clock())
        while not stop.is_set():
            remaining = (
                max(0.0, pending.started + self._batch_s - self._clock()) if pending.count else self._batch_s
            )
            batches = await self._consumer.getmany(
                timeout_ms=max(1, int(remaining * 1000)), max_records=max(1, self._batch_rows - pending.count)
            )
            if not pending.count:
                pending.started = self._clock()
            for tp, records in batches.items():
                self._take(pending, tp, records)
            self._update_lag()
            if pending.count and (
                pending.count >= self._batch_rows or self._clock() - pending.started >= self._batch_s
            ):
                await self._flush(pending, stop)
                pending = _Pending(started=self._clock())
        if pending.count:
            await self._flush(pending, stop)

    async def drain(self, timeout_s: float = 30.0) -> int:
        """Consume and flush until caught up with the broker (tests, the bench, replays);
        returns the records handled."""
        handled = 0
        deadline = self._clock() + timeout_s
        idle_polls = 0
        while self._clock() < deadline:
            pending = _Pending(started=self._clock())
            batches = await self._consumer.getmany(timeout_ms=200, max_records=self._batch_rows)
            for tp, records in batches.items():
                self._take(pending, tp, records)
            self._update_lag()
            if pending.count:
                await self._flush(pending, asyncio.Event())
                handled += pending.count
                idle_polls = 0
            elif self._consumer.assignment() and self.stats.total_lag() == 0:
                idle_polls += 1
                if idle_polls >= 2:
                    return handled
        return handled

    # -- batching --------------------------------------------------------------------

    def _take(
        self, pending: _Pending, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        topic = (
            tp.topic[len(self._prefix) :] if self._prefix and tp.topic.startswith(self._prefix) else tp.topic
        )
        cell = self._topic_cells.get(topic)
        if cell is None:
            encoded = topic.encode()
            cell = self._topic_cells[topic] = _varint(len(encoded)) + encoded
        for record in records:
            pending.count += 1
            pending.offsets[tp] = self._taken[tp] = record.offset + 1
            raw = record.value
            if raw is None:  # a tombstone on a compacted topic: the key was erased
                self.stats.tombstones += 1
                continue
            try:
                event = self._validate(raw)
            except InvalidEvent as exc:
                pending.dead.append((record, str(exc)))
                continue
            pending.rows.append(_row(cell, tp.partition, record.offset, raw))
            if isinstance(event, CustomersMerged):
                pending.merges.append(event)
            if len(pending.links) < _MAX_LINKS and record.headers:
                span_context = trace.get_current_span(extract_context(record.headers)).get_span_context()
                if span_context.is_valid:
                    pending.links.append(trace.Link(span_context))
        self.stats.records_in += len(records)

    async def _flush(self, pending: _Pending, stop: asyncio.Event) -> None:
        with _tracer.start_as_current_span(
            "sink insert",
            kind=trace.SpanKind.CONSUMER,
            links=pending.links,
            attributes={"messaging.batch.message_count": pending.count, "db.system": "clickhouse"},
        ):
            if pending.rows:
                await self._insert_with_retry(pending, stop)
            for record, reason in pending.dead:
                await self._send_to_dead_letter(record, reason)
            await self._consumer.commit(dict(pending.offsets))
            self._committed.update(pending.offsets)
        self.stats.batches += 1
        self.stats.last_batch_rows = len(pending.rows)
        self.stats.last_flush_at = time.time()
        self._update_lag()

    async def _insert_with_retry(self, pending: _Pending, stop: asyncio.Event) -> None:
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._insert, pending)
            except Exception as exc:
                self.stats.insert_failures += 1
                log.warning(
                    "ClickHouse insert of %d rows failed (retrying in %.1fs): %s",
                    len(pending.rows),
                    delay,
                    exc,
                )
                if stop.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.stats.last_insert_seconds = time.perf_counter() - started
            self.stats.rows_inserted += len(pending.rows)
            return

    def _insert(self, pending: _Pending) -> None:
        insert_rows(self._client, pending.rows)
        for merge in pending.merges:
            repoint_merged(self._client, merge)

    async def _send_to_dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        self.stats.dead_lettered += 1
        log.warning(
            "dead-lettering %s/%s@%s: %s", record.topic, record.partition, record.offset, reason[:300]
        )
        if self._dead_letter is None:
            return
        headers = [
            *(record.headers or ()),
            ("dlq.reason", reason[:2000].encode()),
            ("dlq.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ("dlq.consumer_group", b"analytics-sink"),
        ]
        await self._dead_letter.publish_raw(
            DEAD_LETTER.name, record.value or b"", key=record.key, headers=headers
        )

    def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            # Before this run's first commit on a partition, what was taken is the best guess.
            done = self._committed.get(tp, self._taken.get(tp))
            if done is None:
                continue
            self.stats.lag[f"{tp.topic}/{tp.partition}"] = max(0, highwater - done)


def insert_rows(client: Client, rows: Sequence[bytes]) -> None:
    """One insert of ``events_queue`` rows (RowBinary, see :func:`encode_row`)."""
    client.raw_insert(
        "events_queue", ["topic", "partition", "offset", "raw"], insert_block=b"".join(rows), fmt="RowBinary"
    )


def encode_row(topic: str, partition: int, offset: int, raw: bytes) -> bytes:
    encoded = topic.encode()
    return _row(_varint(len(encoded)) + encoded, partition, offset, raw)


def repoint_merged(client: Client, merge: CustomersMerged) -> None:
    """Keys that point at the merged customer now point at the survivor (a chain: C was
    merged into B, now B into A, so C's keys follow to A). Same version as the merge's
    own rows; an undo's later rows win over these."""
    client.command(
        "INSERT INTO identity_map (person_key, customer_id, version, is_deleted, source)"
        " SELECT person_key, {survivor:UUID}, {version:UInt64}, 0, 'repoint'"
        " FROM identity_current WHERE customer_id = {merged:UUID}",
        parameters={
            "survivor": str(merge.payload.survivor_id),
            "merged": str(merge.payload.merged_id),
            "version": int(merge.recorded_at.timestamp() * 1_000_000),
        },
    )


__all__ = [
    "SINK_TOPICS",
    "EventValidator",
    "Sink",
    "SinkStats",
    "encode_row",
    "insert_rows",
    "repoint_merged",
]
