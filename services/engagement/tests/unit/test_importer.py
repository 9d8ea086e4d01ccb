"""The importer when its reading process dies: it fails at once, it does not wait."""

from __future__ import annotations

import asyncio
import csv
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from crm_platform.crypto import BlindIndexer
from engagement import importer
from engagement.ingest.pipeline import Ingestor, Source


class SlowAccepting(Ingestor):
    """Takes its time over each chunk (so the reader fills the pipe and waits), and
    accepts everything without a broker."""

    async def commit(self, items: Any) -> Any:
        await asyncio.sleep(0.5)
        for item in items:
            item.status = "accepted"
        return items


def _big_export(path: Path, orders: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["order_id", "channel", "occurred_at", "store_id", "line_no", "sku", "category"])
        out.writerows(
            [f"O{n}", "store", "2025-01-10 10:00", "S001", 1, "SKU-" + "x" * 40, "tops"]
            for n in range(orders)
        )


def test_a_reader_that_dies_mid_file_stops_the_import_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    _big_export(path, 60_000)
    ingestor = SlowAccepting(BlindIndexer(b"k" * 32), None, None)  # type: ignore[arg-type]

    async def run() -> None:
        task = asyncio.create_task(importer.import_csv(path, ingestor, Source("t"), chunk_orders=2000))
        await asyncio.sleep(2.5)  # a few chunks in: the reader waits on a full pipe
        [reader] = [p for p in multiprocessing.active_children() if p.name == "csv-reader"]
        reader.kill()
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="reading process stopped"):
            await asyncio.wait_for(task, timeout=20)
        assert time.monotonic() - started < 5

    asyncio.run(run())
    state = importer.json.loads((tmp_path / "export.csv.import-state.json").read_text())
    assert 0 < state["offset"] < path.stat().st_size and not state["done"]  # a rerun resumes
