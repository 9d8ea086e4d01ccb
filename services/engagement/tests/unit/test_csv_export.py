"""Reading a CSV export: orders grouped from adjacent rows, byte offsets a rerun can
resume from, quoted cells across lines, blank lines, and chunks as the importing
process receives them."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import orjson

from engagement.csv_export import chunks, orders_of, read_header, rows_between

HEADER = ["order_id", "channel", "occurred_at", "store_id", "member_no", "line_no", "sku", "category"]
HEADER += ["quantity", "unit_price", "total", "coupon_code"]


def _export(tmp_path: Path) -> Path:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    writer.writerow(["A1", "store", "2025-01-10 10:00", "S001", "M1", 1, "SKU-1", "tops", 1, 1000, 3000, ""])
    writer.writerow(["A1", "store", "2025-01-10 10:00", "S001", "M1", 2, "SKU-2", "goods", 2, 1000, 3000, ""])
    out.write("\r\n")  # a blank line between orders
    # a quoted cell spanning two lines (a note pasted into a coupon field)
    writer.writerow(
        ["W1", "online", "2025-01-11T09:00:00+09:00", "", "", 1, "SKU-3", "outer", 1, 500, 500, "x\ny"]
    )
    writer.writerow(["A2", "store", "2025-01-12 10:00", "S002", "", 1, "SKU-1", "tops", 1, 1000, 1000, ""])
    path = tmp_path / "export.csv"
    path.write_bytes(("\ufeff" + out.getvalue()).encode("utf-8"))  # with a BOM, as Excel writes it
    return path


def _orders(path: Path, start: int = 0) -> list[tuple[int, int, list[dict[str, str | None]]]]:
    with path.open("rb") as handle:
        header = next(csv.reader([handle.readline().decode("utf-8-sig")]))
        return list(orders_of(handle, header, start))


def test_rows_are_grouped_per_order_with_offsets_that_cover_exactly_their_rows(tmp_path: Path) -> None:
    path = _export(tmp_path)
    assert read_header(path) == HEADER
    orders = _orders(path)
    assert [[r["order_id"] for r in rows] for _, _, rows in orders] == [["A1", "A1"], ["W1"], ["A2"]]
    assert orders[1][2][0]["coupon_code"] == "x\ny"
    assert [rows_between(path, first, end) for first, end, _ in orders] == [
        [[str(v) for v in row.values()] for row in rows] for _, _, rows in orders
    ]
    assert orders[-1][1] == path.stat().st_size


def test_reading_resumes_at_the_offset_after_an_order(tmp_path: Path) -> None:
    path = _export(tmp_path)
    orders = _orders(path)
    for n, (_, end, _) in enumerate(orders):
        assert [rows[0]["order_id"] for _, _, rows in _orders(path, end)] == [
            rows[0]["order_id"] for _, _, rows in orders[n + 1 :]
        ]


def test_chunks_carry_events_reasons_and_where_to_resume(tmp_path: Path) -> None:
    path = _export(tmp_path)
    got = list(chunks(path, 0, 2))
    assert [(c.count, c.rows) for c in got] == [(2, 3), (1, 1)]
    first = orjson.loads(got[0].orders)
    event, reason, start, end = first[0]
    assert reason == ""
    assert event["type"] == "store_order" and [line["sku"] for line in event["payload"]["lines"]] == [
        "SKU-1",
        "SKU-2",
    ]
    assert event["occurred_at"] == "2025-01-10T10:00:00+09:00"  # a bare time is Tokyo time
    assert rows_between(path, start, end)[1][6] == "SKU-2"
    assert first[1][0]["payload"]["coupon_code"] == "x\ny"
    # A rerun from the first chunk's end reads the rest only.
    assert [orjson.loads(c.orders)[0][0]["payload"]["order_id"] for c in chunks(path, got[0].end, 2)] == [
        "A2"
    ]
    assert got[-1].end == path.stat().st_size


def test_an_unreadable_order_is_passed_on_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        ",".join(HEADER) + "\n" + "B1,store,2025-01-10 10:00,S001,,1,SKU-1,tops,1,19.5,19,\n",
        encoding="utf-8",
    )
    [chunk] = list(chunks(path, 0, 10))
    [[event, reason, start, end]] = orjson.loads(chunk.orders)
    assert event is None and "not a whole number" in reason
    assert rows_between(path, start, end) == [
        ["B1", "store", "2025-01-10 10:00", "S001", "", "1", "SKU-1", "tops", "1", "19.5", "19", ""]
    ]
