"""One ClickHouse client for both deployments: a server (``CRM_CLICKHOUSE_URL``) or the
embedded engine, chDB, under ``var/analytics/clickhouse`` (clickhouse-connect's
``chdb://`` backend). The SQL is the same either way.

chDB allows one process per data directory, so in embedded mode the sink and the query
API share this process; each gets its own client (a client serialises its calls, two
clients on one directory run side by side).
"""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from crm_platform.settings import Settings

#: Settings of every read of the fact tables. A record and its copies always share a
#: partition (each table's partition key is made of sort-key columns: the day, the
#: instant), so FINAL need not merge across partitions — and a partition compacted to
#: one part (store/maintenance.py) is read as it is, without merging at all.
READ_SETTINGS: dict[str, Any] = {"do_not_merge_across_partitions_select_final": 1}


def embedded(settings: Settings) -> bool:
    return settings.clickhouse_url is None


def connect(settings: Settings, **client_settings: Any) -> Client:
    """A client; ``client_settings`` are ClickHouse settings applied to every query."""
    return clickhouse_connect.get_client(dsn=settings.clickhouse_dsn, settings=client_settings or None)


def query_budget(settings: Settings) -> dict[str, Any]:
    """The per-query limits of the query API: past them ClickHouse stops the query with
    an error (TIMEOUT_EXCEEDED / MEMORY_LIMIT_EXCEEDED) instead of hurting the service."""
    return {
        "max_execution_time": settings.query_timeout_s,
        "max_memory_usage": settings.query_max_memory_bytes,
        "timeout_overflow_mode": "throw",
        "readonly": 2,
    }
