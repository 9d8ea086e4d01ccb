"""The order ledger on both stores (SQLite locally, PostgreSQL in production)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from crm_platform.settings import Settings
from engagement.adapters.ledger import LedgerOrder, LedgerReturn, SQLiteOrderLedger, open_ledger

pytestmark = pytest.mark.integration


def test_orders_returns_and_replays(store_settings: Settings) -> None:
    ledger = open_ledger(store_settings)
    try:
        order = LedgerOrder("store", "S1-0001", "e-1", "k1", {1: ("TS", 3, 5970), 2: ("SK", 1, 4490)})
        other = LedgerOrder("online", "W-9", "e-2", "k2", {1: ("CT", 1, 12900)})
        ledger.record([order, other], [])
        ledger.record([order], [LedgerReturn("store", "S1-0001", "R-1", "e-3", {1: 2})])
        ledger.record([], [LedgerReturn("store", "S1-0001", "R-1", "e-3", {1: 2})])  # a replay: ignored
        ledger.record([], [LedgerReturn("store", "S1-0001", "R-2", "e-4", {1: 1, 2: 1})])
        found = ledger.orders([("store", "S1-0001"), ("online", "W-9"), ("store", "nope")])
        assert set(found) == {("store", "S1-0001"), ("online", "W-9")}
        assert found[("store", "S1-0001")].lines == {1: ("TS", 3, 5970), 2: ("SK", 1, 4490)}
        assert found[("store", "S1-0001")].returned == {1: 3, 2: 1}
        assert found[("online", "W-9")].returned == {}
        assert ledger.returns([("store", "R-1"), ("store", "R-2"), ("online", "R-1")]) == {
            ("store", "R-1"): "e-3",
            ("store", "R-2"): "e-4",
        }
        ledger.ping()
    finally:
        ledger.close()


def test_the_same_order_and_return_ids_in_several_namespaces(store_settings: Settings) -> None:
    """Each store's ids, the online ones and the rows from before namespaces (``store``)
    side by side: a return counts against its own namespace's order only."""
    ledger = open_ledger(store_settings)
    try:
        ledger.record(
            [
                LedgerOrder("store:S001", "R1-1", "e-a", "ka", {1: ("TS", 2, 3980)}),
                LedgerOrder("store:S002", "R1-1", "e-b", "kb", {1: ("TS", 2, 3980)}),
                LedgerOrder("store", "R1-1", "e-old", "ko", {1: ("TS", 2, 3980)}),
                LedgerOrder("online", "R1-1", "e-w", "kw", {1: ("CT", 1, 12900)}),
            ],
            [
                LedgerReturn("store:S001", "R1-1", "RET-1", "e-r1", {1: 2}),
                LedgerReturn("store:S002", "R1-1", "RET-1", "e-r2", {1: 1}),
            ],
        )
        keys = [(n, "R1-1") for n in ("store:S001", "store:S002", "store", "online", "store:S003")]
        found = ledger.orders(keys)
        assert {k: (o.event_id, o.returned) for k, o in found.items()} == {
            ("store:S001", "R1-1"): ("e-a", {1: 2}),
            ("store:S002", "R1-1"): ("e-b", {1: 1}),
            ("store", "R1-1"): ("e-old", {}),
            ("online", "R1-1"): ("e-w", {}),
        }
        assert found[("store:S002", "R1-1")].namespace == "store:S002"
        assert ledger.returns([("store:S001", "RET-1"), ("store:S002", "RET-1"), ("store", "RET-1")]) == {
            ("store:S001", "RET-1"): "e-r1",
            ("store:S002", "RET-1"): "e-r2",
        }
    finally:
        ledger.close()


def test_try_record_never_waits_for_another_writer(tmp_path: Path) -> None:
    """What the API does on its event loop: write at once, or leave it to a thread."""
    ledger = SQLiteOrderLedger(tmp_path / "ledger.sqlite")
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)  # another API worker
    order = LedgerOrder("store", "S1-1", "e-1", "k1", {1: ("TS", 1, 1000)})
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        started = time.monotonic()
        assert ledger.try_record([order], []) is False
        assert time.monotonic() - started < 0.5  # not the 10 s a record() would wait
        other.execute("COMMIT")
        assert ledger.orders([("store", "S1-1")]) == {}
        with ledger._lock:  # this process's own call in progress (a batch on a thread)
            assert ledger.try_record([order], []) is False
        assert ledger.try_record([order], []) is True
        assert ledger.orders([("store", "S1-1")])[("store", "S1-1")].event_id == "e-1"
        other.execute("BEGIN IMMEDIATE")
        assert ledger.try_record([order], []) is False
        other.execute("ROLLBACK")
        ledger.record([LedgerOrder("store", "S1-2", "e-2", "k1", {1: ("TS", 1, 1000)})], [])  # waits fine
    finally:
        other.close()
        ledger.close()


def test_an_erasure_rekeys_the_erased_person_s_orders(store_settings: Settings) -> None:
    """engagement's eraser on ``customer.erased``: the orders recorded under the erased
    person's blind indexes are recorded under their customer id; nobody else's move, and
    (SQLite) the old keys leave the ledger's files."""
    import uuid
    from datetime import UTC, datetime

    from crm_contracts.envelope import Identifier
    from crm_contracts.events.identity import CustomerErased, CustomerErasedPayload
    from engagement.eraser import apply
    from engagement.survey_bootstrap import build_surveys

    erased_hash, other_hash, kept_hash = "a" * 64, "b" * 64, "c" * 64
    customer = uuid.uuid4()
    ledger = open_ledger(store_settings)
    surveys = build_surveys(store_settings)
    try:
        ledger.record(
            [
                LedgerOrder("store", "S1-1", "e-1", erased_hash, {1: ("TS", 1, 1000)}),
                LedgerOrder("online", "W-1", "e-2", other_hash, {1: ("TS", 1, 1000)}),
                LedgerOrder("online", "W-2", "e-3", kept_hash, {1: ("TS", 1, 1000)}),
            ],
            [],
        )
        event = CustomerErased(
            occurred_at=datetime(2026, 11, 20, tzinfo=UTC),
            producer="identity.relay",
            customer_key=str(customer),
            payload=CustomerErasedPayload(
                customer_id=customer,
                requested_at=datetime(2026, 11, 20, tzinfo=UTC),
                tombstoned=(
                    Identifier(kind="email", hash=erased_hash),
                    Identifier(kind="phone", hash=other_hash),
                ),
            ),
        )
        apply(surveys, event, ledger)
        apply(surveys, event, ledger)  # redelivered: nothing more to do
        found = ledger.orders([("store", "S1-1"), ("online", "W-1"), ("online", "W-2")])
        assert {k: o.customer_key for k, o in found.items()} == {
            ("store", "S1-1"): str(customer),
            ("online", "W-1"): str(customer),
            ("online", "W-2"): kept_hash,
        }
        if store_settings.event_store == "sqlite":
            path = store_settings.var_dir / "engagement" / "ledger.sqlite"
            files = b"".join(
                Path(f"{path}{s}").read_bytes() for s in ("", "-wal", "-shm") if Path(f"{path}{s}").exists()
            )
            assert erased_hash.encode() not in files and other_hash.encode() not in files
            assert kept_hash.encode() in files
    finally:
        ledger.close()
        surveys.close()
