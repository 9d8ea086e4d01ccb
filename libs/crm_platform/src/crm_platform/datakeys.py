"""Per-record data keys: seal personal data so that deleting one key shreds it.

A service that keeps personal data a customer wrote (a support ticket's body, a survey's
free-text answer) seals it (AES-256-GCM, :func:`crm_platform.crypto.seal`) with a data
key of the *record* before it reaches the event store. The keys live beside the event
log — a table in the service's own database (SQLite file or PostgreSQL) — wrapped by the
master key, never in an event: events are immutable, keys must be deletable. Deleting a
record's key (erasure) makes its content unreadable everywhere the sealed value went —
the store, Kafka, ClickHouse, backups — while the record's non-personal facts still count.

:class:`DataKeys` takes a ``prefix`` (the key id is ``<prefix>-<record uuid>``) and its
backend a table name, so each service keeps its own table (support: ``ticket_data_keys``,
prefix ``ticket``; surveys: ``survey_text_keys``, prefix ``survey-response``).

**Subjects (optional).** A service that knows whom a record concerns when it creates
the key (a survey invitation names its customer) can record it with
``subject=`` on :meth:`DataKeys.seal`; :meth:`DataKeys.erase_subjects` then deletes every
key of those subjects. The subjects live in a second table, ``<table>_subjects``, made
only by backends built with ``with_subjects=True`` (support, which finds its tickets
through its own index, has none).

**Master key versions.** Each row records the version of the master key that wrapped it
(``master_key_version``; a row from before versions has none and reads as version 1).
:meth:`DataKeys.rotate` (``crm keys rotate``) re-wraps every live key under the current
version, in batches, compare-and-set per row: idempotent, resumable, and an erasure that
runs meanwhile is never undone.

**Secure deletion.** Erasing a key overwrites its row: SQLite connections run with
``PRAGMA secure_delete=ON`` (freed cells and pages are zeroed) and :meth:`DataKeys.purge`
checkpoints the WAL with ``TRUNCATE`` so the frames that held the wrapped key leave the
``-wal`` file; PostgreSQL rewrites the key table (``VACUUM FULL``), so the dead row
versions that held it leave the table's files (docs/security.md).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from crm_contracts.envelope import SealedValue
from crm_platform.crypto import MasterKeys, SealError, generate_data_key, open_sealed, seal

log = logging.getLogger(__name__)

_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class ContentErased(LookupError):
    """The record's data key was deleted (erasure): its content is gone for good."""


class KeyBackend(Protocol):
    def get(self, key_id: str) -> tuple[bytes | None, bool, int] | None: ...
    def put_if_absent(
        self, key_id: str, wrapped: bytes, subject: str | None = None, version: int = 1
    ) -> None: ...
    def erase(self, key_ids: Sequence[str]) -> int: ...
    def keys_of(self, subjects: Sequence[str]) -> list[str]: ...
    def share(self, source: str, target: str) -> int: ...
    def unshare(self, source: str, target: str) -> int: ...


class RotatingBackend(Protocol):
    """What :func:`rotate_keys` and :func:`purge` need of a key table."""

    @property
    def table(self) -> str: ...
    def stale(self, version: int, after: str, limit: int) -> list[tuple[str, bytes, int]]: ...
    def rewrap(self, key_id: str, old: bytes, new: bytes, version: int) -> bool: ...
    def count_live(self) -> dict[int, int]: ...
    def purge(self) -> None: ...


@dataclass(frozen=True)
class RotationReport:
    """One key table's rotation: keys re-wrapped now, live keys per master key version
    afterwards, and keys skipped because an erasure or another rotation got there first."""

    table: str
    rewrapped: int
    skipped: int
    live_by_version: dict[int, int]


def purge(backend: object) -> bool:
    """``backend.purge()`` if it has one; a failure (a lock not granted in time, the
    database gone) is logged, not raised: what was erased stays erased, and its old bytes
    leave the files at the next purge. Returns whether it completed."""
    purge_ = getattr(backend, "purge", None)
    if purge_ is None:
        return True
    try:
        purge_()
    except Exception as exc:
        log.warning("the key table was not purged this time (%s); the next erasure purges it", exc)
        return False
    return True


