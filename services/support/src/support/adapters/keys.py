"""Per-ticket data keys: how support seals what customers write, and how it shreds it.

An inquiry's subject, body, the contact details the customer gave, every reply and the
rating comment are personal data. Support seals them (AES-256-GCM,
``crm_platform.crypto.seal``) with a data key of the *ticket*, before they reach the
event store; the relay publishes the same sealed values on Kafka. Keys are kept beside
the event log (a table in support's own database), wrapped by the master key, never in
an event: events are immutable, keys must be deletable.

Erasure (``customer.erased`` on ``crm.identity.customer``) names the erased customer's
identifiers as blind indexes; support's eraser (``python -m support eraser``) finds every
ticket that carried one of them and deletes those tickets' keys. From then on the
content is unreadable everywhere — the store, Kafka, ClickHouse's copies of the events,
backups — while the ticket's non-personal facts (channel, category, times, CSAT) still
count in the KPIs.

Why per ticket and not per customer: support does not know customer ids (identity
resolves them later, and may merge or unmerge); a ticket is the unit support owns, and
its identifiers say whom it concerns.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from crm_contracts.envelope import SealedValue
from crm_platform.crypto import SealError, generate_data_key, open_sealed, seal, unwrap_key, wrap_key


class ContentErased(LookupError):
    """The ticket's data key was deleted (erasure): its content is gone for good."""


class _Backend(Protocol):
    def get(self, key_id: str) -> tuple[bytes | None, bool] | None: ...
    def put_if_absent(self, key_id: str, wrapped: bytes) -> None: ...
    def erase(self, key_ids: list[str]) -> int: ...


class TicketKeys:
    """Creates, caches, uses and erases the data keys of tickets."""

    def __init__(self, backend: _Backend, master_key: bytes, cache_ttl_s: float = 30.0) -> None:
        self._backend = backend
        self._master = master_key
        # Short-lived cache: an erasure by another process (the eraser) takes effect
        # here within ``cache_ttl_s``.
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._ttl = cache_ttl_s
        self._lock = threading.Lock()

    @staticmethod
    def key_id(ticket_id: uuid.UUID) -> str:
        return f"ticket-{ticket_id}"

    def _key(self, ticket_id: uuid.UUID, create: bool) -> bytes:
        key_id = self.key_id(ticket_id)
        with self._lock:
            hit = self._cache.get(key_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        row = self._backend.get(key_id)
        if row is None:
            if not create:
                raise ContentErased(f"{key_id} has no data key")
            self._backend.put_if_absent(key_id, wrap_key(self._master, generate_data_key(), key_id))
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

    def seal(self, ticket_id: uuid.UUID, value: object, context: str) -> dict[str, str]:
        """``value`` sealed with the ticket's key (created on first use), as a plain dict
        (what the domain stores and the contract's ``SealedValue`` reads)."""
        key = self._key(ticket_id, create=True)
        return seal(key, self.key_id(ticket_id), value, context).model_dump()

    def open(self, ticket_id: uuid.UUID, sealed: dict[str, str], context: str) -> Any:
        """The clear value; raises ContentErased after an erasure."""
        key = self._key(ticket_id, create=False)
        try:
            return open_sealed(key, SealedValue.model_validate(sealed), context)
        except SealError:
            raise ContentErased(f"the content of ticket {ticket_id} cannot be opened") from None

    def erase(self, ticket_ids: list[uuid.UUID]) -> int:
        """Delete the keys of these tickets (idempotent); returns how many were live."""
        key_ids = [self.key_id(t) for t in ticket_ids]
        erased = self._backend.erase(key_ids)
        with self._lock:
            for key_id in key_ids:
                self._cache.pop(key_id, None)
        return erased


class SQLiteKeyBackend:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS ticket_data_keys"
            " (key_id TEXT PRIMARY KEY, wrapped_key BLOB, erased_at TEXT)"
        )

    def get(self, key_id: str) -> tuple[bytes | None, bool] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT wrapped_key, erased_at FROM ticket_data_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        return None if row is None else (row[0], row[1] is not None)

    def put_if_absent(self, key_id: str, wrapped: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO ticket_data_keys (key_id, wrapped_key) VALUES (?, ?)",
                (key_id, wrapped),
            )

    def erase(self, key_ids: list[str]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            live = self._db.execute(
                "SELECT count(*) FROM ticket_data_keys WHERE erased_at IS NULL AND key_id IN"
                " (SELECT value FROM json_each(?))",
                (_json(key_ids),),
            ).fetchone()[0]
            self._db.executemany(
                "INSERT INTO ticket_data_keys (key_id, wrapped_key, erased_at)"
                " VALUES (?, NULL, datetime('now'))"
                " ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL,"
                " erased_at = coalesce(erased_at, datetime('now'))",
                [(k,) for k in key_ids],
            )
            self._db.execute("COMMIT")
        return int(live)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresKeyBackend:
    """The same table in support's PostgreSQL database (eventsourcing's pool)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ticket_data_keys (key_id TEXT PRIMARY KEY, "
                "wrapped_key BYTEA, erased_at TIMESTAMPTZ)"
            )

    def get(self, key_id: str) -> tuple[bytes | None, bool] | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT wrapped_key, erased_at FROM ticket_data_keys WHERE key_id = %s", (key_id,)
            ).fetchone()
        if row is None:
            return None
        wrapped = row["wrapped_key"]  # eventsourcing's pool hands out dict rows
        return (bytes(wrapped) if wrapped is not None else None, row["erased_at"] is not None)

    def put_if_absent(self, key_id: str, wrapped: bytes) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO ticket_data_keys (key_id, wrapped_key) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (key_id, wrapped),
            )

    def erase(self, key_ids: list[str]) -> int:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM ticket_data_keys WHERE erased_at IS NULL AND key_id = ANY(%s)",
                (key_ids,),
            ).fetchone()
            for key_id in key_ids:
                conn.execute(
                    "INSERT INTO ticket_data_keys (key_id, wrapped_key, erased_at) VALUES (%s, NULL, now())"
                    " ON CONFLICT (key_id) DO UPDATE SET wrapped_key = NULL,"
                    " erased_at = coalesce(ticket_data_keys.erased_at, now())",
                    (key_id,),
                )
        return int(row["n"])


def _json(values: list[str]) -> str:
    import orjson

    return orjson.dumps(values).decode()
