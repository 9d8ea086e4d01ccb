"""The segment CSV export on a real chDB: one query per export (a streamed snapshot,
never re-run per page) and a row cap that refuses rather than truncates silently."""

from __future__ import annotations

import csv
import io
import time
from datetime import date
from pathlib import Path
from typing import Any

import clickhouse_connect
import factory as f
import pytest
from fastapi.testclient import TestClient

from analytics import queries as analytics_queries
from analytics.entrypoints import api as analytics_api
from analytics.entrypoints.api import create
from analytics.store.migrations import migrate
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration
READ = {"X-API-Key": "dev-read-key"}
CUSTOMERS = 450
AS_OF = date(2026, 3, 1)
HEADER = "customer_id,rfm,orders,revenue,recency_days,first_day,last_day"


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    """A data directory with CUSTOMERS new customers (one purchase each, distinct totals)."""
    settings = Settings(var_dir=tmp_path / "var", **kw)
    client = clickhouse_connect.get_client(dsn=settings.clickhouse_dsn)
    migrate(client)
    events = [
        f.store_order(f"m{i}", f"2026-02-{1 + i % 27:02d}", f"o{i}", ("tops", 1, 1_000 + 7 * i))
        for i in range(CUSTOMERS)
    ]
    f.deliver(client, events)  # type: ignore[arg-type]
    client.close()
    return settings


class QuerySpy:
    """Counts the segment computations reaching ClickHouse: every query of the client
    class passes through ``_query_with_context`` (plain, streamed or raw)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client_class: type) -> None:
        self.rfm_queries = 0
        original = client_class._query_with_context  # type: ignore[attr-defined]

        def counted(client: Any, context: Any) -> Any:
            if "per_customer" in context.final_query:
                self.rfm_queries += 1
            return original(client, context)

        monkeypatch.setattr(client_class, "_query_with_context", counted)


@pytest.fixture
def blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small blocks (an export of CUSTOMERS rows streams in several), and their sizes."""
    monkeypatch.setattr(analytics_queries, "EXPORT_BLOCK_ROWS", 100)
    sizes: list[int] = []
    original = analytics_api.RowStream.next

    async def next_block(stream: analytics_api.RowStream) -> Any:
        block = await original(stream)
        if block is not None:
            sizes.append(len(block))
        return block

    monkeypatch.setattr(analytics_api.RowStream, "next", next_block)
    return sizes


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_an_export_computes_the_segment_once_and_streams_it_in_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocks: list[int]
) -> None:
    api = TestClient(create(_settings(tmp_path), embedded_sink=False))
    with api:
        pool = api.app.state.analytics.pool  # type: ignore[attr-defined]
        with pool.client() as client:
            spy = QuerySpy(monkeypatch, type(client))
        params = {"as_of": AS_OF.isoformat(), "channel": "all"}
        listed = api.get("/v1/segments/new/customers", params={**params, "limit": 1000}, headers=READ)
        assert listed.status_code == 200 and spy.rfm_queries == 1
        spy.rfm_queries = 0

        exported = api.get("/v1/segments/new/customers", params={**params, "format": "csv"}, headers=READ)
        assert exported.status_code == 200, exported.text
        assert spy.rfm_queries == 1  # one computation for the whole file
        assert len(blocks) >= 4 and sum(blocks) == CUSTOMERS  # ...read in several blocks
        rows = _rows(exported.text)
        assert ",".join(rows[0]) == HEADER
        assert len(rows) == 1 + CUSTOMERS
        columns = ("customer_id", "rfm", "orders", "revenue", "recency_days", "first_day", "last_day")
        expected = [[str(c[k]) for k in columns] for c in listed.json()["customers"]]
        assert rows[1:] == expected  # the same customers, the same order (revenue, then id)
        assert rows[1][3] == str(1_000 + 7 * (CUSTOMERS - 1))
        assert exported.headers["x-total-count"] == str(CUSTOMERS)
        assert exported.headers["x-export-truncated"] == "false"


def test_an_export_larger_than_the_cap_is_refused_unless_the_top_rows_are_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocks: list[int]
) -> None:
    api = TestClient(create(_settings(tmp_path, export_max_rows=300), embedded_sink=False, pool_size=2))
    with api:
        pool = api.app.state.analytics.pool  # type: ignore[attr-defined]
        with pool.client() as client:
            spy = QuerySpy(monkeypatch, type(client))
        params = {"as_of": AS_OF.isoformat(), "format": "csv"}
        for _ in range(3):  # more refusals than the pool has clients: each gives its client back
            refused = api.get("/v1/segments/new/customers", params=params, headers=READ)
            assert refused.status_code == 422, refused.text
            error = refused.json()["error"]
            assert error["code"] == "export_too_large"
            assert f"{CUSTOMERS} customers" in error["message"] and "max_rows" in error["message"]
        assert spy.rfm_queries == 3  # the size came with the rows: no counting query first
        deadline = time.monotonic() + 10
        while pool._clients.qsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool._clients.qsize() == 2

        top = api.get("/v1/segments/new/customers", params={**params, "max_rows": 120}, headers=READ)
        assert top.status_code == 200, top.text
        assert (top.headers["x-total-count"], top.headers["x-export-rows"]) == (str(CUSTOMERS), "120")
        assert top.headers["x-export-truncated"] == "true"
        rows = _rows(top.text)
        assert len(rows) == 1 + 120
        revenues = [int(r[3]) for r in rows[1:]]
        assert revenues == sorted(revenues, reverse=True)
        assert revenues[0] == 1_000 + 7 * (CUSTOMERS - 1) and revenues[-1] == 1_000 + 7 * (CUSTOMERS - 120)

        too_many = api.get("/v1/segments/new/customers", params={**params, "max_rows": 301}, headers=READ)
        assert too_many.status_code == 422
        assert too_many.json()["error"]["fields"][0]["field"] == "query.max_rows"
        empty = api.get("/v1/segments/repeat/customers", params=params, headers=READ)
        assert empty.status_code == 200 and empty.text.splitlines() == [HEADER]
        assert empty.headers["x-total-count"] == "0"


def test_an_export_past_the_query_budget_is_a_clear_422_not_a_short_file(tmp_path: Path) -> None:
    api = TestClient(create(_settings(tmp_path, query_timeout_s=0.000_001), embedded_sink=False))
    with api:
        params = {"as_of": AS_OF.isoformat(), "format": "csv"}
        stopped = api.get("/v1/segments/new/customers", params=params, headers=READ)
        assert stopped.status_code == 422, stopped.text
        assert stopped.json()["error"]["code"] == "query_budget_exceeded"
