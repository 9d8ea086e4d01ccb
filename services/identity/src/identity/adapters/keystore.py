"""Per-customer data keys, wrapped by the master key, in the identity service's own store.

Kept beside (not inside) the event log on purpose: erasure must be able to *delete* a key,
and events are immutable. Deleting a customer's key makes every value sealed with it
unreadable, on Kafka, in ClickHouse and in backups.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from crm_platform.crypto import generate_data_key, unwrap_key, wrap_key


class KeyErased(LookupError):
    """The customer's data key was deleted (erasure): the sealed data is gone for good."""


class _Backend(Protocol):
    def get(self, key_id: str) -> tuple[bytes | None, bool] | None: ...
    def put_if_absent(self, key_id: str, wrapped: bytes) -> None: ...
    def erase(self, key_id: str) -> None: ...


class DataKeyStore:
    """Creates, caches and erases per-customer AES-256 data keys."""

    def __init__(self, backend: _Backend, master_key: bytes, cache_ttl_s: float = 60.0) -> None:
        self._backend = backend
        self._master = master_key
        # Unwrapped keys are cached briefly: an erasure made by another process takes
        # effect here within ``cache_ttl_s``.
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._ttl = cache_ttl_s
        self._lock = threading.Lock()

    @staticmethod
    def key_id_for(customer_id: uuid.UUID) -> str:
        return f"cust-{customer_id}"

    def _cached(self, key_id: str) -> bytes | None:
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        return None

    def get(self, customer_id: uuid.UUID) -> tuple[str, bytes] | None:
        """The customer's key, None if it never had one; raises KeyErased after erasure."""
        key_id = self.key_id_for(customer_id)
        cached = self._cached(key_id)
        if cached is not None:
            return key_id, cached
        row = self._backend.get(key_id)
        if row is None:
            return None
        wrapped, erased = row
        if erased or wrapped is None:
            raise KeyErased(key_id)
        key = unwrap_key(self._master, wrapped, key_id)
        with self._lock:
            self._cache[key_id] = (time.monotonic(), key)
        return key_id, key

    def get_or_create(self, customer_id: uuid.UUID) -> tuple[str, bytes]:
        found = self.get(customer_id)
        if found is not None:
            return found
        key_id = self.key_id_for(customer_id)
        self._backend.put_if_absent(key_id, wrap_key(self._master, generate_data_key(), key_id))
        found = self.get(customer_id)
        assert found is not None
        return found

    def erase(self, customer_id: uuid.UUID) -> None:
        key_id = self.key_id_for(customer_id)
        self._backend.erase(key_id)
        with self._lock:
            self._cache.pop(key_id, None)


class SQLiteKeyBackend:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        # WAL like the event store beside it: readers never block the writer.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS customer_data_keys (key_id TEXT PRIMARY KEY, "
            "wrapped_key BLOB, erased_at TEXT)"
        )

    def get(self, key_id: str) -> tuple[bytes | None, bool] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT wrapped_key, erased_at FROM customer_data_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1] is not None)

    def put_if_absent(self, key_id: str, wrapped: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO customer_data_keys (key_id, wrapped_key) VALUES (?, ?)",
                (key_id, wrapped),
            )

    def erase(self, key_id: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO customer_data_keys (key_id, wrapped_key, erased_at) "
                "VALUES (?, NULL, datetime('now')) "
                "ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL, erased_at = datetime('now')",
                (key_id,),
            )


class PostgresKeyBackend:
    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS customer_data_keys (key_id TEXT PRIMARY KEY, "
                "wrapped_key BYTEA, erased_at TIMESTAMPTZ)"
            )

    def get(self, key_id: str) -> tuple[bytes | None, bool] | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT wrapped_key, erased_at FROM customer_data_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        if row is None:
            return None
        # eventsourcing's pool hands out dict rows.
        wrapped = row["wrapped_key"]
        return (bytes(wrapped) if wrapped is not None else None, row["erased_at"] is not None)

    def put_if_absent(self, key_id: str, wrapped: bytes) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO customer_data_keys (key_id, wrapped_key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (key_id, wrapped),
            )

    def erase(self, key_id: str) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO customer_data_keys (key_id, wrapped_key, erased_at) VALUES (%s, NULL, now()) "
                "ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL, erased_at = now()",
                (key_id,),
            )
