"""Per-customer data keys, wrapped by the master key, in the identity service's own store.

Kept beside (not inside) the event log on purpose: erasure must be able to *delete* a key,
and events are immutable. Deleting a customer's key makes every value sealed with it
unreadable, on Kafka, in ClickHouse and in backups.

The table (``customer_data_keys``) is kept by the platform's key backends
(``crm_platform.datakeys``): each row records the master key version that wrapped it
(none: version 1), SQLite connections delete securely and an erasure is followed by
:meth:`DataKeyStore.purge` (WAL checkpoint / ``VACUUM FULL``); ``crm keys rotate``
re-wraps the keys under the current master key (:meth:`DataKeyStore.rotate`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from crm_platform import datakeys
from crm_platform.crypto import MasterKeys, generate_data_key

#: identity's stored format (unchanged columns, plus ``master_key_version``)
TABLE = "customer_data_keys"


class KeyErased(LookupError):
    """The customer's data key was deleted (erasure): the sealed data is gone for good."""


class DataKeyStore:
    """Creates, caches and erases per-customer AES-256 data keys."""

    def __init__(
        self, backend: datakeys.KeyBackend, master_key: bytes | MasterKeys, cache_ttl_s: float = 60.0
    ) -> None:
        self._backend = backend
        self._master = MasterKeys.of(master_key)
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
        wrapped, erased, version = row
        if erased or wrapped is None:
            raise KeyErased(key_id)
        key = self._master.unwrap(wrapped, key_id, version)
        with self._lock:
            self._cache[key_id] = (time.monotonic(), key)
        return key_id, key

    def get_or_create(self, customer_id: uuid.UUID) -> tuple[str, bytes]:
        found = self.get(customer_id)
        if found is not None:
            return found
        key_id = self.key_id_for(customer_id)
        version, wrapped = self._master.wrap(generate_data_key(), key_id)
        self._backend.put_if_absent(key_id, wrapped, version=version)
        found = self.get(customer_id)
        assert found is not None
        return found

    def erase(self, customer_id: uuid.UUID) -> None:
        key_id = self.key_id_for(customer_id)
        self._backend.erase([key_id])
        with self._lock:
            self._cache.pop(key_id, None)

    def purge(self) -> None:
        """After a batch of erasures: the erased keys' old bytes leave the store's files."""
        datakeys.purge(self._backend)

    def rotate(self, batch: int = 500) -> datakeys.RotationReport:
        """Re-wrap every live key under the current master key version."""
        backend: Any = self._backend
        with self._lock:
            self._cache.clear()
        return datakeys.rotate_keys(backend, self._master, batch)


class SQLiteKeyBackend(datakeys.SQLiteKeyBackend):
    def __init__(self, path: str) -> None:
        super().__init__(path, TABLE)
        # Like the event store beside it: readers never block the writer.
        self._db.execute("PRAGMA synchronous=NORMAL")


class PostgresKeyBackend(datakeys.PostgresKeyBackend):
    def __init__(self, connect: Callable[[], Any]) -> None:
        super().__init__(connect, TABLE)
