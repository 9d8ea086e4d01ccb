"""Makes ``factory`` (contract-event builders for analytics tests) importable by the
test modules (pytest runs with --import-mode=importlib: no sibling imports otherwise)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest
from clickhouse_connect.driver.client import Client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """An embedded ClickHouse (chDB) in the test's directory, migrated."""
    import clickhouse_connect

    from analytics.store.migrations import migrate

    c = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'ch'}")
    migrate(c)
    yield c
    c.close()
