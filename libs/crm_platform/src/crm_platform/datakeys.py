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
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from crm_contracts.envelope import SealedValue
from crm_platform.crypto import SealError, generate_data_key, open_sealed, seal, unwrap_key, wrap_key

_TABLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class ContentErased(LookupError):
    """The record's data key was deleted (erasure): its content is gone for good."""


class KeyBackend(Protocol):
    def get(self, key_id: str) -> tuple[bytes | None, bool] | None: ...
    def put_if_absent(self, key_id: str, wrapped: bytes, subject: str | None = None) -> None: ...
    def erase(self, key_ids: Sequence[str]) -> int: ...
    def keys_of(self, subjects: Sequence[str]) -> list[str]: ...
    def share(self, source: str, target: str) -> int: ...
    def unshare(self, source: str, target: str) -> int: ...


def _table(name: str) -> str:
    if not _TABLE.match(name):
        raise ValueError(f"{name!r} is not a table name (lower-case letters, digits, _)")
    return name


class DataKeys:
    """Creates, caches, uses and erases the data keys of one kind of record."""

    def __init__(
        self, backend: KeyBackend, master_key: bytes, prefix: str, cache_ttl_s: float = 30.0
    ) -> None:
        self._backend = backend
        self._master = master_key
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
            wrapped_new = wrap_key(self._master, generate_data_key(), key_id)
            if subject is None:
                self._backend.put_if_absent(key_id, wrapped_new)
            else:
                self._backend.put_if_absent(key_id, wrapped_new, subject)
            row = self._backend.get(key_id)
            assert row is not None
        wrapped, erased = row
        if erased or wrapped is None:
            raise ContentErased(f"the content of {key_id} was erased")
        key = unwrap_key(self._master, wrapped, key_id)
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
    "get": "SELECT wrapped_key, erased_at FROM {t} WHERE key_id = ?",
    "put_subject": "INSERT OR IGNORE INTO {t}_subjects (subject, key_id) VALUES (?, ?)",
    "put": "INSERT OR IGNORE INTO {t} (key_id, wrapped_key) VALUES (?, ?)",
    "keys_of": "SELECT DISTINCT key_id FROM {t}_subjects WHERE subject IN (SELECT value FROM json_each(?))",
    "share": "INSERT OR IGNORE INTO {t}_subjects (subject, key_id)"
    " SELECT ?, key_id FROM {t}_subjects WHERE subject = ?",
    "unshare": "DELETE FROM {t}_subjects WHERE subject = ? AND key_id IN"
    " (SELECT key_id FROM {t}_subjects WHERE subject = ?)",
    "live": "SELECT count(*) FROM {t} WHERE erased_at IS NULL AND key_id IN (SELECT value FROM json_each(?))",
    "erase": "INSERT INTO {t} (key_id, wrapped_key, erased_at) VALUES (?, NULL, datetime('now'))"
    " ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL,"
    " erased_at = coalesce(erased_at, datetime('now'))",
}
_POSTGRES = {
    "create": "CREATE TABLE IF NOT EXISTS {t}"
    " (key_id TEXT PRIMARY KEY, wrapped_key BYTEA, erased_at TIMESTAMPTZ)",
    "create_subjects": _SQLITE["create_subjects"],
    "get": "SELECT wrapped_key, erased_at FROM {t} WHERE key_id = %s",
    "put_subject": "INSERT INTO {t}_subjects (subject, key_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
    "put": "INSERT INTO {t} (key_id, wrapped_key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
    "keys_of": "SELECT DISTINCT key_id FROM {t}_subjects WHERE subject = ANY(%s)",
    "share": "INSERT INTO {t}_subjects (subject, key_id)"
    " SELECT %s, key_id FROM {t}_subjects WHERE subject = %s ON CONFLICT DO NOTHING",
    "unshare": "DELETE FROM {t}_subjects WHERE subject = %s AND key_id IN"
    " (SELECT key_id FROM {t}_subjects WHERE subject = %s)",
    "live": "SELECT count(*) AS n FROM {t} WHERE erased_at IS NULL AND key_id = ANY(%s)",
    "erase": "INSERT INTO {t} (key_id, wrapped_key, erased_at) VALUES (%s, NULL, now())"
    " ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL, erased_at = coalesce({t}.erased_at, now())",
}


def _render(statements: dict[str, str], table: str) -> dict[str, str]:
    name = _table(table)
    return {k: v.replace("{t}", name) for k, v in statements.items()}


class SQLiteKeyBackend:
    """The key table in a SQLite file (usually the service's event store file)."""

    def __init__(self, path: str, table: str, with_subjects: bool = False) -> None:
        self._sql = _render(_SQLITE, table)
        self._table = table
        self._subjects = with_subjects
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(self._sql["create"])
        if with_subjects:
            self._db.execute(self._sql["create_subjects"])

    def get(self, key_id: str) -> tuple[bytes | None, bool] | None:
        with self._lock:
            row = self._db.execute(self._sql["get"], (key_id,)).fetchone()
        return None if row is None else (row[0], row[1] is not None)

    def put_if_absent(self, key_id: str, wrapped: bytes, subject: str | None = None) -> None:
        if subject is not None:
            _require_subjects(self._subjects, self._table)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # The subject first: a key is never live without the row that finds it.
                if subject is not None:
                    self._db.execute(self._sql["put_subject"], (subject, key_id))
                self._db.execute(self._sql["put"], (key_id, wrapped))
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

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresKeyBackend:
    """The same tables in the service's PostgreSQL database (eventsourcing's pool:
    ``connect`` hands out connections whose rows are dicts)."""

    def __init__(self, connect: Callable[[], Any], table: str, with_subjects: bool = False) -> None:
        self._sql = _render(_POSTGRES, table)
        self._table = table
        self._subjects = with_subjects
        self._connect = connect
        with self._connect() as conn:
            conn.execute(self._sql["create"])
            if with_subjects:
                conn.execute(self._sql["create_subjects"])

    def get(self, key_id: str) -> tuple[bytes | None, bool] | None:
        with self._connect() as conn:
            row = conn.execute(self._sql["get"], (key_id,)).fetchone()
        if row is None:
            return None
        wrapped = row["wrapped_key"]
        return (bytes(wrapped) if wrapped is not None else None, row["erased_at"] is not None)

    def put_if_absent(self, key_id: str, wrapped: bytes, subject: str | None = None) -> None:
        if subject is not None:
            _require_subjects(self._subjects, self._table)
        with self._connect() as conn, conn.transaction():
            if subject is not None:
                conn.execute(self._sql["put_subject"], (subject, key_id))
            conn.execute(self._sql["put"], (key_id, wrapped))

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


def _require_subjects(enabled: bool, table: str) -> None:
    if not enabled:
        raise ValueError(f"{table} keeps no subjects (with_subjects=False)")