def rotate_keys(backend: RotatingBackend, keys: MasterKeys, batch: int = 500) -> RotationReport:
    """Re-wrap every live data key of ``backend`` not under the current master key version.

    Batches ordered by key id; each row is replaced only if it still holds the wrapped key
    read (an erasure meanwhile wins). Run it again after a crash: keys already under the
    current version are not touched."""
    rewrapped = skipped = 0
    after = ""
    while True:
        rows = backend.stale(keys.version, after, batch)
        if not rows:
            break
        for key_id, wrapped, version in rows:
            data_key = keys.unwrap(wrapped, key_id, version)
            new_version, new_wrapped = keys.wrap(data_key, key_id)
            if backend.rewrap(key_id, wrapped, new_wrapped, new_version):
                rewrapped += 1
            else:
                skipped += 1
        after = rows[-1][0]
    # The old wrapped bytes leave the WAL / dead row versions too.
    purge(backend)
    return RotationReport(backend.table, rewrapped, skipped, backend.count_live())


def _table(name: str) -> str:
    if not _TABLE.match(name):
        raise ValueError(f"{name!r} is not a table name (lower-case letters, digits, _)")
    return name


class DataKeys:
    """Creates, caches, uses and erases the data keys of one kind of record."""

    def __init__(
        self, backend: KeyBackend, master_key: bytes | MasterKeys, prefix: str, cache_ttl_s: float = 30.0
    ) -> None:
        self._backend = backend
        self._master = MasterKeys.of(master_key)
        self._prefix = prefix
        # Short-lived cache: an erasure by another process (the eraser) takes effect
        # here within ``cache_ttl_s``.
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._ttl = cache_ttl_s
        self._lock = threading.Lock()

    def key_id(self, record_id: uuid.UUID) -> str:
        return f"{self._prefix}-{record_id}"

    def _key(self, record_id: uuid.UUID, create: bool, subject: str | None = None) -> bytes:
        key_id = self.key_id(record_id)
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        row = self._backend.get(key_id)
        if row is None:
            if not create:
                raise ContentErased(f"{key_id} has no data key")
            version, wrapped_new = self._master.wrap(generate_data_key(), key_id)
            self._backend.put_if_absent(key_id, wrapped_new, subject, version=version)
            row = self._backend.get(key_id)
            assert row is not None
        wrapped, erased, version = row
        if erased or wrapped is None:
            raise ContentErased(f"the content of {key_id} was erased")
        key = self._master.unwrap(wrapped, key_id, version)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (time.monotonic(), key)
        return key

    def seal(
        self, record_id: uuid.UUID, value: object, context: str, subject: str | None = None
    ) -> dict[str, str]:
        """``value`` sealed with the record's key (created on first use, recorded under
        ``subject`` if given), as a plain dict (what a domain event stores and the
        contract's ``SealedValue`` reads). Raises ContentErased if the key was erased."""
        key = self._key(record_id, create=True, subject=subject)
        return seal(key, self.key_id(record_id), value, context).model_dump()

    def open(self, record_id: uuid.UUID, sealed: dict[str, str], context: str) -> Any:
        """The clear value; raises ContentErased after an erasure."""
        key = self._key(record_id, create=False)
        try:
            return open_sealed(key, SealedValue.model_validate(sealed), context)
        except SealError:
            raise ContentErased(f"the content of {self.key_id(record_id)} cannot be opened") from None

    def is_erased(self, record_id: uuid.UUID) -> bool:
        """Whether this record's key was erased (a record without a key is not)."""
        row = self._backend.get(self.key_id(record_id))
        return row is not None and (row[1] or row[0] is None)

    def erase(self, record_ids: Sequence[uuid.UUID]) -> int:
        """Delete the keys of these records (idempotent; a record without a key yet gets a
        tombstone, so none can be made for it later); returns how many were live."""
        return self._erase_key_ids([self.key_id(r) for r in record_ids])

    def erase_subjects(self, subjects: Sequence[str]) -> int:
        """Delete every key recorded under these subjects (idempotent); returns how many
        were live."""
        key_ids = self._backend.keys_of(list(subjects))
        return self._erase_key_ids(key_ids) if key_ids else 0

    def share_subject(self, source: str, target: str) -> int:
        """Record ``source``'s keys under ``target`` too (a merge: erasing the survivor
        erases what the merged customer wrote); returns how many keys were added. Keys made
        for ``source`` later are not shared."""
        return self._backend.share(source, target)

    def unshare_subject(self, source: str, target: str) -> int:
        """Undo :meth:`share_subject` (an unmerge): ``target`` no longer finds the keys
        recorded under ``source``; returns how many were removed."""
        return self._backend.unshare(source, target)

    def rotate(self, batch: int = 500) -> RotationReport:
        """Re-wrap every live key under the current master key version (:func:`rotate_keys`)."""
        backend: Any = self._backend
        with self._lock:
            self._cache.clear()
        return rotate_keys(backend, self._master, batch)

    def purge(self) -> None:
        """Make erased keys' old bytes leave the store's files (after a batch of erasures):
        the SQLite WAL checkpointed with TRUNCATE, the PostgreSQL table rewritten."""
        purge(self._backend)

    def _erase_key_ids(self, key_ids: list[str]) -> int:
        erased = self._backend.erase(key_ids)
        with self._lock:
            for key_id in key_ids:
                self._cache.pop(key_id, None)
        return erased


