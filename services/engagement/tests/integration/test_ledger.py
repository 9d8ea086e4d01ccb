"""The order ledger on both stores (SQLite locally, PostgreSQL in production)."""

from __future__ import annotations

import pytest

from crm_platform.settings import Settings
from engagement.adapters.ledger import LedgerOrder, LedgerReturn, open_ledger

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
