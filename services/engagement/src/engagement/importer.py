"""Import a retailer's historical transactions from CSV, through the ingestion pipeline.

One row per order line, rows of one order next to each other (how POS and shop exports
come). Columns (header required; unknown columns are ignored)::

    record_type      order (default) | return
    order_id         the order, or for a return the return id
    original_order_id  (returns) the order returned against
    channel          store | online | app
    occurred_at      ISO 8601 with offset; a bare date or time is read as Asia/Tokyo
    store_id register_id receipt_no shop_id shipping_prefecture coupon_code payment_method
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

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engagement.ingest.pipeline import Ingestor, Source

TOKYO = ZoneInfo("Asia/Tokyo")
CHUNK = 2000
IDENTIFIER_COLUMNS = ("member_no", "pos_card", "ec_account", "email", "phone", "line_id", "device")


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


def _int(value: str | None) -> int | None:
    """A whole number (``1,980`` allowed); money is never a fraction of a yen."""
    if value is None or not value.strip():
        return None
    try:
        return int(value.strip().replace(",", ""))
    except ValueError:
        raise ValueError(f"{value.strip()!r} is not a whole number") from None


def _time(value: str) -> str:
    at = datetime.fromisoformat(value.strip())
    if at.tzinfo is None:
        at = at.replace(tzinfo=TOKYO)
    return at.isoformat()


def _clean(row: dict[str, str | None], *names: str) -> dict[str, Any]:
    return {n: row[n].strip() for n in names if row.get(n) not in (None, "") and row[n].strip()}  # type: ignore[union-attr]


def event_from_rows(rows: list[dict[str, str | None]]) -> dict[str, Any]:
    """One order (or return) as the ingestion API takes it, from its CSV rows."""
    head = rows[0]
    kind = (head.get("record_type") or "order").strip() or "order"
    channel = (head.get("channel") or "store").strip()
    identifiers = _clean(head, *IDENTIFIER_COLUMNS)
    occurred_at = _time(head.get("occurred_at") or "")
    if kind == "return":
        lines = [
            {
                "line_no": _int(r.get("line_no")),
                "sku": (r.get("sku") or "").strip(),
                "category": (r.get("category") or "").strip(),
                "quantity": _int(r.get("quantity")),
                "amount": _int(r.get("amount")),
            }
            for r in rows
        ]
        payload: dict[str, Any] = {
            "return_id": (head.get("order_id") or "").strip(),
            "original_order_id": (head.get("original_order_id") or "").strip(),
            "channel": channel,
            "lines": lines,
            "refund_total": _int(head.get("total")),
            **_clean(head, "store_id", "reason"),
        }
        return {"type": "return", "occurred_at": occurred_at, "identifiers": identifiers, "payload": payload}
    lines = [
        {
            "line_no": _int(r.get("line_no")),
            "sku": (r.get("sku") or "").strip(),
            "category": (r.get("category") or "").strip(),
            "quantity": _int(r.get("quantity")),
            "unit_price": _int(r.get("unit_price")),
            "discount": _int(r.get("discount")) or 0,
            "tax": _int(r.get("tax")) or 0,
        }
        for r in rows
    ]
    payload = {
        "order_id": (head.get("order_id") or "").strip(),
        "lines": lines,
        "total": _int(head.get("total")),
        "shipping": _int(head.get("shipping")) or 0,
        "order_discount": _int(head.get("order_discount")) or 0,
        "tax": _int(head.get("tax_total")) or 0,
        "points_used": _int(head.get("points_used")) or 0,
        **_clean(head, "payment_method"),
    }
    if channel == "store":
        payload.update(_clean(head, "store_id", "register_id", "receipt_no", "staff_id"))
        kind_name = "store_order"
    else:
        payload.update(channel=channel, **_clean(head, "shop_id", "shipping_prefecture", "coupon_code"))
        kind_name = "online_order"
    return {"type": kind_name, "occurred_at": occurred_at, "identifiers": identifiers, "payload": payload}


def _orders(
    handle: io.BufferedReader, start: int
) -> Iterator[tuple[int, list[dict[str, str | None]], list[str]]]:
    """(offset after the order, its rows, its raw lines), streaming, from byte ``start``."""
    header_line = handle.readline()
    header = next(csv.reader([header_line.decode("utf-8-sig")]))
    if start > handle.tell():
        handle.seek(start)
    current: str | None = None
    rows: list[dict[str, str | None]] = []
    raws: list[str] = []
    while True:
        position = handle.tell()
        line = handle.readline()
        if not line:
            break
        text = line.decode("utf-8")
        if not text.strip():
            continue
        values = next(csv.reader([text]))
        row = dict(zip(header, values, strict=False))
        key = f"{row.get('record_type') or 'order'}|{row.get('order_id')}"
        if current is not None and key != current:
            yield position, rows, raws
            rows, raws = [], []
        current = key
        rows.append(row)  # type: ignore[arg-type]
        raws.append(text.rstrip("\r\n"))
    if rows:
        yield handle.tell(), rows, raws


async def import_csv(
    path: Path,
    ingestor: Ingestor,
    source: Source,
    *,
    progress: Callable[[int, int], None] | None = None,
    restart: bool = False,
) -> ImportReport:
    """Import ``path``; ``progress(bytes_done, bytes_total)`` after each chunk.

    The file is read with plain blocking calls: a local file in a CLI process whose only
    other task is waiting for Kafka's acks."""
    state_path = path.with_name(path.name + ".import-state.json")
    rejected_path = path.with_name(path.name + ".rejected.csv")
    state: dict[str, Any] = {}
    if state_path.exists() and not restart:
        state = json.loads(state_path.read_text())
    report = ImportReport(resumed_at=int(state.get("offset", 0)))
    total = path.stat().st_size  # noqa: ASYNC240
    with path.open("rb") as handle, rejected_path.open("a" if state else "w", encoding="utf-8") as rejected:
        header = handle.readline().decode("utf-8-sig").rstrip("\r\n")
        handle.seek(0)
        if not state:
            rejected.write(header + ",reject_field,reject_reason\n")
        chunk: list[tuple[dict[str, Any] | None, list[str], str]] = []
        offset = report.resumed_at
        for end, rows, raws in _orders(handle, report.resumed_at):
            report.rows += len(rows)
            report.orders += 1
            try:
                chunk.append((event_from_rows(rows), raws, ""))
            except (ValueError, TypeError) as exc:
                chunk.append((None, raws, f"row: {exc}"))
            offset = end
            if len(chunk) >= CHUNK:
                await _flush(chunk, ingestor, source, report, rejected)
                _save_state(state_path, offset, report)
                if progress:
                    progress(offset, total)
                chunk = []
        if chunk:
            await _flush(chunk, ingestor, source, report, rejected)
        _save_state(state_path, offset, report, done=True)
        if progress:
            progress(total, total)
    return report