# Statements per backend, rendered once per table: ``{t}`` is the table name, checked by
# ``_table`` (a service's own constant, never input), so the SQL holds no outside data.
_SQLITE = {
    "create": "CREATE TABLE IF NOT EXISTS {t} (key_id TEXT PRIMARY KEY, wrapped_key BLOB, erased_at TEXT)",
    "create_subjects": "CREATE TABLE IF NOT EXISTS {t}_subjects"
    " (subject TEXT NOT NULL, key_id TEXT NOT NULL, PRIMARY KEY (subject, key_id))",
    "columns": "SELECT name FROM pragma_table_info('{t}')",
    "add_version": "ALTER TABLE {t} ADD COLUMN master_key_version INTEGER",
    "get": "SELECT wrapped_key, erased_at, master_key_version FROM {t} WHERE key_id = ?",
    "put_subject": "INSERT OR IGNORE INTO {t}_subjects (subject, key_id) VALUES (?, ?)",
    "put": "INSERT OR IGNORE INTO {t} (key_id, wrapped_key, master_key_version) VALUES (?, ?, ?)",
    "stale": "SELECT key_id, wrapped_key, coalesce(master_key_version, 1) FROM {t}"
    " WHERE wrapped_key IS NOT NULL AND coalesce(master_key_version, 1) <> ? AND key_id > ?"
    " ORDER BY key_id LIMIT ?",
    "rewrap": "UPDATE {t} SET wrapped_key = ?, master_key_version = ? WHERE key_id = ? AND wrapped_key = ?",
    "count_live": "SELECT coalesce(master_key_version, 1), count(*) FROM {t}"
    " WHERE wrapped_key IS NOT NULL GROUP BY 1",
    "keys_of": "SELECT DISTINCT key_id FROM {t}_subjects WHERE subject IN (SELECT value FROM json_each(?))",
    "share": "INSERT OR IGNORE INTO {t}_subjects (subject, key_id)"
    " SELECT ?, key_id FROM {t}_subjects WHERE subject = ?",
    "unshare": "DELETE FROM {t}_subjects WHERE subject = ? AND key_id IN"
    " (SELECT key_id FROM {t}_subjects WHERE subject = ?)",
    "live": "SELECT count(*) FROM {t} WHERE erased_at IS NULL AND key_id IN (SELECT value FROM json_each(?))",
    "erase": "INSERT INTO {t} (key_id, wrapped_key, erased_at) VALUES (?, NULL, datetime('now'))"
    " ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL, master_key_version = NULL,"
    " erased_at = coalesce(erased_at, datetime('now'))",
}
_POSTGRES = {
    "create": "CREATE TABLE IF NOT EXISTS {t}"
    " (key_id TEXT PRIMARY KEY, wrapped_key BYTEA, erased_at TIMESTAMPTZ)",
    "create_subjects": _SQLITE["create_subjects"],
    "add_version": "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS master_key_version INTEGER",
    "get": "SELECT wrapped_key, erased_at, master_key_version FROM {t} WHERE key_id = %s",
    "put_subject": "INSERT INTO {t}_subjects (subject, key_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
    "put": "INSERT INTO {t} (key_id, wrapped_key, master_key_version) VALUES (%s, %s, %s)"
    " ON CONFLICT DO NOTHING",
    "stale": "SELECT key_id, wrapped_key, coalesce(master_key_version, 1) AS version FROM {t}"
    " WHERE wrapped_key IS NOT NULL AND coalesce(master_key_version, 1) <> %s AND key_id > %s"
    " ORDER BY key_id LIMIT %s",
    "rewrap": "UPDATE {t} SET wrapped_key = %s, master_key_version = %s"
    " WHERE key_id = %s AND wrapped_key = %s",
    "count_live": "SELECT coalesce(master_key_version, 1) AS version, count(*) AS n FROM {t}"
    " WHERE wrapped_key IS NOT NULL GROUP BY 1",
    "vacuum": "VACUUM FULL {t}",
    "keys_of": "SELECT DISTINCT key_id FROM {t}_subjects WHERE subject = ANY(%s)",
    "share": "INSERT INTO {t}_subjects (subject, key_id)"
    " SELECT %s, key_id FROM {t}_subjects WHERE subject = %s ON CONFLICT DO NOTHING",
    "unshare": "DELETE FROM {t}_subjects WHERE subject = %s AND key_id IN"
    " (SELECT key_id FROM {t}_subjects WHERE subject = %s)",
    "live": "SELECT count(*) AS n FROM {t} WHERE erased_at IS NULL AND key_id = ANY(%s)",
    "erase": "INSERT INTO {t} (key_id, wrapped_key, erased_at) VALUES (%s, NULL, now())"
    " ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL, master_key_version = NULL,"
    " erased_at = coalesce({t}.erased_at, now())",
}


