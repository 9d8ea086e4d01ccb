"""The resolver as a Faust (faust-streaming) application.

One agent consumes every topic whose events carry identifiers (``crm_contracts.topics``)
and hands each record to :class:`ResolverCore`. Its two tables live in RocksDB (through
rocksdict) with Kafka changelogs. They are *global* tables: an identifier appears on
events of many partitions (the topics are keyed by customer key, not by identifier), so
every worker keeps the whole map; each worker still only processes its own partitions of
the source topics, which is how the resolver scales.

Processing is at-least-once: offsets are committed after the agent handled the event.
A replayed event is harmless: the fast path only updates sighting times, and a decision
already recorded in the identity store is found again instead of being made twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import faust
import orjson
from mode import CrashingSupervisor

from crm_contracts.registry import InvalidEvent, UnknownEventType, encode
from crm_contracts.topics import DEAD_LETTER, IDENTIFIER_BEARING_TOPICS, IDENTITY_PROFILE
from crm_platform.settings import Settings
from identity.application import ConcurrentUpdate
from identity.bootstrap import Identity
from identity.resolver.core import ResolverCore

log = logging.getLogger(__name__)

APP_ID = "identity-resolver"
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
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # A worker that died is noticed in seconds, so its partitions move on quickly.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    prefix = settings.kafka_topic_prefix
    sources = app.topic(*[prefix + t.name for t in IDENTIFIER_BEARING_TOPICS], **RAW)
    profile_topic = app.topic(prefix + IDENTITY_PROFILE.name, **RAW)
    dead_letter = app.topic(prefix + DEAD_LETTER.name, **RAW)
    identifiers = app.GlobalTable("identifier-owner", key_type=str, value_type=str)
    profiles = app.GlobalTable("customer-profile", key_type=str, value_type=bytes)
    core = ResolverCore(identity.app, identifiers, JsonValues(profiles))
    app.resolver_core = core  # type: ignore[attr-defined]  # for benchmarks and tests

    # A crash of the agent must stop the worker (and be restarted by the supervisor)
    # rather than leave a partition silently unconsumed.
    @app.agent(sources, supervisor_strategy=CrashingSupervisor)
    async def resolve(stream: Any) -> Any:
        async for event in stream.events():
            value: bytes = event.value
            try:
                outcome = _handle(core, value)
            except (InvalidEvent, UnknownEventType, ValueError, KeyError) as exc:
                message = event.message
                await dead_letter.send(
                    key=event.key,
                    value=value,
                    headers={
                        "dlq.reason": str(exc)[:2000].encode(),
                        "dlq.source": f"{message.topic}/{message.partition}/{message.offset}".encode(),
                        "dlq.consumer_group": app_id.encode(),
                    },
                )
                continue
            for snapshot in outcome.snapshots:
                await profile_topic.send(key=snapshot.customer_key.encode(), value=encode(snapshot))
            yield outcome.customer_id

    return app


class JsonValues(MutableMapping[str, dict[str, Any]]):
    """A view of a bytes-valued table holding JSON objects."""

    def __init__(self, table: MutableMapping[str, bytes]) -> None:
        self._table = table

    def __getitem__(self, key: str) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self._table[key])
        return value

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self._table[key] = orjson.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def _handle(core: ResolverCore, value: bytes) -> Any:
    """Retry a decision that lost a race with another writer (the API, a second worker)."""
    for attempt in range(5):
        try:
            return core.handle_raw(value)
        except ConcurrentUpdate:
            log.info("decision raced another writer; retrying (%d)", attempt + 1)
    return core.handle_raw(value)
