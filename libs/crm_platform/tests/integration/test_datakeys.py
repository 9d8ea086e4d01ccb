"""The platform's data-key store on a real SQLite file and a real PostgreSQL database:
seal, open, erase (idempotent), subjects, and the table a service names."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_platform.crypto import generate_data_key
from crm_platform.datakeys import ContentErased, DataKeys, PostgresKeyBackend, SQLiteKeyBackend

pytestmark = pytest.mark.integration
MASTER = generate_data_key()


@pytest.fixture(params=["sqlite", "postgres"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    if request.param == "sqlite":
        path = str(tmp_path / "keys.sqlite")
        yield lambda table, with_subjects=False: SQLiteKeyBackend(path, table, with_subjects)
        return
    import psycopg
    from psycopg.rows import dict_row

    port = request.getfixturevalue("postgres_server")
    db = f"crm_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host="127.0.0.1", port=port, user="crm", password="crm", dbname="crm_test", autocommit=True
    ) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')

    def connect() -> Any:
        return psycopg.connect(
            host="127.0.0.1",
            port=port,
            user="crm",
            password="crm",
            dbname=db,
            autocommit=True,
            row_factory=dict_row,
        )

    yield lambda table, with_subjects=False: PostgresKeyBackend(connect, table, with_subjects)


def test_seal_open_and_erase_with_subjects(backend_factory: Callable[..., Any]) -> None:
    keys = DataKeys(backend_factory("survey_text_keys", with_subjects=True), MASTER, prefix="survey-response")
    alice, bob, anonymous = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    sealed_a = keys.seal(alice, "山田太郎 090-1234-5678", "ctx:a", subject="customer-a")
    sealed_a2 = keys.seal(alice, "second", "ctx:a2", subject="customer-a")  # the same key
    sealed_b = keys.seal(bob, "b", "ctx:b", subject="customer-b")
    sealed_n = keys.seal(anonymous, "n", "ctx:n")
    assert sealed_a["key_id"] == f"survey-response-{alice}" and "山田" not in str(sealed_a)
    assert keys.open(alice, sealed_a, "ctx:a") == "山田太郎 090-1234-5678"
    with pytest.raises(ContentErased):  # the context is bound: no replay into another field
        keys.open(alice, sealed_a, "ctx:b")

    assert keys.erase_subjects(["customer-a", "nobody"]) == 1
    assert keys.erase_subjects(["customer-a"]) == 0  # idempotent
    for sealed, context in ((sealed_a, "ctx:a"), (sealed_a2, "ctx:a2")):
        with pytest.raises(ContentErased):
            keys.open(alice, sealed, context)
    with pytest.raises(ContentErased):  # an erased record gets no new key either
        keys.seal(alice, "again", "ctx:a", subject="customer-a")
    assert keys.open(bob, sealed_b, "ctx:b") == "b"
    assert keys.open(anonymous, sealed_n, "ctx:n") == "n"

    # another process (no cache) sees the same
    fresh = DataKeys(
        backend_factory("survey_text_keys", with_subjects=True), MASTER, prefix="survey-response"
    )
    with pytest.raises(ContentErased):
        fresh.open(alice, sealed_a, "ctx:a")
    assert fresh.open(bob, sealed_b, "ctx:b") == "b"
    assert fresh.erase([bob, uuid.uuid4()]) == 1  # by record too; an unknown one is tombstoned
    with pytest.raises(ContentErased):
        fresh.open(bob, sealed_b, "ctx:b")


def test_shared_subjects_follow_merges_and_unmerges(backend_factory: Callable[..., Any]) -> None:
    keys = DataKeys(backend_factory("k", with_subjects=True), MASTER, prefix="r")
    old, older, survivor = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    sealed_old = keys.seal(old, "o", "c", subject="m")
    sealed_older = keys.seal(older, "p", "c", subject="m2")
    keys.seal(survivor, "s", "c", subject="s")
    assert keys.share_subject("m2", "m") == 1  # m2 merged into m ...
    assert keys.share_subject("m", "s") == 2  # ... then m into s: transitively
    assert keys.share_subject("m", "s") == 0  # idempotent
    assert keys.unshare_subject("m", "s") == 2  # the second merge undone
    assert keys.erase_subjects(["s"]) == 1
    assert keys.open(old, sealed_old, "c") == "o"
    assert keys.share_subject("m", "s") == 2
    assert keys.erase_subjects(["s"]) == 2
    with pytest.raises(ContentErased):
        keys.open(older, sealed_older, "c")


def test_a_store_without_subjects_refuses_them(backend_factory: Callable[..., Any]) -> None:
    keys = DataKeys(backend_factory("ticket_data_keys"), MASTER, prefix="ticket")
    record = uuid.uuid4()
    assert keys.open(record, keys.seal(record, {"body": "x"}, "c"), "c") == {"body": "x"}
    with pytest.raises(ValueError, match="no subjects"):
        keys.seal(uuid.uuid4(), "x", "c", subject="someone")
    with pytest.raises(ValueError, match="no subjects"):
        keys.erase_subjects(["someone"])


def test_table_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a table name"):
        SQLiteKeyBackend(str(tmp_path / "k.sqlite"), "keys; DROP TABLE x")


def test_support_s_table_keeps_its_format(tmp_path: Path) -> None:
    """Support's stored keys did not change when the store moved here: same table, same
    columns, same key ids (a ticket sealed before the move opens after it)."""
    path = str(tmp_path / "events.sqlite")
    keys = DataKeys(SQLiteKeyBackend(path, "ticket_data_keys"), MASTER, prefix="ticket")
    ticket = uuid.uuid4()
    keys.seal(ticket, "x", "c")
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(ticket_data_keys)")]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        [(key_id,)] = db.execute("SELECT key_id FROM ticket_data_keys").fetchall()
    assert columns == ["key_id", "wrapped_key", "erased_at", "master_key_version"]
    assert tables == {"ticket_data_keys"}  # no subjects table for support
    assert key_id == f"ticket-{ticket}"
