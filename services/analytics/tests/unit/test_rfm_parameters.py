"""The RFM rules reach ClickHouse as bound parameters, never as SQL text (no I/O: a
client that records what it is asked)."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from analytics.queries import Queries, RfmRules

#: Thresholds no other part of the statements holds, so finding one in the text means
#: it was spliced in.
RULES = RfmRules(
    dormant_days=417,
    loyal_min_orders=23,
    loyal_min_revenue=7_777_777_777,  # past UInt32: bound as a 64-bit integer
    recency_days=(31, 97, 193, 389),
    frequency=(13, 17, 19, 29),
    monetary=(12_345, 23_456, 345_678, 4_567_890),
)
THRESHOLDS = {
    RULES.dormant_days,
    RULES.loyal_min_orders,
    RULES.loyal_min_revenue,
    *RULES.recency_days,
    *RULES.frequency,
    *RULES.monetary,
}


class _Result:
    def named_results(self) -> list[dict[str, Any]]:
        return []


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any], settings: dict[str, Any]) -> _Result:
        self.calls.append((sql, parameters))
        return _Result()


def _check(calls: list[tuple[str, dict[str, Any]]]) -> None:
    assert calls
    for sql, parameters in calls:
        numbers = {int(n) for n in re.findall(r"(?<![\w.])\d+(?![\w.])", sql)}
        assert not numbers & THRESHOLDS, f"spliced into the SQL: {numbers & THRESHOLDS}"
        placeholders = set(re.findall(r"\{(\w+):", sql))
        assert placeholders <= set(parameters), f"unbound: {placeholders - set(parameters)}"
        assert {parameters[p] for p in placeholders} >= THRESHOLDS


def test_segment_sizes_bind_every_threshold() -> None:
    client = RecordingClient()
    Queries(client).segments(date(2026, 4, 1), "all", RULES)  # type: ignore[arg-type]
    _check(client.calls)


def test_segment_members_bind_every_threshold() -> None:
    client = RecordingClient()
    Queries(client).segment_members("loyal", date(2026, 4, 1), "store", RULES, limit=10)  # type: ignore[arg-type]
    _check(client.calls)
