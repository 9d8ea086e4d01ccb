"""The SQLite event stores' connections delete securely: a row deleted through them
(identity's match index of an erased customer, say) leaves no bytes in the file once
the WAL is checkpointed.

Debian's SQLite is built with SQLITE_SECURE_DELETE (the default is on); other builds
(python.org's, macOS's) are not, which is why the stores set the pragma explicitly: the
second test shows what a connection without it leaves behind."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from eventsourcing.application import Application

from crm_platform.datakeys import checkpoint_truncate
from crm_platform.eventstore import SecureSQLiteConnectionPool
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration


def _file_bytes(path: Path) -> bytes:
    return b"".join(
        Path(f"{path}{s}").read_bytes() for s in ("", "-wal", "-shm") if Path(f"{path}{s}").exists()
    )


def _checkpoint(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        assert checkpoint_truncate(db)
    finally:
        db.close()


def test_event_store_connections_zero_what_they_delete(tmp_path: Path) -> None:
    env = Settings(var_dir=tmp_path / "var", event_store="sqlite").eventsourcing_env("svc")
    app = Application(env=env)
    datastore = app.factory.datastore  # type: ignore[attr-defined]
    assert isinstance(datastore.pool, SecureSQLiteConnectionPool)
    secrets = [os.urandom(24).hex() for _ in range(200)]
    with datastore.transaction(commit=True) as c:
        c.execute("PRAGMA secure_delete")
        assert c.fetchone()[0] == 1
        c.execute("CREATE TABLE idx (customer_id TEXT PRIMARY KEY, name_key TEXT)")
        for i, secret in enumerate(secrets):
            c.execute("INSERT INTO idx VALUES (?, ?)", (str(i), secret))
    path = Path(env["SQLITE_DBNAME"])
    victim = secrets[100].encode()
    _checkpoint(path)  # the row has been in the database file for a while
    assert victim in _file_bytes(path)
    with datastore.transaction(commit=True) as c:
        c.execute("DELETE FROM idx WHERE customer_id = '100'")
    _checkpoint(path)
    assert victim not in _file_bytes(path)
    assert secrets[99].encode() in _file_bytes(path)  # the rest is still there
    app.close()


def test_without_secure_delete_a_deleted_row_stays_in_the_file(tmp_path: Path) -> None:
    """Why the pragma is set explicitly: a build or connection without it keeps the bytes."""
    path = tmp_path / "plain.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA secure_delete=OFF")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE idx (customer_id TEXT PRIMARY KEY, name_key TEXT)")
        secrets = [os.urandom(24).hex() for _ in range(200)]
        db.execute("BEGIN")
        for i, secret in enumerate(secrets):
            db.execute("INSERT INTO idx VALUES (?, ?)", (str(i), secret))
        db.execute("COMMIT")
        assert checkpoint_truncate(db)
        db.execute("DELETE FROM idx WHERE customer_id = '100'")
        assert checkpoint_truncate(db)
    finally:
        db.close()
    assert secrets[100].encode() in _file_bytes(path)