async def _flush(
    chunk: list[tuple[dict[str, Any] | None, list[str], str]],
    ingestor: Ingestor,
    source: Source,
    report: ImportReport,
    rejected: io.TextIOWrapper,
) -> None:
    events = [e for e, _, _ in chunk if e is not None]
    items = iter(await ingestor.ingest(events, source)) if events else iter(())
    for event, raws, error in chunk:
        if event is None:
            reason = ("", error)
        else:
            item = next(items)
            if item.status == "unavailable":
                raise ConnectionError("the event broker did not acknowledge; rerun to resume")
            if item.status in ("accepted", "duplicate"):
                report.accepted += item.status == "accepted"
                report.duplicates += item.status == "duplicate"
                continue
            first = item.errors[0] if item.errors else {"field": "", "reason": "rejected"}
            reason = (first["field"], "; ".join(e["reason"] for e in item.errors))
        report.rejected_orders += 1
        report.rejected_rows += len(raws)
        for raw in raws:
            rejected.write(f"{raw},{_csv_cell(reason[0])},{_csv_cell(reason[1])}\n")
    rejected.flush()


def _csv_cell(text: str) -> str:
    out = io.StringIO()
    csv.writer(out).writerow([text])
    return out.getvalue().rstrip("\r\n")


def _save_state(path: Path, offset: int, report: ImportReport, done: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"offset": offset, "done": done, "orders": report.orders, "rows": report.rows}))
    os.replace(tmp, path)
