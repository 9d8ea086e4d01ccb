"""The append-only audit log of personal-data reads, in the service's own store.

Every read that discloses personal data (identity's profiles, identifiers, name and
identifier searches with ``identity:pii``, contact points; support's ticket content) is
written here **before** the answer leaves: who (the API key's id), which customer (and
the subject read: a ticket, a message), when, and why (the route and its purpose).
An answer whose audit row cannot be written is not given (the write's error becomes a
500/503, never a silent skip).

One table, ``audit_log``: in SQLite a file of its own beside the service's event store
(``var/<service>/audit.sqlite``), in PostgreSQL a table in the service's database.
There is no update or delete path in the code, and the store refuses them too:
triggers abort any UPDATE or DELETE (and, in PostgreSQL, TRUNCATE) of the table.

Operators read it with ``GET /v1/audit`` (scope ``<service>:audit``; ``audit_router``)
or ``crm audit``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from crm_platform.http import require_scope
from crm_platform.settings import Settings

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class AuditEntry:
    """One read of personal data."""

    key_id: str
    action: str  # the route, e.g. "GET /customers/{customer_id}"
    purpose: str  # why: "profile", "search:name", "campaign:<id>", "ticket content"
    customer_id: str | None = None
    subject: str | None = None  # what was read besides the customer: a ticket, a message


class _Backend(Protocol):
    def append(self, rows: Sequence[tuple[Any, ...]]) -> None: ...
    def select(self, where: str, params: Sequence[Any], limit: int, offset: int) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


COLUMNS = ("id", "at", "key_id", "customer_id", "subject", "action", "purpose")


class AuditLog:
    def __init__(self, backend: _Backend, clock: Clock | None = None) -> None:
        self._backend = backend
        self._clock = clock or (lambda: datetime.now(UTC))
        #: entries waiting for the next group commit, each with its request's future
        self._pending: list[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def open(cls, settings: Settings, service: str, clock: Clock | None = None) -> AuditLog:
        """The service's audit log in its own store (SQLite file or PostgreSQL database)."""
        if settings.event_store == "sqlite":
            return cls(_SQLite(str(settings.service_dir(service) / "audit.sqlite")), clock)
        return cls(_Postgres(settings, service), clock)

    def _rows(self, entries: Sequence[AuditEntry]) -> list[tuple[Any, ...]]:
        at = self._clock()
        if at.tzinfo is None:
            raise ValueError("the audit clock must give aware datetimes")
        at = at.astimezone(UTC)
        return [(at, e.key_id, e.customer_id, e.subject, e.action[:200], e.purpose[:200]) for e in entries]

    def record(self, *entries: AuditEntry) -> None:
        if entries:
            self._backend.append(self._rows(entries))

    async def arecord(self, *entries: AuditEntry) -> None:
        """``record`` off the event loop, returning once the entries are committed.

        Concurrent requests share commits (a group commit): what arrives while one
        transaction is being written goes into the next, so a busy API pays one store
        round trip per batch rather than per read, and no answer leaves before its
        entries are stored."""
        if not entries:
            return
        rows = self._rows(entries)
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            await asyncio.to_thread(self._backend.append, rows)  # another loop's log (tests)
            return
        self._loop = loop
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((rows, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_pending())
        await done

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._backend.append, [row for rows, _ in batch for row in rows])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    def query(
        self,
        *,
        customer_id: str | None = None,
        key_id: str | None = None,
        subject: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Entries oldest first, filtered by customer, key, subject and time (``since``
        included, ``until`` excluded)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("customer_id", customer_id), ("key_id", key_id), ("subject", subject)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("at >= ?")
            params.append(since.astimezone(UTC))
        if until is not None:
            clauses.append("at < ?")
            params.append(until.astimezone(UTC))
        where = " AND ".join(clauses) or "1 = 1"
        return self._backend.select(where, params, limit, offset)

    def close(self) -> None:
        self._backend.close()


# -- SQLite --------------------------------------------------------------------------------

_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_log ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, key_id TEXT NOT NULL,"
    " customer_id TEXT, subject TEXT, action TEXT NOT NULL, purpose TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_log_customer ON audit_log (customer_id, at)",
    "CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at)",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
)


