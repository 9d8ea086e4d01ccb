"""The outbox relay: the event store's notification log, published to Kafka.

The event store *is* the outbox (ARCHITECTURE.md): a command commits its domain events
atomically, and this relay later publishes them. Per batch it

1. reads the notifications after its last recorded position,
2. translates each stored domain event into zero or more contract events,
3. produces them (``acks=all``, idempotent) and waits for every acknowledgement,
4. only then records the new position in a tracking table *of the same store*.

A crash between 3 and 4 re-sends the batch on restart: at-least-once, never a gap.
Contract event ids are derived from the store position, so the copies carry the same
``event_id`` and consumers drop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import ApplicationRecorder, Notification, Tracking, TrackingRecorder
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from crm_contracts.envelope import Event, TraceContext
from crm_platform.eventstore import TracingMapper
from crm_platform.kafka import EventProducer

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class StoredFact:
    """What a translator gets: the domain event and where it sits in the store."""

    domain_event: DomainEventProtocol[Any]
    notification_id: int
    trace: TraceContext | None
    #: The relay's name; translators use it with ``notification_id`` for stable event ids.
    source: str


class Translator(Protocol):
    def __call__(self, fact: StoredFact) -> Sequence[Event]: ...


class Producer(Protocol):
    async def publish_many(self, events: Sequence[Event], *, timeout: float | None = None) -> None: ...


@dataclass
class RelayStats:
    published: int = 0
    notifications: int = 0
    batches: int = 0
    last_position: int = 0
    started_at: float = field(default_factory=time.monotonic)


class OutboxRelay:
    """Publishes one application's notification log to Kafka, in order, at least once."""

    def __init__(
        self,
        *,
        name: str,
        recorder: ApplicationRecorder,
        mapper: TracingMapper,
        tracking: TrackingRecorder,
        translate: Translator,
        producer: Producer | EventProducer,
        batch_size: int = 1000,
        poll_interval_s: float = 0.1,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._recorder = recorder
        self._mapper = mapper
        self._tracking = tracking
        self._translate = translate
        self._producer = producer
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        # Test hook: called after the acks, before the position is recorded.
        self._on_published = on_published
        self.stats = RelayStats()

    def position(self) -> int:
        """The last notification id known to be on Kafka."""
        return self._tracking.max_tracking_id(self.name) or 0

    def lag(self) -> int:
        return (self._recorder.max_notification_id() or 0) - self.position()

    async def relay_once(self) -> int:
        """Publish the next batch and record its position; returns how many
        notifications it covered (0 when caught up)."""
        return await self.relay_available(max_batches=1)

    async def relay_available(self, *, max_batches: int | None = None, in_flight: int = 4) -> int:
        """Publish everything stored so far (or ``max_batches``), pipelined.

        Up to ``in_flight`` batches are on the wire at once, so translating the next
        batch overlaps the broker's acknowledgement of the previous ones. Positions are
        still recorded strictly in order, each only after its own batch was acknowledged.
        """
        position = self.position()
        pending: deque[tuple[int, int, int, asyncio.Future[Any]]] = deque()
        covered = batches = 0
        try:
            while max_batches is None or batches < max_batches:
                notifications = self._recorder.select_notifications(
                    start=position, limit=self._batch_size, inclusive_of_start=False
                )
                if not notifications:
                    break
                events = self._translate_all(notifications)
                acks = await self._send(events)
                position = notifications[-1].id
                pending.append((position, len(notifications), len(events), acks))
                batches += 1
                while len(pending) >= in_flight:
                    covered += await self._complete(pending.popleft())
            while pending:
                covered += await self._complete(pending.popleft())
        finally:
            for *_, acks in pending:
                acks.cancel()
        return covered

    async def _complete(self, batch: tuple[int, int, int, asyncio.Future[Any]]) -> int:
        last, notifications, events, acks = batch
        await acks
        if self._on_published is not None:
            self._on_published(last)
        self._tracking.insert_tracking(Tracking(application_name=self.name, notification_id=last))
        self.stats.notifications += notifications
        self.stats.published += events
        self.stats.batches += 1
        self.stats.last_position = last
        return notifications

    def _translate_all(self, notifications: Sequence[Notification]) -> list[tuple[Event, Mapping[str, str]]]:
        out: list[tuple[Event, Mapping[str, str]]] = []
        for notification in notifications:
            domain_event, meta = self._mapper.to_domain_event_with_meta(notification)
            trace_ctx = TraceContext(**meta) if "traceparent" in meta else None
            fact = StoredFact(domain_event, notification.id, trace_ctx, self.name)
            out.extend((event, meta) for event in self._translate(fact))
        return out

    async def _send(self, events: list[tuple[Event, Mapping[str, str]]]) -> asyncio.Future[Any]:
        """Hand a batch to the producer; the returned future resolves on every ack."""
        if not isinstance(self._producer, EventProducer):
            return asyncio.ensure_future(self._producer.publish_many([e for e, _ in events]))
        futures = []
        for event, meta in events:
            # Each record continues the trace of the request that stored the event.
            parent = propagate.extract(dict(meta)) if meta else None
            with _tracer.start_as_current_span(
                f"publish {event.TOPIC}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.destination.name": event.TOPIC,
                    "crm.event_id": str(event.event_id),
                },
            ):
                futures.append(await self._producer.enqueue(event))
        return asyncio.gather(*futures)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; back off while the broker is unavailable."""
        backoff = self._poll_interval_s
        while not stop.is_set():
            try:
                # Returns once caught up; then poll again after a short wait.
                await self.relay_available()
                backoff = self._poll_interval_s
            except Exception:  # the relay must outlive broker and store outages
                log.exception("relay %s failed; retrying in %.1fs", self.name, backoff)
                backoff = min(backoff * 2, 5.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)
