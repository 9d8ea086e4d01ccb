"""Reading a retailer's CSV export into ingestion events: the CPU-bound half of the
import, run in a process of its own beside the one that publishes (``importer``).

Pure standard library, so the reading process starts fast. One row per order line,
rows of one order next to each other; see ``engagement.importer`` for the columns.
"""

from __future__ import annotations

import csv
import io
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson

TOKYO = ZoneInfo("Asia/Tokyo")
IDENTIFIER_COLUMNS = ("member_no", "pos_card", "ec_account", "email", "phone", "line_id", "device")


@dataclass(frozen=True)
class Chunk:
    """Orders read together (JSON, see :func:`chunks`), and where the file continues."""

    end: int
    rows: int
    count: int
    orders: bytes


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


def orders_of(
    handle: io.BufferedReader, header: list[str], start: int
) -> Iterator[tuple[int, int, list[dict[str, str | None]]]]:
    """(byte offset of an order's first row, offset after its last row, its rows),
    streaming from byte ``start`` (just after the header when 0). One CSV reader over the
    whole stream, so a quoted cell may span lines; offsets count the bytes of the lines
    the reader has taken."""
    if start > handle.tell():
        handle.seek(start)
    position = handle.tell()

    def lines() -> Iterator[str]:
        nonlocal position
        for line in iter(handle.readline, b""):
            position += len(line)
            yield line.decode("utf-8")

    current: str | None = None
    rows: list[dict[str, str | None]] = []
    first = row_start = position
    for values in csv.reader(lines()):
        if not any(v.strip() for v in values):  # a blank line
            row_start = position
            continue
        row = dict(zip(header, values, strict=False))
        key = f"{row.get('record_type') or 'order'}|{row.get('order_id')}"
        if key != current:
            if rows:
                yield first, row_start, rows
            rows, first, current = [], row_start, key
        rows.append(row)  # type: ignore[arg-type]
        row_start = position
    if rows:
        yield first, row_start, rows


def rows_between(path: Path, start: int, end: int) -> list[list[str]]:
    """The cells of the rows between two offsets (an order's, for the rejects file)."""
    with path.open("rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode("utf-8")
    return [values for values in csv.reader(io.StringIO(text)) if any(v.strip() for v in values)]


def read_header(path: Path) -> list[str]:
    with path.open("rb") as handle:
        return next(csv.reader([handle.readline().decode("utf-8-sig")]))


def chunks(path: Path, start: int, size: int) -> Iterator[Chunk]:
    """The file from byte ``start`` (0: just after the header) in chunks of ``size``
    orders, each order as ``[event or None, why not, first byte, end byte]`` in JSON
    (which crosses to the importing process far cheaper than pickled dictionaries)."""
    with path.open("rb") as handle:
        header = next(csv.reader([handle.readline().decode("utf-8-sig")]))
        orders: list[list[Any]] = []
        rows_read = 0
        for first, end, rows in orders_of(handle, header, start):
            try:
                orders.append([event_from_rows(rows), "", first, end])
            except (ValueError, TypeError) as exc:
                orders.append([None, f"row: {exc}", first, end])
            rows_read += len(rows)
            if len(orders) >= size:
                yield Chunk(end, rows_read, len(orders), orjson.dumps(orders))
                orders, rows_read = [], 0
        if orders:
            yield Chunk(orders[-1][3], rows_read, len(orders), orjson.dumps(orders))


def read_into(path: Path, start: int, size: int, out: Any) -> None:
    """The reading process: chunks into the pipe end ``out``, then ``None``; an error
    that stops the reading is passed on as ``("error", message)``. Ctrl-C is the
    importing process's to handle (it stops this one)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            for chunk in chunks(path, start, size):
                out.send(chunk)
        except (BrokenPipeError, EOFError):
            return  # the importing process has stopped
        except Exception as exc:  # reported to the importing process
            out.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        out.send(None)
    finally:
        out.close()