def _sqlite_at(at: datetime) -> str:
    # fixed width, UTC: text order is time order
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _SQLite:
    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            for statement in _SQLITE_SCHEMA:
                self._conn.execute(statement)

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO audit_log (at, key_id, customer_id, subject, action, purpose) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(_sqlite_at(r[0]), *r[1:]) for r in rows],
                )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def select(self, where: str, params: Sequence[Any], limit: int, offset: int) -> list[dict[str, Any]]:
        values = [_sqlite_at(p) if isinstance(p, datetime) else p for p in params]
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE {where} "  # noqa: S608 - fixed clauses
            "ORDER BY id LIMIT ? OFFSET ?"
        )
        with self._lock:
            rows = self._conn.execute(sql, [*values, int(limit), int(offset)]).fetchall()
        out = []
        for row in rows:
            entry = dict(zip(COLUMNS, row, strict=True))
            entry["at"] = datetime.strptime(entry["at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            out.append(entry)
        return out

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """For tests proving the table refuses changes."""
        with self._lock:
            self._conn.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# -- PostgreSQL ----------------------------------------------------------------------------


class _Postgres:
    def __init__(self, settings: Settings, service: str) -> None:
        from psycopg import sql
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(
            kwargs={
                "host": settings.postgres_host,
                "port": settings.postgres_port,
                "user": settings.postgres_user,
                "password": settings.postgres_password.get_secret_value(),
                "dbname": settings.postgres_db or service,
                "connect_timeout": 5,
                "autocommit": False,
            },
            min_size=1,
            max_size=max(2, settings.postgres_pool_size),
            open=True,
        )
        schema = settings.postgres_schema
        self._table = (
            sql.SQL("{}.audit_log").format(sql.Identifier(schema)) if schema else sql.Identifier("audit_log")
        ).as_string(None)
        fn = (f"{sql.Identifier(schema).as_string(None)}." if schema else "") + "audit_log_append_only"
        statements = [
            f"CREATE TABLE IF NOT EXISTS {self._table} ("
            " id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL, key_id TEXT NOT NULL,"
            " customer_id TEXT, subject TEXT, action TEXT NOT NULL, purpose TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS audit_log_customer ON {self._table} (customer_id, at)",
            f"CREATE INDEX IF NOT EXISTS audit_log_at ON {self._table} (at)",
            f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
            f"CREATE OR REPLACE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON {self._table} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
            f"CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON {self._table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
        ]
        with self._pool.connection() as conn, conn.cursor() as cur:
            # several processes of one service start at once: one creates, the others wait
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('crm.audit_log'))")
            for statement in statements:
                cur.execute(statement.encode())

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self._table} (at, key_id, customer_id, subject, action, purpose) "  # noqa: S608
                "VALUES (%s, %s, %s, %s, %s, %s)".encode(),
                list(rows),
            )

    def select(self, where: str, params: Sequence[Any], limit: int, offset: int) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM {self._table} WHERE {where.replace('?', '%s')} "  # noqa: S608
            "ORDER BY id LIMIT %s OFFSET %s"
        )
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(sql.encode(), [*params, int(limit), int(offset)])
            return [dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """For tests proving the table refuses changes."""
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(sql.replace("audit_log", self._table).encode(), params)

    def close(self) -> None:
        self._pool.close()


# -- the operator's read -------------------------------------------------------------------


class AuditEntryView(BaseModel):
    id: int
    at: datetime
    key_id: str
    customer_id: str | None
    subject: str | None
    action: str
    purpose: str


class AuditPage(BaseModel):
    entries: list[AuditEntryView]
    limit: int
    offset: int


def audit_router(service: str, log_of: Callable[[Request], AuditLog]) -> APIRouter:
    """``GET /v1/audit``: the service's audit log, for keys with ``<service>:audit``."""
    router = APIRouter(prefix="/v1", tags=["audit"])

    @router.get(
        "/audit",
        response_model=AuditPage,
        summary="Who read whose personal data, when and why",
        dependencies=[Depends(require_scope(f"{service}:audit"))],
    )
    async def read_audit(
        request: Request,
        customer_id: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=128,
                pattern=r"^[A-Za-z0-9:_-]+$",
                description="one customer's entries (identity: the customer id)",
            ),
        ] = None,
        key_id: Annotated[str | None, Query(max_length=64, description="one API key's entries")] = None,
        subject: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=128,
                pattern=r"^[A-Za-z0-9:_-]+$",
                description="one subject's entries (support: `ticket:<id>`; identity: a message id)",
            ),
        ] = None,
        since: Annotated[datetime | None, Query(description="from this instant (included)")] = None,
        until: Annotated[datetime | None, Query(description="to this instant (excluded)")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> AuditPage:
        for name, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise RequestValidationError(
                    [{"loc": ("query", name), "msg": "must include a timezone offset", "type": "value_error"}]
                )
        rows = await asyncio.to_thread(
            log_of(request).query,
            customer_id=customer_id,
            key_id=key_id,
            subject=subject,
            since=since,
            until=until,
            limit=limit,
            offset=offset,
        )
        return AuditPage(entries=[AuditEntryView(**r) for r in rows], limit=limit, offset=offset)

    return router


__all__ = ["AuditEntry", "AuditLog", "audit_router"]
