"""The order ledger: which orders were ingested, and what of them was returned since.

High-volume facts go straight to Kafka (they are not aggregates), but a return must name
an order that exists and may not return more than was bought, and a resent order must
be recognised. The ingestion API therefore records each acknowledged order and return
here, after Kafka's ack: a row in the ledger means the fact is on the broker.

Orders and returns are keyed by namespace and id (the ``grp`` column holds the
namespace): ``store:<store_id>`` for POS transactions, so each store has its own receipt
ids and no store can claim or return another's; ``online`` for the web shop and the
app, which share one order id space. A return is recorded in its order's namespace.

Rows written before orders were kept per store have the namespace ``store`` (their
store is unknown): they are kept as they are and still read — their ids stay taken for
every store, and only a key bound to no store may return them (:data:`LEGACY_STORE`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from crm_platform.datakeys import checkpoint_truncate

#: The namespace of store orders recorded before each store had its own.
LEGACY_STORE = "store"
ONLINE = "online"


def store_namespace(store_id: str) -> str:
    return f"store:{store_id}"


def namespaces(namespace: str) -> tuple[str, ...]:
    """Where an id of ``namespace`` may already be recorded: its own, and for a store
    the shared one of the rows from before namespaces."""
    return (namespace, LEGACY_STORE) if namespace.startswith("store:") else (namespace,)


@dataclass
class LedgerOrder:
    namespace: str
    order_id: str
    event_id: str
    customer_key: str
    #: line_no -> (sku, quantity bought, amount paid)
    lines: dict[int, tuple[str, int, int]]
    #: line_no -> quantity returned so far
    returned: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LedgerReturn:
    namespace: str
    order_id: str
    return_id: str
    event_id: str
    #: line_no -> quantity returned
    lines: Mapping[int, int]


class OrderLedger(Protocol):
    #: A file in this process (cheap to call from the event loop for a few rows), not
    #: a database across the network.
    in_process: bool

    def busy(self) -> bool:
        """Whether a call now would wait for another of this process's calls."""
        ...

    def try_record(self, orders: Iterable[LedgerOrder], returns: Iterable[LedgerReturn]) -> bool:
        """Record without waiting for anyone, or do nothing and say False."""
        ...

    def orders(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], LedgerOrder]: ...
    def returns(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]: ...
    def record(self, orders: Iterable[LedgerOrder], returns: Iterable[LedgerReturn]) -> None: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...
    def rekey_customer(self, keys: Sequence[str], replacement: str) -> int:
        """Erasure: orders recorded under one of ``keys`` (an erased person's blind
        indexes) are recorded under ``replacement`` (their customer id) instead; returns
        how many."""
        ...


