"""Import a retailer's historical transactions from CSV, through the ingestion pipeline.

One row per order line, rows of one order next to each other (how POS and shop exports
come). Columns (header required; unknown columns are ignored)::

    record_type      order (default) | return
    order_id         the order, or for a return the return id
    original_order_id  (returns) the order returned against
    channel          store | online | app
    occurred_at      ISO 8601 with offset; a bare date or time is read as Asia/Tokyo
    store_id register_id receipt_no shop_id shipping_prefecture coupon_code payment_method
                     (a store return's store_id is its order's store: ids are per store)
    member_no pos_card ec_account email phone line_id device     (identifiers seen)
    line_no sku category quantity unit_price discount tax          (the line)
    amount           (return lines) refunded for the line
    shipping order_discount total tax_total points_used           (order level, repeated)

Every order goes through the same validation, blind indexing, order ledger and Kafka
acknowledgement as the API's. Resumable: after each acknowledged chunk the byte offset
of the next unread order is written to ``<file>.import-state.json``; a rerun continues
there (and a replayed order is a harmless duplicate anyway: ids derive from the order).
Rejected orders are written, row by row with the reason, to ``<file>.rejected.csv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from engagement.csv_export import Chunk, read_header, read_into, rows_between
from engagement.ingest.pipeline import Ingestor, Source

#: Orders per chunk: each chunk is one pass through the pipeline and one resume point.
CHUNK = 2000
#: Events validated and built between two turns of the event loop.
PREPARE_SLICE = 250


@dataclass
class ImportReport:
    rows: int = 0
    orders: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected_orders: int = 0
    rejected_rows: int = 0
    resumed_at: int = 0
    errors: list[str] = field(default_factory=list)


async def import_csv(
    path: Path,
    ingestor: Ingestor,
    source: Source,
    *,
    progress: Callable[[int, int], None] | None = None,
    restart: bool = False,
    chunk_orders: int = CHUNK,
) -> ImportReport:
    """Import ``path``; ``progress(bytes_done, bytes_total)`` after each chunk.

    Three stages overlap: a process of its own reads and parses the file ahead
    (``csv_export``, up to two chunks); this one validates and builds chunk N+1 while
    chunk N is checked against the ledger, published and awaited. Chunks are committed
    one after the other, so a return finds an order of an earlier chunk in the ledger."""
    state_path = path.with_name(path.name + ".import-state.json")
    rejected_path = path.with_name(path.name + ".rejected.csv")
    state: dict[str, Any] = {}
    if state_path.exists() and not restart:
        state = json.loads(state_path.read_text())
    report = ImportReport(resumed_at=int(state.get("offset", 0)))
    total = path.stat().st_size  # noqa: ASYNC240
    context = multiprocessing.get_context("spawn")
    # A pipe, not a queue: once this process has closed its copy of the sending end, a
    # reader that dies (even halfway through a chunk) shows as end-of-file here instead
    # of a wait for the rest of the chunk that never ends. The pipe's buffer bounds how
    # far the reader runs ahead.
    receiving, sending = context.Pipe(duplex=False)
    reader = context.Process(
        target=read_into,
        args=(path, report.resumed_at, chunk_orders, sending),
        name="csv-reader",
        daemon=True,
    )
    reader.start()
    sending.close()
    offset = report.resumed_at
    committing: _Committing | None = None
    try:
        with rejected_path.open("a" if state else "w", encoding="utf-8") as out:
            rejected = csv.writer(out, lineterminator="\n")
            if not state:
                rejected.writerow([*read_header(path), "reject_field", "reject_reason"])

            async def settle(done: _Committing) -> None:
                # Shielded: Ctrl-C here lets the chunk land (see ``finally``).
                items = await asyncio.shield(done.task)
                _tally(path, done.orders, items, report, rejected)
                report.rows += done.rows
                report.orders += len(done.orders)
                out.flush()
                _save_state(state_path, done.end, report)  # a rerun starts after this chunk
                if progress:
                    progress(done.end, total)

            while True:
                chunk = await asyncio.to_thread(_next, receiving)
                if chunk is not None:
                    orders: list[list[Any]] = orjson.loads(chunk.orders)
                    events = [event for event, _, _, _ in orders if event is not None]
                    items: list[Any] = []
                    for start in range(0, len(events), PREPARE_SLICE):
                        items += ingestor.prepare(events[start : start + PREPARE_SLICE], source, start)
                        await asyncio.sleep(0)  # the producer sends, acks come in
                if committing is not None:
                    await settle(committing)
                    committing = None
                if chunk is None:
                    break
                task = asyncio.create_task(ingestor.commit(items))
                committing = _Committing(task, orders, chunk.end, chunk.rows)
                offset = chunk.end
    finally:
        try:
            if committing is not None and not committing.task.done():
                # Stopped (an error, Ctrl-C): let the chunk in flight land; a rerun
                # starts at it again and finds it in the ledger.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(committing.task)
        finally:
            reader.kill()
            reader.join()
            receiving.close()
    _save_state(state_path, offset, report, done=True)
    if progress:
        progress(total, total)
    return report


@dataclass
class _Committing:
    task: asyncio.Task[list[Any]]
    orders: list[list[Any]]
    end: int
    rows: int


def _next(receiving: Any) -> Chunk | None:
    """The reading process's next chunk; ``None`` at the end of the file."""
    try:
        got = receiving.recv()
    except (EOFError, OSError):  # OSError: it stopped halfway through sending a chunk
        raise RuntimeError("the CSV reading process stopped before the end of the file") from None
    if isinstance(got, tuple):
        raise ValueError(f"cannot read the file: {got[1]}")
    return cast(Chunk | None, got)


def _tally(
    path: Path, orders: list[list[Any]], items: list[Any], report: ImportReport, rejected: Any
) -> None:
    """Count a committed chunk; its rejected orders, row by row with the reason, to the
    rejects file. A chunk the broker did not fully acknowledge counts nothing and writes
    nothing: the rerun starts at it again."""
    if any(item.status == "unavailable" for item in items):
        raise ConnectionError("the event broker did not acknowledge; rerun to resume")
    results = iter(items)
    for event, error, first, end in orders:
        if event is None:
            reason = ("", error)
        else:
            item = next(results)
            if item.status in ("accepted", "duplicate"):
                report.accepted += item.status == "accepted"
                report.duplicates += item.status == "duplicate"
                continue
            first_error = item.errors[0] if item.errors else {"field": "", "reason": "rejected"}
            reason = (first_error["field"], "; ".join(e["reason"] for e in item.errors))
        cells = rows_between(path, first, end)
        report.rejected_orders += 1
        report.rejected_rows += len(cells)
        rejected.writerows([*values, *reason] for values in cells)


def _save_state(path: Path, offset: int, report: ImportReport, done: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"offset": offset, "done": done, "orders": report.orders, "rows": report.rows}))
    os.replace(tmp, path)
