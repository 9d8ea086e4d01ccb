"""The resolver as a Faust (faust-streaming) application.

One agent consumes every topic whose events carry identifiers (``crm_contracts.topics``)
and hands each record to :class:`ResolverCore`. Its two tables live in RocksDB (through
rocksdict) with Kafka changelogs. They are *global* tables: an identifier appears on
events of many partitions (the topics are keyed by customer key, not by identifier), so
every worker keeps the whole map; each worker still only processes its own partitions of
the source topics, which is how the resolver scales.

Processing is at-least-once: offsets are committed after the agent handled the event
and the table writes it caused are on the broker. A replayed event is harmless: the fast
path only updates sighting times (and republishes the profile the first time a process
sees a customer, see ``ResolverCore._touch``), and a decision already recorded in the
identity store is found again instead of being made twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import faust
import orjson
from mode import CrashingSupervisor

from crm_contracts.registry import encode
from crm_contracts.topics import (
    DEAD_LETTER,
    IDENTIFIER_BEARING_TOPICS,
    IDENTITY_PROFILE,
    IDENTITY_RESOLVER_GROUP,
)
from crm_platform.settings import Settings
from identity.application import ConcurrentUpdate
from identity.bootstrap import Identity
from identity.resolver.core import ResolverCore, profile_from_snapshot, profile_snapshot
from identity.resolver.tables import KeyPartitionedGlobalTable
from identity.resolver.transport import LeanMonitor, RawSchema, Transport, lean_event_factory

log = logging.getLogger(__name__)

APP_ID = IDENTITY_RESOLVER_GROUP  # the Faust app id is its consumer group
BATCH = 500
BATCH_WINDOW_S = 0.05
RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}


def create_app(
    settings: Settings,
    identity: Identity,
    *,
    app_id: str = APP_ID,
    datadir: Path | None = None,
    offset_reset: str = "earliest",
) -> Any:
    """The Faust app; ``app_id`` names the consumer group and the changelog topics.

    A new consumer group starts from the beginning of every topic (``earliest``): a new
    resolver deployment resolves the whole history. ``latest`` skips it (tests)."""
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="rocksdb://",
        datadir=str(datadir or settings.service_dir("identity") / "resolver"),
        web_enabled=False,
        topic_partitions=6,
        topic_replication_factor=1,
        table_standby_replicas=0,
        producer_acks=-1,
        consumer_auto_offset_reset=offset_reset,
        processing_guarantee="at_least_once",
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # A worker that died is noticed in seconds, so its partitions move on quickly.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        # Larger fetches and buffers: fewer hand-offs between the consumer thread and
        # the agent per event.
        broker_max_poll_records=2000,
        stream_buffer_maxsize=16384,
        stream_wait_empty=False,
        monitor=LeanMonitor(),
    )
    # Faust's aiokafka transport with a cheaper per-record hand-off (see transport.py).
    app.transport = Transport(app.conf.broker_consumer, app)
    lean_event_factory(app)
    prefix = settings.kafka_topic_prefix
    sources = app.topic(*[prefix + t.name for t in IDENTIFIER_BEARING_TOPICS], schema=RawSchema())
    dead_letter = app.topic(prefix + DEAD_LETTER.name, **RAW)
    # Both tables are global (every worker holds all of them) and partitioned by key
    # (tables.py). The profile table's changelog *is* the unified profile topic: writing
    # a profile publishes its snapshot, once, with Kafka's own key partitioning.
    identifiers = _global_table(app, "identifier-owner", value_type=str)
    profiles = _global_table(
        app,
        "customer-profile",
        value_type=bytes,
        partitions=IDENTITY_PROFILE.partitions,
        changelog_topic=app.topic(
            prefix + IDENTITY_PROFILE.name,
            partitions=IDENTITY_PROFILE.partitions,
            compacting=True,
            deleting=False,
            **RAW,
        ),
    )
    state = LocalState(Path(app.conf.tabledir))
    core = ResolverCore(
        identity.app,
        ReadCache(identifiers),
        SnapshotValues(profiles),
        republish_on_first_sighting=not state.trusted,
    )
    app.resolver_core = core  # type: ignore[attr-defined]  # for benchmarks and tests
    app.resolver_state = state  # type: ignore[attr-defined]  # see LocalState.stopped

    # A crash of the agent must stop the worker (and be restarted by the supervisor)
    # rather than leave a partition silently unconsumed.
    @app.agent(sources, supervisor_strategy=CrashingSupervisor)
    async def resolve(stream: Any) -> None:
        # Batches amortise Faust's per-event overhead; every event of a batch is still
        # handled in order and acknowledged only after the batch is done.
        async for events in stream.take_events(BATCH, within=BATCH_WINDOW_S):
            # Table writes belong to an event (Faust's RocksDB store files a key under the
            # current event's partition); the batch's last event stands for the batch.
            stream._set_current_event(events[-1])
            values = [event.value for event in events]
            state.in_flight = True
            try:
                outcomes = _handle(core, values)
            except Exception:
                # Faust acknowledges (and then commits) the record an agent failed on, even
                # under a crashing supervisor: the event would be lost. Stop the process
                # before that can happen; the supervisor restarts it and Kafka redelivers
                # from the last commit (at-least-once, decisions are idempotent).
                log.critical("resolver failed on a batch; exiting so it is redelivered", exc_info=True)
                logging.shutdown()
                os._exit(70)
            for event, outcome in zip(events, outcomes, strict=True):
                if outcome.path == "invalid":
                    message = event.message
                    await dead_letter.send(
                        value=event.value,
                        headers={
                            "dlq.reason": (outcome.error or "").encode(),
                            "dlq.source": f"{message.topic}/{message.partition}/{message.offset}".encode(),
                            "dlq.consumer_group": app_id.encode(),
                        },
                    )
            # The batch is acknowledged (and its offsets become committable) when this
            # body returns: not before the table writes it caused are on the broker.
            try:
                await identifiers.confirm_changelog()
                await profiles.confirm_changelog()
            except Exception:
                log.critical("a table write was not produced; exiting so it is redelivered", exc_info=True)
                logging.shutdown()
                os._exit(70)
            state.in_flight = False

    return app


class LocalState:
    """Whether the local RocksDB tables hold only what their changelogs hold.

    A process that stops cleanly between batches leaves a marker next to the tables;
    the next process removes it as it starts. Without the marker (the last process was
    killed, or crashed mid-batch) the tables may hold writes whose changelog records were
    never produced, and the resolver republishes each profile on its first sighting
    (``ResolverCore._touch``). Tables that do not exist yet are restored from the
    changelogs, so they are trusted too."""

    MARKER = "clean-shutdown"

    def __init__(self, tabledir: Path) -> None:
        self._marker = tabledir / self.MARKER
        fresh = not tabledir.exists() or not any(p.name != self.MARKER for p in tabledir.iterdir())
        self.trusted = fresh or self._marker.exists()
        self._marker.unlink(missing_ok=True)
        #: a batch is between its first table write and the confirmation of its changelog
        self.in_flight = False

    def stopped(self) -> None:
        """Called once the worker has stopped: leaves the marker unless a batch was cut
        short."""
        if not self.in_flight and self._marker.parent.exists():
            self._marker.touch()


class ReadCache(MutableMapping[str, str]):
    """An in-memory read-through cache in front of a table, for the hot path.

    Writes go through to the table at once. Entries live ``ttl_s`` seconds, which bounds
    how long a decision taken by *another* worker (arriving in the table through its
    changelog) can be missed here; a missed one only sends an event to the identity
    application, which finds the recorded decision.
    """

    def __init__(
        self, table: MutableMapping[str, str], max_entries: int = 500_000, ttl_s: float = 30.0
    ) -> None:
        self._table = table
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s

    def get(self, key: str, default: Any = None) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self._ttl:
            value = hit[1]
        else:
            value = self._table.get(key)
            self._put(key, value, now)
        return default if value is None else value

    def _put(self, key: str, value: str | None, now: float) -> None:
        self._cache[key] = (now, value)
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return str(value)

    def __setitem__(self, key: str, value: str) -> None:
        self._table[key] = value
        self._put(key, value, time.monotonic())

    def __delitem__(self, key: str) -> None:
        self._cache.pop(key, None)
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def _global_table(app: Any, name: str, value_type: type, **options: Any) -> Any:
    """Register a key-partitioned global table (``app.GlobalTable`` with our class);
    keys and values are stored and published as they are (UTF-8 text, bytes)."""
    schema: Any = faust.Schema(
        key_type=str, value_type=value_type, key_serializer="raw", value_serializer="raw"
    )
    table = KeyPartitionedGlobalTable(
        app,
        name=name,
        key_type=str,
        value_type=value_type,
        schema=schema,
        beacon=app.tables.beacon,
        **options,
    )
    # Faust picks serializers from the types (JSON for str); the changelog of the
    # profile table is a public topic whose keys are plain customer ids.
    table.key_serializer = table.value_serializer = "raw"
    return app.tables.add(table)


class SnapshotValues(MutableMapping[str, dict[str, Any]]):
    """The profile table seen as profiles; each value is stored as the encoded
    ``customer.profile_snapshot`` event, which is what its changelog publishes."""

    def __init__(self, table: MutableMapping[str, bytes]) -> None:
        self._table = table

    def __getitem__(self, key: str) -> dict[str, Any]:
        return profile_from_snapshot(orjson.loads(self._table[key]))

    def get(self, key: str, default: Any = None) -> Any:
        raw = self._table.get(key)
        return default if raw is None else profile_from_snapshot(orjson.loads(raw))

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self._table[key] = encode(profile_snapshot(key, value))

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def _handle(core: ResolverCore, values: list[bytes]) -> list[Any]:
    """Handle a batch; a decision that keeps losing races with another writer (the API, a
    second worker) is retried one record at a time."""
    for attempt in range(5):
        try:
            return core.handle_batch(values)
        except ConcurrentUpdate:
            log.info("decision raced another writer; retrying (%d)", attempt + 1)
    return [core.handle_raw(v) for v in values]