class SQLiteOrderLedger:
    """The ledger in a local SQLite file (local mode; the API's worker processes share
    it, SQLite's locks serialise their writes)."""

    in_process = True

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # blind indexes: deleted rows are zeroed
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS ingested_orders (
                grp TEXT NOT NULL, order_id TEXT NOT NULL, event_id TEXT NOT NULL,
                customer_key TEXT NOT NULL, lines BLOB NOT NULL,
                PRIMARY KEY (grp, order_id));
            CREATE TABLE IF NOT EXISTS ingested_returns (
                grp TEXT NOT NULL, order_id TEXT NOT NULL, return_id TEXT NOT NULL,
                event_id TEXT NOT NULL, lines BLOB NOT NULL,
                PRIMARY KEY (grp, return_id));
            CREATE INDEX IF NOT EXISTS ingested_returns_order ON ingested_returns (grp, order_id);
            """
        )

    def orders(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], LedgerOrder]:
        """The ingested orders among ``keys``, with what was returned of each."""
        wanted = list(set(keys))
        found: dict[tuple[str, str], LedgerOrder] = {}
        with self._lock:
            for start in range(0, len(wanted), 400):
                chunk = wanted[start : start + 400]
                where = " OR ".join("(grp = ? AND order_id = ?)" for _ in chunk)
                params = [v for key in chunk for v in key]
                for grp, order_id, event_id, customer_key, lines in self._db.execute(
                    f"SELECT grp, order_id, event_id, customer_key, lines FROM ingested_orders WHERE {where}",  # noqa: S608
                    params,
                ):
                    found[(grp, order_id)] = LedgerOrder(
                        grp, order_id, event_id, customer_key, _lines(orjson.loads(lines))
                    )
                for grp, order_id, lines in self._db.execute(
                    f"SELECT grp, order_id, lines FROM ingested_returns WHERE {where}",  # noqa: S608
                    params,
                ):
                    order = found.get((grp, order_id))
                    if order is not None:
                        for line_no, quantity in orjson.loads(lines).items():
                            order.returned[int(line_no)] = order.returned.get(int(line_no), 0) + quantity
        return found

    def returns(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(namespace, return_id) -> event_id of the returns among ``keys`` already ingested."""
        wanted = list(set(keys))
        found: dict[tuple[str, str], str] = {}
        with self._lock:
            for start in range(0, len(wanted), 400):
                chunk = wanted[start : start + 400]
                where = " OR ".join("(grp = ? AND return_id = ?)" for _ in chunk)
                params = [v for key in chunk for v in key]
                for grp, return_id, event_id in self._db.execute(
                    f"SELECT grp, return_id, event_id FROM ingested_returns WHERE {where}",  # noqa: S608
                    params,
                ):
                    found[(grp, return_id)] = event_id
        return found

    def record(self, orders: Iterable[LedgerOrder], returns: Iterable[LedgerReturn]) -> None:
        """Record acknowledged orders and returns, all or nothing (a replay is a no-op)."""
        order_rows, return_rows = _rows(orders, returns)
        with self._lock:
            self._write(order_rows, return_rows)

    def try_record(self, orders: Iterable[LedgerOrder], returns: Iterable[LedgerReturn]) -> bool:
        """:meth:`record` if it can be done without waiting — for this process's other
        calls or for another process's write — else nothing, and False."""
        order_rows, return_rows = _rows(orders, returns)
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._db.execute("PRAGMA busy_timeout = 0")
            try:
                self._write(order_rows, return_rows)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return False
                raise
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            return True
        finally:
            self._lock.release()

    def _write(self, order_rows: list[tuple[Any, ...]], return_rows: list[tuple[Any, ...]]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR IGNORE INTO ingested_orders VALUES (?, ?, ?, ?, ?)", order_rows)
            self._db.executemany("INSERT OR IGNORE INTO ingested_returns VALUES (?, ?, ?, ?, ?)", return_rows)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def busy(self) -> bool:
        return self._lock.locked()

    def rekey_customer(self, keys: Sequence[str], replacement: str) -> int:
        if not keys:
            return 0
        with self._lock:
            changed = self._db.execute(
                "UPDATE ingested_orders SET customer_key = ?"
                " WHERE customer_key IN (SELECT value FROM json_each(?))",
                (replacement, orjson.dumps(list(keys)).decode()),
            ).rowcount
            # secure_delete zeroed the old cells; the old pages leave the WAL too
            checkpoint_truncate(self._db)
        return int(changed)

    def ping(self) -> None:
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


#: How long a write waits for another process's (the other API worker's, an import's).
BUSY_TIMEOUT_MS = 10_000


def _rows(
    orders: Iterable[LedgerOrder], returns: Iterable[LedgerReturn]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    order_rows = [(o.namespace, o.order_id, o.event_id, o.customer_key, _dump(o.lines)) for o in orders]
    return_rows = [(r.namespace, r.order_id, r.return_id, r.event_id, _dump(r.lines)) for r in returns]
    return order_rows, return_rows


def _dump(lines: Mapping[int, object]) -> bytes:
    return orjson.dumps({str(k): v for k, v in lines.items()})


def _lines(raw: dict[str, list[object]]) -> dict[int, tuple[str, int, int]]:
    return {int(k): (str(v[0]), int(str(v[1])), int(str(v[2]))) for k, v in raw.items()}


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingested_orders (
    grp TEXT NOT NULL, order_id TEXT NOT NULL, event_id TEXT NOT NULL,
    customer_key TEXT NOT NULL, lines BYTEA NOT NULL,
    PRIMARY KEY (grp, order_id));
CREATE TABLE IF NOT EXISTS ingested_returns (
    grp TEXT NOT NULL, order_id TEXT NOT NULL, return_id TEXT NOT NULL,
    event_id TEXT NOT NULL, lines BYTEA NOT NULL,
    PRIMARY KEY (grp, return_id));
CREATE INDEX IF NOT EXISTS ingested_returns_order ON ingested_returns (grp, order_id);
"""


class PostgresOrderLedger:
    """The ledger in the engagement database (production: any number of API replicas)."""

    in_process = False

    def __init__(self, conninfo: str, pool_size: int = 5) -> None:
        from psycopg_pool import ConnectionPool

        self._pool: Any = ConnectionPool(conninfo, min_size=1, max_size=pool_size, open=True, timeout=5)
        with self._pool.connection() as conn:
            conn.execute(_PG_SCHEMA)

    def try_record(self, orders: Iterable[LedgerOrder], returns: Iterable[LedgerReturn]) -> bool:
        return False  # across the network: always on a thread

    def busy(self) -> bool:
        return False  # never called on the loop (not in process)

    def orders(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], LedgerOrder]:
        wanted = list(set(keys))
        found: dict[tuple[str, str], LedgerOrder] = {}
        if not wanted:
            return found
        groups, ids = [k[0] for k in wanted], [k[1] for k in wanted]
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT o.grp, o.order_id, o.event_id, o.customer_key, o.lines FROM ingested_orders o "
                "JOIN unnest(%s::text[], %s::text[]) AS k(grp, order_id) USING (grp, order_id)",
                (groups, ids),
            ).fetchall()
            for grp, order_id, event_id, customer_key, lines in rows:
                found[(grp, order_id)] = LedgerOrder(
                    grp, order_id, event_id, customer_key, _lines(orjson.loads(bytes(lines)))
                )
            returned = conn.execute(
                "SELECT r.grp, r.order_id, r.lines FROM ingested_returns r "
                "JOIN unnest(%s::text[], %s::text[]) AS k(grp, order_id) USING (grp, order_id)",
                (groups, ids),
            ).fetchall()
        for grp, order_id, lines in returned:
            order = found.get((grp, order_id))
            if order is not None:
                for line_no, quantity in orjson.loads(bytes(lines)).items():
                    order.returned[int(line_no)] = order.returned.get(int(line_no), 0) + quantity
        return found

    def returns(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        wanted = list(set(keys))
        if not wanted:
            return {}
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT r.grp, r.return_id, r.event_id FROM ingested_returns r "
                "JOIN unnest(%s::text[], %s::text[]) AS k(grp, return_id) USING (grp, return_id)",
                ([k[0] for k in wanted], [k[1] for k in wanted]),
            ).fetchall()
        return {(grp, return_id): event_id for grp, return_id, event_id in rows}

    def record(self, orders: Iterable[LedgerOrder], returns: Iterable[LedgerReturn]) -> None:
        order_rows, return_rows = _rows(orders, returns)
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if order_rows:
                cur.executemany(
                    "INSERT INTO ingested_orders VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    order_rows,
                )
            if return_rows:
                cur.executemany(
                    "INSERT INTO ingested_returns VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    return_rows,
                )

    def rekey_customer(self, keys: Sequence[str], replacement: str) -> int:
        if not keys:
            return 0
        with self._pool.connection() as conn:
            changed = conn.execute(
                "UPDATE ingested_orders SET customer_key = %s WHERE customer_key = ANY(%s)",
                (replacement, list(keys)),
            ).rowcount
        return int(changed)

    def ping(self) -> None:
        with self._pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._pool.close()


def open_ledger(settings: Any) -> OrderLedger:
    """SQLite under ``var/engagement`` in local mode, the engagement database otherwise."""
    if settings.event_store == "sqlite":
        return SQLiteOrderLedger(settings.service_dir("engagement") / "ledger.sqlite")
    from psycopg.conninfo import make_conninfo

    conninfo = make_conninfo(
        host=settings.postgres_host,
        port=settings.postgres_port,
        user=settings.postgres_user,
        password=settings.postgres_password.get_secret_value(),
        dbname=settings.postgres_db or "engagement",
        connect_timeout=5,
    )
    return PostgresOrderLedger(conninfo, settings.postgres_pool_size)