def _render(statements: dict[str, str], table: str) -> dict[str, str]:
    name = _table(table)
    return {k: v.replace("{t}", name) for k, v in statements.items()}


def secure_sqlite(db: sqlite3.Connection) -> sqlite3.Connection:
    """Set the pragmas every connection to a store with keys or personal data runs with:
    ``secure_delete`` (deleted content is overwritten with zeros, not left in free
    space), WAL like the event stores."""
    db.execute("PRAGMA secure_delete=ON")
    db.execute("PRAGMA journal_mode=WAL")
    return db


def checkpoint_truncate(db: sqlite3.Connection, attempts: int = 8) -> bool:
    """``PRAGMA wal_checkpoint(TRUNCATE)``: copy the WAL into the database and truncate
    it to zero bytes, so pages written before (a wrapped key, an erased row) leave the
    ``-wal`` file. A reader of another connection can hold it up: retried for about 2 s;
    returns whether it completed (it is done again after the next erasure anyway)."""
    for attempt in range(attempts):
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy is None or busy[0] == 0:
            return True
        time.sleep(0.05 * (attempt + 1))
    return False


class SQLiteKeyBackend:
    """The key table in a SQLite file (usually the service's event store file)."""

    def __init__(self, path: str, table: str, with_subjects: bool = False) -> None:
        self._sql = _render(_SQLITE, table)
        self._table = table
        self._subjects = with_subjects
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        secure_sqlite(self._db)
        self._db.execute(self._sql["create"])
        columns = {r[0] for r in self._db.execute(self._sql["columns"]).fetchall()}
        if "master_key_version" not in columns:
            try:
                self._db.execute(self._sql["add_version"])
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise
        if with_subjects:
            self._db.execute(self._sql["create_subjects"])

    @property
    def table(self) -> str:
        return self._table

    def get(self, key_id: str) -> tuple[bytes | None, bool, int] | None:
        with self._lock:
            row = self._db.execute(self._sql["get"], (key_id,)).fetchone()
        return None if row is None else (row[0], row[1] is not None, row[2] or 1)

    def put_if_absent(
        self, key_id: str, wrapped: bytes, subject: str | None = None, version: int = 1
    ) -> None:
        if subject is not None:
            _require_subjects(self._subjects, self._table)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # The subject first: a key is never live without the row that finds it.
                if subject is not None:
                    self._db.execute(self._sql["put_subject"], (subject, key_id))
                self._db.execute(self._sql["put"], (key_id, wrapped, version))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def keys_of(self, subjects: Sequence[str]) -> list[str]:
        _require_subjects(self._subjects, self._table)
        with self._lock:
            rows = self._db.execute(self._sql["keys_of"], (orjson.dumps(list(subjects)).decode(),)).fetchall()
        return sorted(r[0] for r in rows)

    def share(self, source: str, target: str) -> int:
        _require_subjects(self._subjects, self._table)
        with self._lock:
            return int(self._db.execute(self._sql["share"], (target, source)).rowcount)

    def unshare(self, source: str, target: str) -> int:
        _require_subjects(self._subjects, self._table)
        if source == target:
            return 0
        with self._lock:
            return int(self._db.execute(self._sql["unshare"], (target, source)).rowcount)

    def erase(self, key_ids: Sequence[str]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            live = self._db.execute(self._sql["live"], (orjson.dumps(list(key_ids)).decode(),)).fetchone()[0]
            self._db.executemany(self._sql["erase"], [(k,) for k in key_ids])
            self._db.execute("COMMIT")
        return int(live)

    def stale(self, version: int, after: str, limit: int) -> list[tuple[str, bytes, int]]:
        with self._lock:
            rows = self._db.execute(self._sql["stale"], (version, after, limit)).fetchall()
        return [(r[0], bytes(r[1]), int(r[2])) for r in rows]

    def rewrap(self, key_id: str, old: bytes, new: bytes, version: int) -> bool:
        with self._lock:
            return bool(self._db.execute(self._sql["rewrap"], (new, version, key_id, old)).rowcount)

    def count_live(self) -> dict[int, int]:
        with self._lock:
            return {int(v): int(n) for v, n in self._db.execute(self._sql["count_live"]).fetchall()}

    def purge(self) -> None:
        """Checkpoint the WAL with TRUNCATE (secure_delete already zeroed the rows)."""
        with self._lock:
            checkpoint_truncate(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresKeyBackend:
    """The same tables in the service's PostgreSQL database (eventsourcing's pool:
    ``connect`` hands out autocommit connections whose rows are dicts)."""

    def __init__(self, connect: Callable[[], Any], table: str, with_subjects: bool = False) -> None:
        self._sql = _render(_POSTGRES, table)
        self._table = table
        self._subjects = with_subjects
        self._connect = connect
        with self._connect() as conn:
            conn.execute(self._sql["create"])
            conn.execute(self._sql["add_version"])
            if with_subjects:
                conn.execute(self._sql["create_subjects"])

    @property
    def table(self) -> str:
        return self._table

    def get(self, key_id: str) -> tuple[bytes | None, bool, int] | None:
        with self._connect() as conn:
            row = conn.execute(self._sql["get"], (key_id,)).fetchone()
        if row is None:
            return None
        wrapped = row["wrapped_key"]
        return (
            bytes(wrapped) if wrapped is not None else None,
            row["erased_at"] is not None,
            row["master_key_version"] or 1,
        )

    def put_if_absent(
        self, key_id: str, wrapped: bytes, subject: str | None = None, version: int = 1
    ) -> None:
        if subject is not None:
            _require_subjects(self._subjects, self._table)
        with self._connect() as conn, conn.transaction():
            if subject is not None:
                conn.execute(self._sql["put_subject"], (subject, key_id))
            conn.execute(self._sql["put"], (key_id, wrapped, version))

    def keys_of(self, subjects: Sequence[str]) -> list[str]:
        _require_subjects(self._subjects, self._table)
        with self._connect() as conn:
            rows = conn.execute(self._sql["keys_of"], (list(subjects),)).fetchall()
        return sorted(r["key_id"] for r in rows)

    def share(self, source: str, target: str) -> int:
        _require_subjects(self._subjects, self._table)
        with self._connect() as conn:
            return int(conn.execute(self._sql["share"], (target, source)).rowcount)

    def unshare(self, source: str, target: str) -> int:
        _require_subjects(self._subjects, self._table)
        if source == target:
            return 0
        with self._connect() as conn:
            return int(conn.execute(self._sql["unshare"], (target, source)).rowcount)

    def erase(self, key_ids: Sequence[str]) -> int:
        with self._connect() as conn, conn.transaction():
            row = conn.execute(self._sql["live"], (list(key_ids),)).fetchone()
            for key_id in key_ids:
                conn.execute(self._sql["erase"], (key_id,))
        return int(row["n"])

    def stale(self, version: int, after: str, limit: int) -> list[tuple[str, bytes, int]]:
        with self._connect() as conn:
            rows = conn.execute(self._sql["stale"], (version, after, limit)).fetchall()
        return [(r["key_id"], bytes(r["wrapped_key"]), int(r["version"])) for r in rows]

    def rewrap(self, key_id: str, old: bytes, new: bytes, version: int) -> bool:
        with self._connect() as conn:
            return bool(conn.execute(self._sql["rewrap"], (new, version, key_id, old)).rowcount)

    def count_live(self) -> dict[int, int]:
        with self._connect() as conn:
            return {int(r["version"]): int(r["n"]) for r in conn.execute(self._sql["count_live"]).fetchall()}

    def purge(self) -> None:
        """``VACUUM FULL`` the key table: it is rewritten with the live row versions only,
        so an erased (or re-wrapped) key's old row version leaves the table's files. The
        table is small (one short row per key); the rewrite holds its lock briefly.
        Outside a transaction, as VACUUM must be (the pool's connections autocommit)."""
        with self._connect() as conn:
            if not conn.autocommit:
                raise RuntimeError("the key table's VACUUM needs an autocommit connection")
            conn.execute(self._sql["vacuum"])


def _require_subjects(enabled: bool, table: str) -> None:
    if not enabled:
        raise ValueError(f"{table} keeps no subjects (with_subjects=False)")


@dataclass(frozen=True)
class KeyStore:
    """Where one service keeps data keys: a table of its SQLite file under
    ``var/<service>/`` or of its PostgreSQL database (named after the service)."""

    service: str
    table: str
    sqlite_file: str


#: Every service store with data keys (each service names the same table in its own code;
#: their tests check it is listed here, so ``crm keys rotate`` misses none).
KEY_STORES = (
    KeyStore("identity", "customer_data_keys", "events.sqlite"),
    KeyStore("support", "ticket_data_keys", "events.sqlite"),
    KeyStore("engagement", "survey_text_keys", "surveys.sqlite"),
)


@dataclass(frozen=True)
class StoreRotation:
    store: KeyStore
    where: str
    report: RotationReport | None  #: None: the store or its key table does not exist


def rotate_all(settings: Any, batch: int = 500) -> list[StoreRotation]:
    """``crm keys rotate``: re-wrap every data key of every service store (``KEY_STORES``)
    under the current master key version of ``settings`` (a ``crm_platform.settings.Settings``).
    Idempotent and resumable; a store that does not exist yet is reported, not created."""
    keys: MasterKeys = settings.master_keys
    out = []
    for store in KEY_STORES:
        if settings.event_store == "sqlite":
            path = settings.var_dir / store.service / store.sqlite_file
            where = str(path)
            if not path.exists() or not _sqlite_has_table(str(path), store.table):
                out.append(StoreRotation(store, where, None))
                continue
            backend = SQLiteKeyBackend(str(path), store.table)
            try:
                out.append(StoreRotation(store, where, rotate_keys(backend, keys, batch)))
            finally:
                backend.close()
            continue
        connect = _postgres_connect(settings, store.service)
        db = settings.postgres_db or store.service
        where = f"postgresql://{settings.postgres_host}:{settings.postgres_port}/{db}"
        try:
            with connect() as conn:
                found = conn.execute("SELECT to_regclass(%s) AS t", (store.table,)).fetchone()["t"]
        except Exception as exc:  # psycopg.OperationalError: no such database
            if "does not exist" not in str(exc):
                raise
            found = None
        if found is None:
            out.append(StoreRotation(store, where, None))
            continue
        out.append(
            StoreRotation(store, where, rotate_keys(PostgresKeyBackend(connect, store.table), keys, batch))
        )
    return out


def _sqlite_has_table(path: str, table: str) -> bool:
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    finally:
        db.close()
    return row is not None


def _postgres_connect(settings: Any, service: str) -> Callable[[], Any]:
    import psycopg
    from psycopg.rows import dict_row

    def connect() -> Any:
        return psycopg.connect(
            host=settings.postgres_host,
            port=settings.postgres_port,
            user=settings.postgres_user,
            password=settings.postgres_password.get_secret_value(),
            dbname=settings.postgres_db or service,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=5,
        )

    return connect
