"""Faust's aiokafka transport with a cheaper hand-off from fetcher to streams.

Faust's fetcher (``Consumer._drain_messages``) delivers each record with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four tasks are
created, scheduled, raced and cancelled *per record*, so that a rebalance can abandon a
delivery that is blocked on a full stream buffer. On two cores that bookkeeping costs
about a quarter of the resolver's time.

Here the delivery coroutine is started eagerly (what Python 3.12's eager tasks do): it
almost always finishes without suspending — the record is on the stream's queue — and
then nothing else is needed. Only when it does suspend (buffer full, flow suspended) is
the rest of it driven by a task raced against ``suspend_flow`` exactly as Faust does.
While partitions are being assigned, sought and recovered, Faust's own hand-off is used
unchanged: delivering eagerly in the window between a partition's resumption and the
seek to its committed offset left records undelivered after a restart (the SIGKILL
test caught it). The loop is otherwise Faust 0.15's own (gaps, commit-every, offsets).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, cast

import faust
from faust.sensors.monitor import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP, AppT, EventT, Message, StreamT
from mode import Service


class _Yielded:
    """Awaiting this hands a coroutine's pending yield (a future, or ``None`` for a bare
    ``sleep(0)``) to the running task, so the task waits for it as the coroutine would."""

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, None]:
        value = self._value
        if value is None or not value.done():
            yield value


async def _finish(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    """Drive a coroutine that suspended (on ``pending``) during its eager first step."""
    while True:
        try:
            await _Yielded(pending)
        except BaseException as exc:  # cancellation (a rebalance) reaches the coroutine
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            pending = coro.send(None)
        except StopIteration as stop:
            return stop.value


class EagerConsumer(faust_aiokafka.Consumer):
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust drives it
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        app = self.app
        recovered = cast(Any, app.tables).recovery.completed.is_set
        yield_every, since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield > yield_every:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # already delivered (Faust drops these too)
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    delivery = cast(Coroutine[Any, Any, Any], callback(message))
                    if not recovered() or app.rebalancing:
                        # Partitions are being (re)assigned, sought and recovered: Faust's
                        # own hand-off, unchanged.
                        await self.wait_first(delivery, self.suspend_flow.wait())
                    else:
                        try:
                            pending = delivery.send(None)
                        except StopIteration:
                            pass  # delivered without suspending: the usual case
                        else:
                            await self.wait_first(_finish(delivery, pending), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class LeanProducerBuffer(ProducerBuffer):
    """Faust's producer buffer with a cheaper check for room. The conductor awaits
    ``wait_until_ebb`` for every record it delivers, and the buffer's ``size`` looks up
    ``conf.producer_threaded`` through Faust's settings registry each time (about 2 % of
    the resolver's time). Only used for the unthreaded producer, whose buffer is
    ``pending``."""

    async def wait_until_ebb(self) -> None:
        if len(self.pending._queue) > self.max_messages:  # type: ignore[attr-defined]
            await super().wait_until_ebb()


class Producer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.app.conf.producer_threaded:
            self.buffer = LeanProducerBuffer(loop=self.loop, beacon=self.beacon)
            self.buffer.app = self.app


class Transport(faust_aiokafka.Transport):
    Consumer = EagerConsumer
    Producer = Producer


def lean_event_factory(app: AppT) -> None:
    """``app.create_event`` without a settings-registry lookup of ``conf.Event`` per
    record (another 2 %): the event class is read once."""
    event_class: Any = app.conf.Event

    def create_event(key: Any, value: Any, headers: Any, message: Message) -> EventT[Any]:
        return cast(EventT[Any], event_class(app, key, value, headers, message))

    app.create_event = create_event  # type: ignore[method-assign]


class LeanMonitor(Monitor):
    """Faust's monitor without its per-event timing (a dict, two clock reads and a
    ``str(stream)`` lookup per event, for statistics served by Faust's web views, which
    the resolver does not run). Counters and the per-partition bookkeeping the
    transport uses (end offsets, commits) are kept."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        self.messages_received_total += 1
        self.tp_read_offsets[tp] = offset

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any]
    ) -> dict[str, Any] | None:
        self.events_total += 1
        return None

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT[Any],
        event: EventT[Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        return None

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        return None


class RawSchema(faust.Schema):  # type: ignore[type-arg]
    """Keys and values as the bytes on the wire: the resolver parses each value itself
    (only the fields its fast path needs), so Faust's serializer registry is skipped on
    the way in (four calls per record). Sending still goes through the ``raw`` codec."""

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def loads_key(
        self, app: AppT, message: Message, *, loads: Callable[..., Any] | None = None, serializer: Any = None
    ) -> Any:
        return message.key

    def loads_value(
        self, app: AppT, message: Message, *, loads: Callable[..., Any] | None = None, serializer: Any = None
    ) -> Any:
        return message.value
