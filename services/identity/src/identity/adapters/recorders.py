"""Event-store recorders that keep identity's match index in the same transaction.

The index (one row per customer: name keys, birthday, postal code, address key, status)
serves search and the blocking step of fuzzy matching. The application passes the rows
to ``save(..., index_rows=...)``; these recorders write them in the transaction that
stores the events, so the index never disagrees with the log, and it can be rebuilt
from the log at any time (``rebuild_index``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

INDEX_COLUMNS = (
    "customer_id",
    "status",
    "merged_into",
    "name_kanji_key",
    "kana_key",
    "loose_kana_key",
    "birthday",
    "postal_code",
    "address_key",
    "prefecture",
    "registered_at",
)
_CREATE = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "customer_id TEXT PRIMARY KEY, status TEXT NOT NULL, merged_into TEXT, "
    "name_kanji_key TEXT, kana_key TEXT, loose_kana_key TEXT, birthday TEXT, postal_code TEXT, "
    "address_key TEXT, prefecture TEXT, registered_at TEXT)"
)
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS customer_index_loose_kana ON {table} (loose_kana_key)",
    "CREATE INDEX IF NOT EXISTS customer_index_birthday ON {table} (birthday)",
    "CREATE INDEX IF NOT EXISTS customer_index_postal ON {table} (postal_code)",
    "CREATE INDEX IF NOT EXISTS customer_index_kanji ON {table} (name_kanji_key)",
)


def _upsert_sql(placeholder: str, table: str) -> str:
    marks = ", ".join([placeholder] * len(INDEX_COLUMNS))
    updates = ", ".join(f"{c} = excluded.{c}" for c in INDEX_COLUMNS[1:])
    return (
        f"INSERT INTO {table} ({', '.join(INDEX_COLUMNS)}) VALUES ({marks}) "  # noqa: S608 - fixed names
        f"ON CONFLICT (customer_id) DO UPDATE SET {updates}"
    )


def _row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(c) for c in INDEX_COLUMNS)


class IndexQueries:
    """Read access to the match index, shared by both recorders."""

    def query_index(self, where: str, params: Sequence[Any], limit: int = 50) -> list[dict[str, Any]]:
        raise NotImplementedError

    def clear_index(self) -> None:
        raise NotImplementedError

    def existing(self, originator_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these aggregates have any stored event (one query per 500 ids)."""
        raise NotImplementedError


class IdentitySQLiteRecorder(SQLiteApplicationRecorder, IndexQueries):
    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self._upsert = _upsert_sql("?", "customer_index")

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            _CREATE.format(table="customer_index"),
            *(s.format(table="customer_index") for s in _INDEXES),
        ]

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        returning = super()._insert_events(c, stored_events, **kwargs)
        for row in kwargs.get("index_rows") or ():
            if row["status"] == "erased":
                c.execute("DELETE FROM customer_index WHERE customer_id = ?", (row["customer_id"],))
            else:
                c.execute(self._upsert, _row_values(row))
        return returning

    def query_index(self, where: str, params: Sequence[Any], limit: int = 50) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(INDEX_COLUMNS)} FROM customer_index WHERE {where} LIMIT {int(limit)}"  # noqa: S608
        with self.datastore.transaction(commit=False) as c:
            c.execute(sql, tuple(params))
            return [dict(zip(INDEX_COLUMNS, r, strict=True)) for r in c.fetchall()]

    def clear_index(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            c.execute("DELETE FROM customer_index")

    def existing(self, originator_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        found: set[uuid.UUID] = set()
        with self.datastore.transaction(commit=False) as c:
            for start in range(0, len(originator_ids), 500):
                chunk = [i.hex for i in originator_ids[start : start + 500]]  # stored as hex here
                marks = ",".join("?" * len(chunk))
                c.execute(
                    f"SELECT DISTINCT originator_id FROM {self.events_table_name} "  # noqa: S608
                    f"WHERE originator_id IN ({marks})",
                    chunk,
                )
                found.update(uuid.UUID(r[0]) for r in c.fetchall())
        return found


class IdentityPostgresRecorder(PostgresApplicationRecorder, IndexQueries):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        table = SQL("{schema}.customer_index").format(schema=Identifier(self.datastore.schema))
        self._table = table.as_string(None)
        for statement in (_CREATE, *_INDEXES):
            self.sql_create_statements.append(Composed([SQL(statement.format(table=self._table))]))
        self._upsert = _upsert_sql("%s", self._table)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        for row in kwargs.get("index_rows") or ():
            if row["status"] == "erased":
                curs.execute(
                    SQL(f"DELETE FROM {self._table} WHERE customer_id = %s"),  # noqa: S608
                    (row["customer_id"],),
                )
            else:
                curs.execute(SQL(self._upsert), _row_values(row))

    def query_index(self, where: str, params: Sequence[Any], limit: int = 50) -> list[dict[str, Any]]:
        sql = (
            f"SELECT {', '.join(INDEX_COLUMNS)} FROM {self._table} "  # noqa: S608 - fixed names
            f"WHERE {where.replace('?', '%s')} LIMIT {int(limit)}"
        )
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(SQL(sql), tuple(params))
            return [dict(r) for r in curs.fetchall()]

    def clear_index(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(SQL(f"DELETE FROM {self._table}"))  # noqa: S608

    def existing(self, originator_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        events = SQL("{schema}.{table}").format(
            schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)
        )
        query = SQL("SELECT DISTINCT originator_id FROM {events} WHERE originator_id = ANY(%s)").format(
            events=events
        )
        found: set[uuid.UUID] = set()
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            for start in range(0, len(originator_ids), 500):
                chunk = list(originator_ids[start : start + 500])
                params = chunk if self.datastore.originator_id_type == "uuid" else [str(i) for i in chunk]
                curs.execute(query, (params,))
                found.update(uuid.UUID(str(r["originator_id"])) for r in curs.fetchall())
        return found
