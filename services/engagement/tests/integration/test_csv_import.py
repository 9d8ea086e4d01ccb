"""CSV import of historical transactions through the ingestion pipeline, against Kafka."""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crm_contracts.registry import decode
from crm_contracts.topics import COMMERCE_ORDER
from crm_platform.crypto import BlindIndexer
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import read_topic
from engagement import importer
from engagement.adapters.ledger import open_ledger
from engagement.ingest.pipeline import Ingestor, Source

pytestmark = pytest.mark.integration

HEADER = [
    *("record_type", "order_id", "original_order_id", "channel", "occurred_at", "store_id"),
    *("member_no", "email", "line_no", "sku", "category", "quantity", "unit_price", "discount"),
    *("amount", "shipping", "total"),
]
STORE = {"channel": "store", "store_id": "S001", "category": "tops"}


def row(**values: Any) -> list[str]:
    return [str(values.get(h, "")) for h in HEADER]


def write_csv(path: Path) -> None:
    rows = []
    for n in range(1, 4):  # three store orders of two lines
        common = {**STORE, "order_id": f"S1-{n}", "occurred_at": f"2025-0{n}-10 12:00"}
        common |= {"member_no": f"M{n:04d}", "total": 3000}
        rows.append(row(**common, line_no=1, sku="A", quantity=1, unit_price=2000))
        rows.append(row(**{**common, "category": "goods"}, line_no=2, sku="B", quantity=2, unit_price=500))
    online = {"order_id": "W-1", "channel": "online", "occurred_at": "2025-04-01T20:00:00+09:00"}
    online |= {"email": "a@example.jp", "line_no": 1, "sku": "C", "category": "outer", "quantity": 1}
    rows.append(row(**online, unit_price=9000, shipping=500, total=9500))
    bad = {**STORE, "occurred_at": "2025-04-02 10:00", "line_no": 1, "sku": "A", "quantity": 1}
    rows.append(row(**bad, order_id="S1-bad", unit_price="19.5", total=19))
    rows.append(row(**bad, order_id="S1-sum", unit_price=100, total=999))
    back = {
        **STORE,
        "record_type": "return",
        "order_id": "RT-1",
        "original_order_id": "S1-2",
        "category": "goods",
    }
    rows.append(
        row(**back, occurred_at="2025-02-20 15:00", line_no=2, sku="B", quantity=1, amount=500, total=500)
    )
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)


class FailingAfter(Ingestor):
    """An ingestor whose broker goes away after ``calls`` chunks."""

    def __init__(self, inner: Ingestor, calls: int) -> None:
        super().__init__(inner.indexer, inner.producer, inner.ledger)
        self.calls = calls

    async def commit(self, items: Any) -> Any:
        if self.calls == 0:
            raise ConnectionError("the event broker did not acknowledge; rerun to resume")
        self.calls -= 1
        return await super().commit(items)


@pytest.fixture
def settings(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    s = Settings(
        var_dir=tmp_path / "var",
        kafka_bootstrap=kafka_bootstrap,
        kafka_topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
    )
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=s.kafka_topic_prefix))
    return s


def import_with(
    settings: Settings, path: Path, ledger: Any, wrap: Callable[[Ingestor], Ingestor]
) -> importer.ImportReport:
    """One ``crm import`` run of ``path`` in chunks of two orders, through ``wrap``'s
    ingestor (a broker that goes away, …)."""

    async def run() -> importer.ImportReport:
        async with EventProducer(
            settings.kafka_bootstrap, client_id="t", topic_prefix=settings.kafka_topic_prefix
        ) as producer:
            ingestor = wrap(Ingestor(BlindIndexer(settings.blind_index_key_bytes), producer, ledger))
            return await importer.import_csv(path, ingestor, Source("import"), chunk_orders=2)

    return asyncio.run(run())


