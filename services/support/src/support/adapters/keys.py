"""Per-ticket data keys: how support seals what customers write, and how it shreds it.

The key store itself is the platform's (``crm_platform.datakeys``); this module names
support's table (``ticket_data_keys``) and key ids (``ticket-<ticket id>``).

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

from collections.abc import Callable
from typing import Any

from crm_platform import datakeys
from crm_platform.crypto import MasterKeys
from crm_platform.datakeys import ContentErased, DataKeys

__all__ = ["TABLE", "ContentErased", "PostgresKeyBackend", "SQLiteKeyBackend", "TicketKeys"]

#: support's stored format: unchanged since the keys moved to crm_platform
TABLE = "ticket_data_keys"


class TicketKeys(DataKeys):
    """Creates, caches, uses and erases the data keys of tickets (``ticket-<id>``)."""

    def __init__(
        self, backend: datakeys.KeyBackend, master_key: bytes | MasterKeys, cache_ttl_s: float = 30.0
    ) -> None:
        super().__init__(backend, master_key, prefix="ticket", cache_ttl_s=cache_ttl_s)


class SQLiteKeyBackend(datakeys.SQLiteKeyBackend):
    def __init__(self, path: str) -> None:
        super().__init__(path, TABLE)


class PostgresKeyBackend(datakeys.PostgresKeyBackend):
    """The same table in support's PostgreSQL database (eventsourcing's pool)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        super().__init__(connect, TABLE)
