"""Fixtures shared by every test package: the real broker, the real PostgreSQL.

Integration tests never skip because a real part is missing: they fail, naming the
command that starts it (``make test`` starts both).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_platform.settings import Settings
from crm_platform.testing import delete_topics, list_topics

ROOT = Path(__file__).resolve().parent


_THROWAWAY_TOPIC = re.compile(r"[0-9a-f]{8}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The local broker's address; fails (never skips) when no broker answers.

    The throw-away topics the session created (their names carry a random hex token:
    per-test prefixes, consumer groups' changelogs) are deleted at the end, so a broker
    reused run after run does not pile up thousands of partitions."""
    bootstrap = os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    host, port = bootstrap.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"Kafka is not reachable at {bootstrap} ({exc}); start it with `uv run crm kafka start`")

    from crm_platform.kafka import ensure_topics

    asyncio.run(ensure_topics(bootstrap))
    before = asyncio.run(list_topics(bootstrap))
    yield bootstrap
    try:
        created = sorted(
            t for t in asyncio.run(list_topics(bootstrap)) - before if _THROWAWAY_TOPIC.search(t)
        )
        if created:
            asyncio.run(delete_topics(bootstrap, created))
    except Exception as exc:  # the broker may have gone: the tests' outcome stands
        print(f"could not delete the session's test topics: {exc}")


@pytest.fixture(scope="session")
def postgres_server() -> int:
    """Starts (or reuses) the local PostgreSQL cluster; returns its port."""
    from crm_cli.postgres_local import LocalPostgres

    try:
        status = LocalPostgres().start()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"PostgreSQL could not be started: {exc}")
    return status.port


def _create_database(port: int) -> str:
    import psycopg

    name = f"crm_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host="127.0.0.1", port=port, user="crm", password="crm", dbname="crm_test", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


@pytest.fixture(params=["sqlite", "postgres"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings for a fresh, empty event store of each kind (SQLite file / PostgreSQL db)."""
    if request.param == "sqlite":
        yield Settings(var_dir=tmp_path / "var", event_store="sqlite")
        return
    port = request.getfixturevalue("postgres_server")
    yield Settings(
        var_dir=tmp_path / "var",
        event_store="postgres",
        postgres_port=port,
        postgres_db=_create_database(port),
    )


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = ROOT / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