def test_import_reports_rejects_and_resumes(tmp_path: Path, kafka_bootstrap: str, settings: Settings) -> None:
    path = tmp_path / "export.csv"
    write_csv(path)
    ledger = open_ledger(settings)

    try:
        with pytest.raises(ConnectionError):
            # the first chunk (two orders) lands, then the broker is gone
            import_with(settings, path, ledger, lambda inner: FailingAfter(inner, 1))
        report = import_with(settings, path, ledger, lambda inner: inner)
    finally:
        ledger.close()
    assert report.resumed_at > 0
    assert report.orders == 5  # the three orders after the first chunk, plus the bad ones and the return
    assert (report.accepted, report.rejected_orders, report.rejected_rows) == (3, 2, 2)
    records = asyncio.run(read_topic(kafka_bootstrap, settings.kafka_topic_prefix + COMMERCE_ORDER.name, 5))
    events = [decode(r.value) for r in records]
    kinds = sorted(e.event_type for e in events)
    assert kinds == ["order.online_completed", "order.returned"] + ["order.store_completed"] * 3
    store = next(e for e in events if getattr(e.payload, "order_id", None) == "S1-1")
    assert store.occurred_at.isoformat() == "2025-01-10T03:00:00+00:00"  # a bare time is Tokyo time
    rejected = list(csv.DictReader((tmp_path / "export.csv.rejected.csv").open(encoding="utf-8")))
    assert [(r["order_id"], r["reject_field"]) for r in rejected] == [
        ("S1-bad", ""),
        ("S1-sum", "payload.total"),
    ]
    assert "not a whole number" in rejected[0]["reject_reason"]


class UnacknowledgedLast(Ingestor):
    """Publishes for real, then reports the last event of its ``chunk``-th commit as not
    acknowledged (the broker went away mid-chunk)."""

    def __init__(self, inner: Ingestor, chunk: int | None) -> None:
        super().__init__(inner.indexer, inner.producer, inner.ledger)
        self.chunk = chunk
        self.commits = 0

    async def commit(self, items: Any) -> Any:
        items = await super().commit(items)
        self.commits += 1
        if self.commits == self.chunk and items:
            items[-1].status = "unavailable"
        return items


def test_a_chunk_the_broker_did_not_fully_acknowledge_writes_no_rejects_until_it_is_redone(
    tmp_path: Path, settings: Settings
) -> None:
    path = tmp_path / "export.csv"
    # Chunks of two orders: [S1-1, S1-2], [S1-3, W-1], [S1-bad, S1-sum], [RT-1]. The third
    # holds a row that cannot be read (S1-bad) and an order the contract refuses (S1-sum).
    write_csv(path)
    ledger = open_ledger(settings)

    try:
        with pytest.raises(ConnectionError):
            # the third chunk's last event is not acknowledged
            import_with(settings, path, ledger, lambda inner: UnacknowledgedLast(inner, 3))
        report = import_with(settings, path, ledger, lambda inner: inner)
    finally:
        ledger.close()
    assert report.resumed_at > 0  # after the second chunk
    assert (report.orders, report.accepted, report.rejected_orders, report.rejected_rows) == (3, 1, 2, 2)
    rejected = list(csv.DictReader((tmp_path / "export.csv.rejected.csv").open(encoding="utf-8")))
    assert [r["order_id"] for r in rejected] == ["S1-bad", "S1-sum"]  # once each


def test_the_cli_imports_with_a_progress_bar_and_a_summary(tmp_path: Path, settings: Settings) -> None:
    """``engagement import`` (``crm import``) as an operator runs it: a process, a bar on
    stderr, a summary line, the rejected rows beside the file, exit 0; run again, nothing
    is imported twice."""
    import os
    import subprocess
    import sys

    path = tmp_path / "export.csv"
    write_csv(path)
    env = {
        **os.environ,
        "CRM_VAR_DIR": str(settings.var_dir),
        "CRM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CRM_KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "COLUMNS": "120",
    }
    command = [sys.executable, "-m", "engagement", "import", str(path)]
    first = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "importing" in first.stderr  # the progress bar's label
    assert "10 rows, 7 orders" in first.stderr and "5 accepted" in first.stderr
    assert "2 rejected (2 rows, see export.csv.rejected.csv)" in first.stderr
    assert (tmp_path / "export.csv.rejected.csv").exists()

    again = subprocess.run(
        [*command, "--restart"], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert "0 accepted, 5 already imported" in again.stderr

    missing = subprocess.run(
        [*command[:-1], str(tmp_path / "absent.csv")], check=False, env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "absent.csv" in missing.stderr
