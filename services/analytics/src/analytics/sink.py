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
  (their JSON, one per line, with ``_topic`` put in front) into the ``events_queue``
  Null table, which ClickHouse parses natively;
  materialised views turn them into ``events``, ``orders``, ``identity_map`` and
  ``customers`` (see ``store/sql``). What is done here after an insert: re-pointing,
  after a merge, the keys that pointed at the merged customer (a merge chain);
  recomputing the daily KPI aggregates of the days the batch's orders fell on
  (``store/daily.py``); rebuilding the in-memory identity lookup when it has grown
  (``store/lookup.py``).
* **Observability:** a span per batch linked to the producers' traces (W3C context from
  the Kafka headers), and :class:`SinkStats` with consumer lag per partition, served at
  ``/metrics`` by the API (embedded sink) or on the standalone sink's own port
  (``entrypoints/metrics.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from clickhouse_connect.driver.client import Client
from opentelemetry import trace

from analytics.checking import Checked, Checker, Group, row, topic_head
from analytics.store import daily, lookup, maintenance
from crm_contracts.events.identity import CustomersMerged
from crm_contracts.topics import ALL_TOPICS, ANALYTICS_SINK_GROUP, DEAD_LETTER
from crm_platform.kafka import EventProducer
from crm_platform.settings import Settings
from crm_platform.telemetry import extract_context

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("analytics.sink")

#: Every topic analytics reads (the contracts name analytics.sink among the consumers).
SINK_TOPICS: tuple[str, ...] = tuple(t.name for t in ALL_TOPICS if "analytics.sink" in t.consumers)
_MAX_LINKS = 64
#: identity_lookup's growth is checked at most this often, and rebuilt past twice its
#: size after the last build plus this slack
LOOKUP_CHECK_S = 60.0
LOOKUP_SLACK_BYTES = 64 * 2**20
#: quiet partitions of orders are looked for this often, and merged after this long quiet
COMPACT_EVERY_S = 300.0
COMPACT_QUIET_S = 600.0
#: A sink with records waiting and no flush for this long is reported stalled (readiness)
STALL_S = 120.0


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
    #: when this run took its first record (wall clock; 0 before)
    first_taken_at: float = 0.0
    #: topic/partition → records on the broker not yet committed by the sink
    lag: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def total_lag(self) -> int:
        return sum(self.lag.values())

    def stalled(self, now: float, after_s: float = STALL_S) -> bool:
        """Records are waiting and nothing was flushed for ``after_s`` seconds (since the
        start, before the first flush): ClickHouse refusing inserts, a consumer stuck."""
        return self.total_lag() > 0 and now - max(self.last_flush_at, self.started_at) > after_s


@dataclass(slots=True)
class _Pending:
    #: per partition taken from: its topic (without prefix) and the record values...
    groups: list[Group] = field(default_factory=list)
    #: ...and the records themselves (for dead letters)
    records: list[list[ConsumerRecord[bytes, bytes]]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    links: list[trace.Link] = field(default_factory=list)
    link_tries: int = 0
    started: float = 0.0
    count: int = 0


#: How ClickHouse reads the queue's JSON lines: objects (the payload) as their text,
#: ISO 8601 instants with a zone, unknown envelope fields (trace, …) skipped.
_INSERT_SETTINGS = {
    "input_format_json_read_objects_as_strings": 1,
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 1,
}


class Sink:
    def __init__(
        self,
        client: Client,
        *,
        bootstrap: str,
        group_id: str = ANALYTICS_SINK_GROUP,
        topic_prefix: str = "",
        batch_rows: int = 25_000,
        batch_ms: int = 500,
        dead_letter: EventProducer | None = None,
        topics: Sequence[str] = SINK_TOPICS,
        clock: Callable[[], float] = time.monotonic,
        validators: int = 0,
        assign: bool = False,
    ) -> None:
        self._client = client
        self._group = group_id
        self._prefix = topic_prefix
        self._topics = [topic_prefix + t for t in topics]
        #: ``assign``: read every partition of the topics from the start without joining
        #: the group (a replay: no join to wait for, no rebalance); commits still go to it
        self._assign = assign
        self._bootstrap = bootstrap
        self._consumer_started = False
        self._consumer = AIOKafkaConsumer(
            *(() if assign else self._topics),
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
        #: contract validation, in ``validators`` worker processes (0: a thread here)
        self._checker = Checker(validators)
        self._clock = clock
        self._committed: dict[TopicPartition, int] = {}
        self._taken: dict[TopicPartition, int] = {}
        #: the partitions whose lag is followed (the consumer's assignment, once learnt)
        self._followed: set[TopicPartition] = set()
        self._lookup_baseline = 0
        self._lookup_checked = 0.0
        self._compacted_at = clock()
        self.stats = SinkStats()

    @classmethod
    def for_settings(cls, settings: Settings, client: Client, dead_letter: EventProducer | None) -> Sink:
        """The sink as a deployment configures it (``CRM_SINK_*``, the topic prefix, the
        consumer group that goes with the ClickHouse it fills)."""
        return cls(
            client,
            bootstrap=settings.kafka_bootstrap,
            group_id=settings.analytics_sink_group,
            topic_prefix=settings.kafka_topic_prefix,
            batch_rows=settings.sink_batch_rows,
            batch_ms=settings.sink_batch_ms,
            dead_letter=dead_letter,
            validators=settings.sink_validators,
        )

    async def warm_up(self) -> None:
        """Start the checker processes (a second: they import the contracts). Needs no
        table, so a replay does it while the tables are rebuilt; :meth:`start` does it
        otherwise."""
        await self._checker.start()

    async def start(self) -> None:
        await asyncio.gather(asyncio.to_thread(self._prepare_lookup), self._checker.start())
        await self.open()

    async def open(self) -> None:
        """Connect to the broker (and, with ``assign``, take every partition). Needs no
        table either: a replay connects while the tables are rebuilt."""
        if self._consumer_started:
            return
        await self._consumer.start()
        self._consumer_started = True
        if self._assign:
            self._consumer.assign(await _partitions(self._bootstrap, self._topics))

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """Where each partition of the assignment ends now (after :meth:`open`)."""
        partitions = list(self._consumer.assignment())
        return dict(await self._consumer.end_offsets(partitions)) if partitions else {}

    def _prepare_lookup(self) -> None:
        if lookup.ensure(self._client):
            log.info("identity_lookup was empty: rebuilt from identity_map")
        self._lookup_baseline = lookup.size(self._client).bytes
        self._lookup_checked = self._clock()

    async def stop(self) -> None:
        await self._consumer.stop()
        self._checker.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, batch, insert, commit — until ``stop`` is set. What is pending when
        it is set is flushed first (a clean shutdown leaves nothing to re-deliver)."""
        await self._pump(stop, until_caught_up=False)

    async def drain(self, timeout_s: float = 30.0, until: Mapping[TopicPartition, int] | None = None) -> int:
        """Consume and flush until caught up with the broker (tests, the bench, replays),
        or, given ``until``, as soon as every partition has been read to its offset
        there; returns the records handled."""
        return await self._pump(asyncio.Event(), until_caught_up=True, timeout_s=timeout_s, until=until)

    def _reached(self, until: Mapping[TopicPartition, int]) -> bool:
        return all(self._taken.get(tp, 0) >= end for tp, end in until.items())

    async def _pump(
        self,
        stop: asyncio.Event,
        *,
        until_caught_up: bool,
        timeout_s: float | None = None,
        until: Mapping[TopicPartition, int] | None = None,
    ) -> int:
        """The loop, a pipeline: while batch N is inserted (in a thread: ClickHouse works
        outside the GIL), batch N+1 is validated (in a checker process) and batch N+2 is
        consumed. Batches are inserted and committed in order, each commit only after
        its own insert."""
        handled = 0
        flights: list[asyncio.Task[None]] = []
        pending = _Pending(started=self._clock())
        deadline = None if timeout_s is None else self._clock() + timeout_s
        idle = 0

        async def hand_off(batch: _Pending) -> None:
            nonlocal handled
            while len(flights) >= 2:
                await flights.pop(0)
            handled += batch.count
            checked = asyncio.ensure_future(self._checker.check(batch.groups))
            previous = flights[-1] if flights else None
            flights.append(asyncio.create_task(self._flush(batch, checked, previous, stop)))

        async def land() -> None:
            while flights:
                await flights.pop(0)

        try:
            while not stop.is_set() and (deadline is None or self._clock() < deadline):
                age = self._clock() - pending.started if pending.count else 0.0
                batches = await self._consumer.getmany(
                    timeout_ms=max(1, int((self._batch_s - age) * 1000)) if not until_caught_up else 200,
                    max_records=max(1, self._batch_rows - pending.count),
                )
                if not pending.count:
                    pending.started = self._clock()
                got = 0
                for tp, records in batches.items():
                    self._take(pending, tp, records)
                    got += len(records)
                if self._consumer.assignment() != self._followed:
                    await self._follow_assignment()
                self._update_lag()
                full = pending.count >= self._batch_rows
                if pending.count and (full or self._clock() - pending.started >= self._batch_s or not got):
                    await hand_off(pending)
                    pending = _Pending(started=self._clock())
                if until is not None and self._reached(until):
                    break
                if until_caught_up and not got and not pending.count:
                    await land()
                    self._update_lag()
                    caught_up = self._consumer.assignment() and self.stats.total_lag() == 0
                    idle = idle + 1 if caught_up else 0
                    if idle >= 2:
                        break
            if pending.count:
                await hand_off(pending)
        finally:
            await land()
        return handled

    # -- batching --------------------------------------------------------------------

    def _take(
        self, pending: _Pending, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> None:
        """Add a partition's records to the batch (validation comes at hand-off)."""
        topic = (
            tp.topic[len(self._prefix) :] if self._prefix and tp.topic.startswith(self._prefix) else tp.topic
        )
        kept = [r for r in records if r.value is not None]
        # A tombstone on a compacted topic (the key was erased) has nothing to insert.
        self.stats.tombstones += len(records) - len(kept)
        if kept:
            pending.groups.append((topic, [r.value for r in kept]))
            pending.records.append(kept)
        pending.count += len(records)
        pending.offsets[tp] = self._taken[tp] = records[-1].offset + 1
        # Span links to the producers' traces: the first few records with headers.
        for record in kept:
            if pending.link_tries >= _MAX_LINKS:
                break
            if record.headers:
                pending.link_tries += 1
                span_context = trace.get_current_span(extract_context(record.headers)).get_span_context()
                if span_context.is_valid:
                    pending.links.append(trace.Link(span_context))
        if not self.stats.first_taken_at:
            self.stats.first_taken_at = time.time()
        self.stats.records_in += len(records)

    async def _flush(
        self,
        pending: _Pending,
        checking: asyncio.Future[Checked],
        previous: asyncio.Task[None] | None,
        stop: asyncio.Event,
    ) -> None:
        checked = await checking
        if previous is not None:
            await previous  # inserts, merges and commits go in batch order
        with _tracer.start_as_current_span(
            "sink insert",
            kind=trace.SpanKind.CONSUMER,
            links=pending.links,
            attributes={"messaging.batch.message_count": pending.count, "db.system": "clickhouse"},
        ):
            if checked.valid:
                await self._insert_with_retry(checked, stop)
            for group, index, reason in checked.dead:
                await self._send_to_dead_letter(pending.records[group][index], reason)
            await self._consumer.commit(dict(pending.offsets))
            self._committed.update(pending.offsets)
        self.stats.batches += 1
        self.stats.last_batch_rows = checked.valid
        self.stats.last_flush_at = time.time()
        self._update_lag()

    async def _insert_with_retry(self, checked: Checked, stop: asyncio.Event) -> None:
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._insert, checked)
            except Exception as exc:
                self.stats.insert_failures += 1
                log.warning(
                    "ClickHouse insert of %d rows failed (retrying in %.1fs): %s",
                    checked.valid,
                    delay,
                    exc,
                )
                if stop.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.stats.last_insert_seconds = time.perf_counter() - started
            self.stats.rows_inserted += checked.valid
            return

    def _insert(self, checked: Checked) -> None:
        insert_block(self._client, checked.block)
        if checked.merges:
            repoint_merged(self._client, *checked.merges)
        daily.refresh(self._client, checked.days)
        self._compact_lookup()
        self._compact_orders()

    def _compact_orders(self) -> None:
        """Every few minutes: merge the quiet partitions of orders into one part each
        (store/maintenance.py), between batches."""
        now = self._clock()
        if now - self._compacted_at < COMPACT_EVERY_S:
            return
        self._compacted_at = now
        started = time.perf_counter()
        done = maintenance.compact(self._client, quiet_s=COMPACT_QUIET_S)
        if done:
            log.info("orders: compacted %s in %.1fs", ", ".join(done), time.perf_counter() - started)

    def _compact_lookup(self) -> None:
        """Once a minute at most: when overwritten rows have doubled identity_lookup's
        memory since it was last built, build it afresh (between batches, so no write
        of this sink races the swap)."""
        now = self._clock()
        if now - self._lookup_checked < LOOKUP_CHECK_S:
            return
        self._lookup_checked = now
        grown = lookup.size(self._client).bytes
        if grown > 2 * self._lookup_baseline + LOOKUP_SLACK_BYTES:
            started = time.perf_counter()
            self._lookup_baseline = lookup.rebuild(self._client).bytes
            log.info(
                "identity_lookup rebuilt: %.0f → %.0f MiB in %.1fs",
                grown / 2**20,
                self._lookup_baseline / 2**20,
                time.perf_counter() - started,
            )

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
            ("dlq.consumer_group", self._group.encode()),
        ]
        await self._dead_letter.publish_raw(
            DEAD_LETTER.name, record.value or b"", key=record.key, headers=headers
        )

    async def _follow_assignment(self) -> None:
        """Lag for every partition assigned, from the start: a partition newly assigned
        (the sink restarted with a backlog, a rebalance) is known from the group's
        committed offset — or the log's start when the group has none — before any of
        its records is taken; a partition taken away leaves the figures."""
        assigned = set(self._consumer.assignment())
        for tp in self._followed - assigned:
            self._committed.pop(tp, None)
            self._taken.pop(tp, None)
            self.stats.lag.pop(f"{tp.topic}/{tp.partition}", None)
        new = assigned - self._followed
        if new:
            try:
                starts = await self._consumer.beginning_offsets(list(new))
                for tp in new:
                    committed = await self._consumer.committed(tp)
                    self._committed.setdefault(tp, committed if committed is not None else starts[tp])
            except Exception as exc:  # a figure, not the pipeline: learnt at the next change
                log.warning("could not read the committed offsets of %d partitions: %s", len(new), exc)
                return
        self._followed = assigned

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


async def _partitions(bootstrap: str, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of the topics; a topic missing on the broker is an error."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    missing = sorted(d["topic"] for d in described if d.get("error_code") or not d.get("partitions"))
    if missing:
        raise RuntimeError(f"topics missing on the broker: {', '.join(missing)}")
    return [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]


def dead_letter_producer(settings: Settings) -> EventProducer:
    return EventProducer(
        settings.kafka_bootstrap, client_id="analytics-sink-dlq", topic_prefix=settings.kafka_topic_prefix
    )


def insert_rows(client: Client, rows: Sequence[bytes]) -> None:
    """One insert of ``events_queue`` rows (JSON lines, see :func:`encode_row`)."""
    insert_block(client, b"".join(rows))


def insert_block(client: Client, block: bytes) -> None:
    client.raw_insert("events_queue", None, insert_block=block, fmt="JSONEachRow", settings=_INSERT_SETTINGS)


def encode_row(topic: str, partition: int, offset: int, raw: bytes) -> bytes:
    """A record as the sink writes it (``partition``/``offset`` are not stored)."""
    del partition, offset
    return row(topic_head(topic), raw)


def repoint_merged(client: Client, *merges: CustomersMerged) -> None:
    """Keys that point at a merged customer now point at its survivor — a chain: C was
    merged into B, now B into A, so C's keys follow to A. One statement for a batch's
    merges (chains inside the batch followed to their end), each key's new row at the
    version of the merge that moved it; an undo's later rows win over these."""
    survivor: dict[str, str] = {}
    version: dict[str, int] = {}
    for merge in merges:
        merged, into = str(merge.payload.merged_id), str(merge.payload.survivor_id)
        survivor[merged] = into
        version[merged] = int(merge.recorded_at.timestamp() * 1_000_000)
    final: dict[str, tuple[str, int]] = {}
    for merged, into in survivor.items():
        end, at, seen = into, version[merged], {merged}
        while end in survivor and end not in seen:  # a later merge in the batch took the survivor
            seen.add(end)
            end, at = survivor[end], max(at, version[end])
        final[merged] = (end, at)
    ids = sorted(final)
    # Candidates by customer (a primary-key lookup in identity_by_customer), confirmed
    # as still owned by the merged customer in the map: no scan of the whole map.
    client.command(
        "INSERT INTO identity_map (person_key, customer_id, version, is_deleted, source)"
        " SELECT person_key,"
        " toUUID(transform(owner, {merged:Array(String)}, {survivors:Array(String)}, '')),"
        " transform(owner, {merged:Array(String)}, {versions:Array(UInt64)}, toUInt64(0)),"
        " 0, 'repoint'"
        " FROM ("
        "   SELECT person_key, toString(argMax(customer_id, version)) AS owner,"
        "          argMax(is_deleted, version) AS gone"
        "   FROM identity_map"
        "   WHERE key_hash IN (SELECT cityHash64(person_key) FROM identity_by_customer"
        "                      WHERE customer_id IN {merged:Array(UUID)})"
        "     AND person_key IN (SELECT person_key FROM identity_by_customer"
        "                        WHERE customer_id IN {merged:Array(UUID)})"
        "   GROUP BY person_key"
        " )"
        " WHERE gone = 0 AND owner IN {merged:Array(String)}",
        parameters={
            "merged": ids,
            "survivors": [final[i][0] for i in ids],
            "versions": [final[i][1] for i in ids],
        },
    )


__all__ = [
    "SINK_TOPICS",
    "Sink",
    "SinkStats",
    "encode_row",
    "insert_block",
    "insert_rows",
    "repoint_merged",
]
