"""The ticket list: a read model of the event store for search and paging.

A SQLite file per process (``var/support/index.sqlite``), rebuilt from the store's
notification log: before every search the index catches up on what was stored since
its position (in one transaction with the position, so it never skips or applies an
event twice). Several API processes, or pods each with their own file in front of one
PostgreSQL store, stay consistent that way — a search after a write in any of them
sees the write — and nothing but the event store needs backing up.

It holds no personal data: blind indexes of the identifiers, status, owner, times.
Whether the SLA is breached is computed in the query for the instant asked. The blind
indexes of a ticket whose content was shredded (erasure) are removed and never written
again, a rebuild included (``catch_up``'s ``shredded``); the file deletes securely
(``PRAGMA secure_delete``) and is checkpointed with TRUNCATE after an erasure.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from crm_platform.datakeys import checkpoint_truncate, secure_sqlite
from support.domain.ticket import Ticket

Loader = Callable[[uuid.UUID], Ticket]


@dataclass(frozen=True)
class Filters:
    identifier_hashes: tuple[str, ...] = ()
    status: str | None = None
    owner: str | None = None
    team: str | None = None
    category: str | None = None
    channel: str | None = None
    priority: str | None = None
    store_id: str | None = None
    escalated_to: str | None = None
    breached: bool | None = None
    opened_from: datetime | None = None
    opened_to: datetime | None = None
    #: keyset paging: only tickets after this (opened_at epoch, ticket_id) in list order
    before: tuple[float, str] | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY,
    opened_at REAL NOT NULL,
    channel TEXT NOT NULL, category TEXT NOT NULL, priority TEXT NOT NULL, status TEXT NOT NULL,
    owner TEXT, team TEXT, escalated_to TEXT, store_id TEXT, order_id TEXT,
    first_response_due REAL NOT NULL, first_response_at REAL,
    -- the resolution's due instant plus the time already spent pending
    resolution_due REAL NOT NULL, paused_since REAL,
    resolved_at REAL, satisfaction INTEGER, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_status ON tickets (status, opened_at);
CREATE INDEX IF NOT EXISTS tickets_owner ON tickets (owner, opened_at);
CREATE INDEX IF NOT EXISTS tickets_opened ON tickets (opened_at);
CREATE TABLE IF NOT EXISTS ticket_identifiers (
    hash TEXT NOT NULL, ticket_id TEXT NOT NULL, PRIMARY KEY (hash, ticket_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS position (id INTEGER PRIMARY KEY CHECK (id = 1), notification_id INTEGER NOT NULL);
"""

#: Breached at :now (epoch seconds), either target; the same rules as Ticket.breached.
_SETTLED = "(status IN ('resolved', 'closed'))"
_BREACHED = f"""(
    (CASE WHEN first_response_at IS NOT NULL THEN first_response_at
          WHEN {_SETTLED} THEN resolved_at ELSE :now END) > first_response_due
    OR (CASE WHEN {_SETTLED} THEN resolved_at
             WHEN paused_since IS NOT NULL THEN paused_since ELSE :now END) > resolution_due
)"""


class TicketIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        secure_sqlite(self._db)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def position(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT notification_id FROM position WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def catch_up(
        self,
        read: Callable[[int, int], Sequence[tuple[int, uuid.UUID]]],
        load: Loader,
        batch: int = 500,
        shredded: Callable[[uuid.UUID], bool] | None = None,
    ) -> int:
        """Apply what the store recorded after the index's position; returns how many
        notifications were read. ``read(after, limit)`` gives (notification id, ticket
        id) pairs; each touched ticket is loaded once and its row rewritten, without its
        identifiers if ``shredded(ticket id)`` (its content was erased)."""
        done = 0
        while True:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute("SELECT notification_id FROM position WHERE id = 1").fetchone()
                    after = int(row[0]) if row else 0
                    found = read(after, batch)
                    if not found:
                        self._db.execute("COMMIT")
                        return done
                    for ticket_id in dict.fromkeys(t for _, t in found):
                        self._write(load(ticket_id), shredded is None or not shredded(ticket_id))
                    self._db.execute(
                        "INSERT INTO position (id, notification_id) VALUES (1, ?)"
                        " ON CONFLICT (id) DO UPDATE SET notification_id = excluded.notification_id",
                        (found[-1][0],),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            done += len(found)

    def _write(self, t: Ticket, with_identifiers: bool = True) -> None:
        ts = _epoch
        resolution_due = t.resolution_due.timestamp() + t.paused_seconds
        last = t.escalations[-1]["to"] if t.escalations else None
        self._db.execute(
            "INSERT OR REPLACE INTO tickets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(t.id),
                ts(t.opened_at),
                t.channel,
                t.category,
                t.priority,
                t.status,
                t.owner,
                t.team,
                last,
                t.store_id,
                t.order_id,
                ts(t.first_response_due),
                # the first response, or the first resolution when none came before it
                ts(t.first_response_at or t.first_settled_at),
                resolution_due,
                ts(t.paused_since),
                ts(t.resolved_at),
                t.satisfaction,
                ts(t.last_at),
            ),
        )
        if with_identifiers:
            self._db.executemany(
                "INSERT OR IGNORE INTO ticket_identifiers VALUES (?, ?)",
                [(i["hash"], str(t.id)) for i in t.identifiers],
            )
        else:
            self._db.execute("DELETE FROM ticket_identifiers WHERE ticket_id = ?", (str(t.id),))

    def forget_identifiers(self, tickets: Sequence[uuid.UUID]) -> int:
        """Remove the blind indexes these (shredded) tickets carried; the deleted rows
        are zeroed (secure_delete) and leave the WAL (checkpoint TRUNCATE)."""
        with self._lock:
            removed = 0
            for ticket_id in tickets:
                cursor = self._db.execute(
                    "DELETE FROM ticket_identifiers WHERE ticket_id = ?", (str(ticket_id),)
                )
                removed += cursor.rowcount
            checkpoint_truncate(self._db)
        return removed

    def search(self, f: Filters, now: datetime, limit: int, offset: int) -> tuple[int, list[uuid.UUID]]:
        """(total matching, one page of ticket ids, newest first)."""
        where: list[str] = ["1"]
        params: dict[str, float | str] = {"now": now.timestamp()}
        if f.identifier_hashes:
            marks = ", ".join(f":h{i}" for i in range(len(f.identifier_hashes)))
            inner = "SELECT ticket_id FROM ticket_identifiers WHERE hash IN (" + marks + ")"  # noqa: S608
            where.append(f"ticket_id IN ({inner})")
            params.update({f"h{i}": h for i, h in enumerate(f.identifier_hashes)})
        for column in (
            "status",
            "owner",
            "team",
            "category",
            "channel",
            "priority",
            "store_id",
            "escalated_to",
        ):
            value = getattr(f, column)
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        if f.opened_from is not None:
            where.append("opened_at >= :opened_from")
            params["opened_from"] = f.opened_from.timestamp()
        if f.opened_to is not None:
            where.append("opened_at < :opened_to")
            params["opened_to"] = f.opened_to.timestamp()
        if f.breached is not None:
            where.append(_BREACHED if f.breached else f"NOT {_BREACHED}")
        clause = " AND ".join(where)
        page = clause
        if f.before is not None:  # the total counts every match; the page starts after the cursor
            page += " AND (opened_at < :before_at OR (opened_at = :before_at AND ticket_id < :before_id))"
            params.update({"before_at": f.before[0], "before_id": f.before[1]})
        with self._lock:
            (total,) = self._db.execute(f"SELECT count(*) FROM tickets WHERE {clause}", params).fetchone()  # noqa: S608
            rows = self._db.execute(
                f"SELECT ticket_id FROM tickets WHERE {page}"  # noqa: S608 - columns are fixed names
                " ORDER BY opened_at DESC, ticket_id DESC LIMIT :limit OFFSET :offset",
                {**params, "limit": limit, "offset": offset},
            ).fetchall()
        return int(total), [uuid.UUID(r[0]) for r in rows]

    def tickets_with(self, hashes: Sequence[str]) -> list[uuid.UUID]:
        """Every ticket that carried one of these identifiers (erasure)."""
        if not hashes:
            return []
        import orjson

        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT ticket_id FROM ticket_identifiers"
                " WHERE hash IN (SELECT value FROM json_each(?))",
                (orjson.dumps(list(hashes)).decode(),),
            ).fetchall()
        return [uuid.UUID(r[0]) for r in rows]


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


__all__ = ["Filters", "TicketIndex"]
