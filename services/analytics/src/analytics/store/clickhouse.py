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

from crm_contracts.topics import ANALYTICS_SINK_GROUP
from crm_platform.settings import Settings

#: Settings of every read of the fact tables. A record and its copies always share a
#: partition (each table's partition key is made of sort-key columns: the day, the
#: instant), so FINAL need not merge across partitions — and a partition compacted to
#: one part (store/maintenance.py) is read as it is, without merging at all.
READ_SETTINGS: dict[str, Any] = {"do_not_merge_across_partitions_select_final": 1}


def dsn(settings: Settings) -> str:
    if settings.clickhouse_url is not None:
        return settings.clickhouse_url.get_secret_value()
    return f"chdb://{settings.service_dir('analytics') / 'clickhouse'}"


def embedded(settings: Settings) -> bool:
    return settings.clickhouse_url is None


def sink_group(settings: Settings) -> str:
    """The sink's consumer group. Its committed offsets describe what one ClickHouse
    holds, so an embedded data directory gets a group of its own: a fresh ``var/``
    (or a test's) is filled from the start of the log, not from another's offsets."""
    if settings.clickhouse_url is not None:
        return ANALYTICS_SINK_GROUP
    import hashlib

    return f"{ANALYTICS_SINK_GROUP}-" + hashlib.sha256(dsn(settings).encode()).hexdigest()[:10]


def connect(settings: Settings, **client_settings: Any) -> Client:
    """A client; ``client_settings`` are ClickHouse settings applied to every query."""
    return clickhouse_connect.get_client(dsn=dsn(settings), settings=client_settings or None)


def query_budget(settings: Settings) -> dict[str, Any]:
    """The per-query limits of the query API: past them ClickHouse stops the query with
    an error (TIMEOUT_EXCEEDED / MEMORY_LIMIT_EXCEEDED) instead of hurting the service."""
    return {
        "max_execution_time": settings.query_timeout_s,
        "max_memory_usage": settings.query_max_memory_bytes,
        "timeout_overflow_mode": "throw",
        "readonly": 2,
    }
