"""Contract validation of the sink's batches, in worker processes.

Validating a record against its contract (pydantic, from the JSON bytes) is most of the
CPU the sink spends per record, and it holds the GIL. With ClickHouse embedded (chDB
runs the sink inside the API's process) that time would be taken from the sink's
consumer loop and from the API alike. So a batch is checked in a separate process
(``CRM_SINK_VALIDATORS`` of them, spawned: the parent has chDB's threads, which a fork
must not copy) while the parent consumes the next batch and inserts the previous one.
The worker returns what the parent needs and nothing more: the valid records already
laid out as ``events_queue`` rows, the invalid ones with their reasons, the merges, and
the business days of the orders. ``processes=0`` checks in a thread of the calling
process instead (tests, tools).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Annotated, Any, Union

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from analytics.store import daily
from crm_contracts.envelope import Event
from crm_contracts.events.identity import CustomersMerged
from crm_contracts.registry import InvalidEvent, UnknownEventType, registry

log = logging.getLogger(__name__)

#: One partition's records of a batch: its topic (without prefix) and the values.
Group = tuple[str, Sequence[bytes]]


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


@dataclass(slots=True)
class Checked:
    """A checked batch."""

    #: the valid records as ``events_queue`` rows (JSON lines), in batch order
    block: bytes = b""
    valid: int = 0
    #: (group, index in the group, reason) of each invalid record
    dead: list[tuple[int, int, str]] = field(default_factory=list)
    merges: list[CustomersMerged] = field(default_factory=list)
    #: business days of the orders and returns: their kpi_daily rows are redone
    days: set[date] = field(default_factory=set)


def topic_head(topic: str) -> bytes:
    return b'{"_topic":' + orjson.dumps(topic) + b","


def row(head: bytes, raw: bytes) -> bytes:
    """One ``events_queue`` row: the record's own JSON with ``_topic`` put in front."""
    return head + raw.lstrip()[1:].rstrip() + b"\n"


@lru_cache(maxsize=1)
def _validator() -> EventValidator:
    return EventValidator()  # once per process


def check_groups(groups: Sequence[Group]) -> Checked:
    """Validate every record of ``groups``; the work a checker process does."""
    validate = _validator()
    out = Checked()
    rows: list[bytes] = []
    for g, (topic, values) in enumerate(groups):
        head = topic_head(topic)
        for i, raw in enumerate(values):
            try:
                event = validate(raw)
            except InvalidEvent as exc:
                out.dead.append((g, i, str(exc)))
                continue
            rows.append(row(head, raw))
            if isinstance(event, CustomersMerged):
                out.merges.append(event)
            else:
                day = daily.order_day(event)
                if day is not None:
                    out.days.add(day)
    out.block = b"".join(rows)
    out.valid = len(rows)
    return out


def _warm_up() -> None:
    """Build the validator as the worker starts, not on its first batch."""
    check_groups(())


def _start_worker(parent: int) -> None:
    """A worker process's start. A Ctrl-C in the terminal, or a supervisor's SIGTERM,
    reaches the whole process group: the worker leaves stopping to its parent, which
    checks its last batch and then shuts the pool down. A parent that died without
    doing so (SIGKILL, out of memory) takes its workers with it within a second."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    _warm_up()


class Checker:
    """Checks batches in ``processes`` worker processes (or, with 0, in a thread)."""

    def __init__(self, processes: int = 1) -> None:
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self._processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def start(self) -> None:
        """Start the worker processes and let them build their validators, so that the
        first batch is not held up by it."""
        if self._processes and self._pool is None:
            loop = asyncio.get_running_loop()
            pool = self._executor()
            await asyncio.gather(*(loop.run_in_executor(pool, _warm_up) for _ in range(self._processes)))

    async def check(self, groups: Sequence[Group]) -> Checked:
        if self._processes == 0:
            return await asyncio.to_thread(check_groups, groups)
        for attempt in (1, 2):
            try:
                return await self._check_in_pool(groups)
            except BrokenProcessPool:
                # A worker died (killed, out of memory): start new ones and check again.
                log.warning("a sink checker process died; restarting the pool (attempt %d)", attempt)
                self.close()
        return await self._check_in_pool(groups)

    async def _check_in_pool(self, groups: Sequence[Group]) -> Checked:
        loop = asyncio.get_running_loop()
        pool = self._executor()
        if self._processes == 1:
            return await loop.run_in_executor(pool, check_groups, groups)
        # Each group (a partition's records) split into one slice per process.
        n = self._processes
        slices: list[list[Group]] = [[] for _ in range(n)]
        starts: list[list[int]] = [[] for _ in range(n)]
        for topic, values in groups:
            step = -(-len(values) // n)
            for k in range(n):
                slices[k].append((topic, values[k * step : (k + 1) * step]))
                starts[k].append(k * step)
        parts = await asyncio.gather(*(loop.run_in_executor(pool, check_groups, s) for s in slices))
        # Slice k of a partition precedes slice k+1 in the block, so each partition's
        # records keep their order (the only order there is across partitions).
        out = Checked()
        for k, part in enumerate(parts):
            out.block += part.block
            out.valid += part.valid
            out.dead += [(g, starts[k][g] + i, reason) for g, i, reason in part.dead]
            out.merges += part.merges
            out.days |= part.days
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


__all__ = ["Checked", "Checker", "EventValidator", "check_groups", "row", "topic_head"]
