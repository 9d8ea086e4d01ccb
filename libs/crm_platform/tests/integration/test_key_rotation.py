"""Master key versions, ``rotate_keys`` / ``rotate_all`` and secure deletion of erased
keys, on a real SQLite file and a real PostgreSQL database (whose table file is read
from the server's data directory)."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from crm_platform.crypto import MasterKeys, generate_data_key
from crm_platform.datakeys import (
    KEY_STORES,
    ContentErased,
    DataKeys,
    PostgresKeyBackend,
    SQLiteKeyBackend,
    rotate_all,
    rotate_keys,
)
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration
OLD, NEW = generate_data_key(), generate_data_key()
#: the pre-version format of every key table
LEGACY_TABLE = "CREATE TABLE {t} (key_id TEXT PRIMARY KEY, wrapped_key {blob}, erased_at {ts})"


class Store:
    """One key table of each kind, and raw access to it (what an attacker with the files
    or the database would see)."""

    def __init__(self, kind: str, tmp_path: Path, port: int | None) -> None:
        self.kind = kind
        self.path = str(tmp_path / "events.sqlite")
        self.port = port
        self.db = ""
        if kind == "postgres":
            assert port is not None
            self.db = f"crm_t_{uuid.uuid4().hex[:12]}"
            with self._admin("crm_test") as admin:
                admin.execute(f'CREATE DATABASE "{self.db}" OWNER crm')

    def _admin(self, db: str) -> psycopg.Connection[Any]:
        # The local cluster trusts its superuser on 127.0.0.1 (crm_cli.postgres_local).
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=db, autocommit=True)

    def connect(self) -> Any:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="crm",
            password="crm",
            dbname=self.db,
            autocommit=True,
            row_factory=dict_row,
        )

    def backend(self, table: str) -> SQLiteKeyBackend | PostgresKeyBackend:
        if self.kind == "sqlite":
            return SQLiteKeyBackend(self.path, table)
        return PostgresKeyBackend(self.connect, table)

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as db:
                return [tuple(r) for r in db.execute(statement, params).fetchall()]
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="crm", password="crm", dbname=self.db, autocommit=True
        ) as conn:
            cur = conn.execute(statement.replace("?", "%s"), params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def legacy_table(self, table: str) -> None:
        blob, ts = ("BLOB", "TEXT") if self.kind == "sqlite" else ("BYTEA", "TIMESTAMPTZ")
        self.sql(LEGACY_TABLE.format(t=table, blob=blob, ts=ts))

    def files_bytes(self, table: str) -> bytes:
        """Every byte of the store's files: the SQLite file with its -wal and -shm, or
        the table's heap file in the server's data directory (after a CHECKPOINT)."""
        if self.kind == "sqlite":
            return b"".join(
                Path(self.path + suffix).read_bytes()
                for suffix in ("", "-wal", "-shm")
                if Path(self.path + suffix).exists()
            )
        with self._admin(self.db) as admin:
            admin.execute("CHECKPOINT")
            data_dir = admin.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
            rel = admin.execute("SELECT pg_relation_filepath(%s)", (table,)).fetchone()[0]  # type: ignore[index]
        files = sorted(Path(data_dir).glob(rel + "*"))  # the heap and any further segments
        assert files, f"no file for {table} at {data_dir}/{rel}"
        return b"".join(f.read_bytes() for f in files)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    port = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    return Store(request.param, tmp_path, port)


def test_keys_stored_before_versions_read_as_version_1_and_rotate(store: Store) -> None:
    from crm_platform.crypto import wrap_key

    store.legacy_table("ticket_data_keys")
    old_record = uuid.uuid4()
    # A row as the code before versions wrote it: no version column at all.
    store.sql(
        "INSERT INTO ticket_data_keys (key_id, wrapped_key) VALUES (?, ?)",
        (f"ticket-{old_record}", wrap_key(OLD, generate_data_key(), f"ticket-{old_record}")),
    )
    keys = DataKeys(store.backend("ticket_data_keys"), OLD, prefix="ticket")  # adds the column
    sealed_old = keys.seal(old_record, "昔の問い合わせ", "c")
    assert keys.open(old_record, sealed_old, "c") == "昔の問い合わせ"
    assert store.sql("SELECT master_key_version FROM ticket_data_keys") == [(None,)]

    ring = MasterKeys(NEW, 2, {1: OLD})
    report = rotate_keys(store.backend("ticket_data_keys"), ring)  # type: ignore[arg-type]
    assert (report.rewrapped, report.skipped, report.live_by_version) == (1, 0, {2: 1})
    only_new = DataKeys(store.backend("ticket_data_keys"), MasterKeys(NEW, 2), prefix="ticket")
    assert only_new.open(old_record, sealed_old, "c") == "昔の問い合わせ"


def test_rotation_rewraps_every_live_key_idempotently_and_resumes(store: Store) -> None:
    v1 = DataKeys(store.backend("survey_text_keys"), OLD, prefix="r")
    records = [uuid.uuid4() for _ in range(7)]
    sealed = {r: v1.seal(r, f"text {i}", "c") for i, r in enumerate(records)}
    erased = records[0]
    v1.erase([erased])
    assert store.sql("SELECT count(*) FROM survey_text_keys WHERE master_key_version = 1") == [(6,)]

    ring = MasterKeys(NEW, 2, {1: OLD})

    class Crashing:
        """The backend, failing after three re-wraps (a crash mid-rotation)."""

        def __init__(self, inner: Any) -> None:
            self.inner, self.done = inner, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def rewrap(self, *args: Any) -> bool:
            if self.done == 3:
                raise RuntimeError("crash")
            self.done += 1
            return bool(self.inner.rewrap(*args))

    with pytest.raises(RuntimeError, match="crash"):
        rotate_keys(Crashing(store.backend("survey_text_keys")), ring, batch=2)  # type: ignore[arg-type]
    assert store.sql("SELECT count(*) FROM survey_text_keys WHERE master_key_version = 2") == [(3,)]

    v2 = DataKeys(store.backend("survey_text_keys"), ring, prefix="r")
    report = v2.rotate(batch=2)  # resumes: only the three left
    assert (report.rewrapped, report.skipped, report.live_by_version) == (3, 0, {2: 6})
    again = v2.rotate()
    assert (again.rewrapped, again.live_by_version) == (0, {2: 6})  # idempotent

    # The old master key can go: everything still opens, the erased key stays erased.
    only_new = DataKeys(store.backend("survey_text_keys"), MasterKeys(NEW, 2), prefix="r")
    for i, r in enumerate(records[1:], start=1):
        assert only_new.open(r, sealed[r], "c") == f"text {i}"
    with pytest.raises(ContentErased):
        only_new.open(erased, sealed[erased], "c")
    fresh = uuid.uuid4()
    only_new.seal(fresh, "new", "c")
    assert store.sql("SELECT master_key_version FROM survey_text_keys WHERE key_id = ?", (f"r-{fresh}",)) == [
        (2,)
    ]


def test_an_erasure_during_a_rotation_is_not_undone(store: Store) -> None:
    keys = DataKeys(store.backend("ticket_data_keys"), OLD, prefix="ticket")
    a, b = uuid.uuid4(), uuid.uuid4()
    sealed_a = keys.seal(a, "a", "c")
    keys.seal(b, "b", "c")
    backend = store.backend("ticket_data_keys")

    class EraseAfterRead:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def stale(self, *args: Any) -> Any:
            rows = self.inner.stale(*args)
            if rows:
                keys.erase([a])  # another process erases the person between read and write
            return rows

    report = rotate_keys(EraseAfterRead(backend), MasterKeys(NEW, 2, {1: OLD}))  # type: ignore[arg-type]
    assert (report.rewrapped, report.skipped, report.live_by_version) == (1, 1, {2: 1})
    with pytest.raises(ContentErased):
        DataKeys(store.backend("ticket_data_keys"), MasterKeys(NEW, 2), prefix="ticket").open(
            a, sealed_a, "c"
        )


def test_an_erased_key_leaves_the_store_s_files(store: Store) -> None:
    """The wrapped key is in the files while live (the scan sees it), and gone from the
    database file, its WAL and shared memory (SQLite) or the table's heap (PostgreSQL)
    once erased and purged."""
    keys = DataKeys(store.backend("ticket_data_keys"), OLD, prefix="ticket")
    records = [uuid.uuid4() for _ in range(20)]
    for r in records:
        keys.seal(r, "x", "c")
    victim = records[7]
    [(wrapped,)] = store.sql(
        "SELECT wrapped_key FROM ticket_data_keys WHERE key_id = ?", (f"ticket-{victim}",)
    )
    wrapped = bytes(wrapped)
    assert _traces(wrapped, store.files_bytes("ticket_data_keys"))  # the scan can see it

    assert keys.erase([victim]) == 1
    keys.purge()
    assert not _traces(wrapped, store.files_bytes("ticket_data_keys"))
    others = [
        bytes(w)
        for (w,) in store.sql("SELECT wrapped_key FROM ticket_data_keys WHERE wrapped_key IS NOT NULL")
    ]
    assert len(others) == 19 and all(w in store.files_bytes("ticket_data_keys") for w in others[:3])


def test_rotate_all_covers_every_service_store(store: Store, tmp_path: Path) -> None:
    if store.kind == "sqlite":
        settings = Settings(var_dir=tmp_path / "var", event_store="sqlite")
    else:
        settings = Settings(
            var_dir=tmp_path / "var", event_store="postgres", postgres_port=store.port, postgres_db=store.db
        )
    # Nothing yet: every store is reported, none is created.
    assert [r.report for r in rotate_all(settings)] == [None] * len(KEY_STORES)
    assert not (tmp_path / "var" / "identity" / "events.sqlite").exists()

    made: dict[str, tuple[DataKeys, uuid.UUID, dict[str, str]]] = {}
    for ks in KEY_STORES:
        if store.kind == "sqlite":
            (tmp_path / "var" / ks.service).mkdir(parents=True, exist_ok=True)
            backend: Any = SQLiteKeyBackend(str(tmp_path / "var" / ks.service / ks.sqlite_file), ks.table)
        else:
            backend = PostgresKeyBackend(store.connect, ks.table)
        keys = DataKeys(backend, OLD, prefix=ks.service)
        record = uuid.uuid4()
        made[ks.table] = (keys, record, keys.seal(record, ks.service, "c"))

    rotated = settings.model_copy(
        update={"master_key": _b64(NEW), "master_key_version": 2, "master_keys_previous": {1: _b64(OLD)}}
    )
    results = rotate_all(rotated)
    assert [(r.store.table, r.report.rewrapped if r.report else None) for r in results] == [
        (ks.table, 1) for ks in KEY_STORES
    ]
    assert all(r.report and r.report.live_by_version == {2: 1} for r in results)
    assert all(r.report and r.report.rewrapped == 0 for r in rotate_all(rotated))
    for ks in KEY_STORES:
        _, record, sealed = made[ks.table]
        backend = (
            SQLiteKeyBackend(str(tmp_path / "var" / ks.service / ks.sqlite_file), ks.table)
            if store.kind == "sqlite"
            else PostgresKeyBackend(store.connect, ks.table)
        )
        assert (
            DataKeys(backend, MasterKeys(NEW, 2), prefix=ks.service).open(record, sealed, "c") == ks.service
        )


def _traces(secret: bytes, data: bytes) -> list[int]:
    """Offsets in ``secret`` of every 12-byte piece of it found in ``data``: an overwrite
    of part of a deleted row still leaves none (a chance match of 12 random bytes is
    negligible)."""
    return [i for i in range(len(secret) - 11) if secret[i : i + 12] in data]


def _b64(key: bytes) -> Any:
    import base64

    from pydantic import SecretStr

    return SecretStr(base64.b64encode(key).decode())


def test_a_purge_that_fails_does_not_fail_the_erasure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class LockedOut(SQLiteKeyBackend):
        def purge(self) -> None:
            raise RuntimeError("canceling statement due to lock timeout")

    keys = DataKeys(LockedOut(str(tmp_path / "k.sqlite"), "ticket_data_keys"), OLD, prefix="ticket")
    record = uuid.uuid4()
    sealed = keys.seal(record, "x", "c")
    assert keys.erase([record]) == 1
    keys.purge()
    assert "not purged this time" in caplog.text
    with pytest.raises(ContentErased):
        keys.open(record, sealed, "c")
