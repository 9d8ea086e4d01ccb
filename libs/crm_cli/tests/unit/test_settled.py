"""Waiting for the pipeline to settle: as long as it makes progress, and no longer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from crm_cli import status


def _script(monkeypatch: pytest.MonkeyPatch, lags: Iterator[dict[str, int]]) -> None:
    async def overview(bootstrap: str, prefix: str = "") -> tuple[dict[str, Any], dict[str, int]]:
        lag = next(lags)
        return {"t": (0, sum(lag.values()))}, lag

    monkeypatch.setattr(status, "kafka_overview", overview)


def _settle(**kw: float) -> None:
    asyncio.run(status.wait_until_settled("b", {"worker", "sink"}, quiet_s=0.05, poll_s=0.01, **kw))


def test_a_slow_but_moving_pipeline_is_waited_for_past_the_stall_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 200 polls (2 s and more) of a lag going down by one, against a stall bound of 0.2 s.
    lags = iter([{"worker": n} for n in range(200, 0, -1)] + [{"worker": 0}] * 1000)
    _script(monkeypatch, lags)
    _settle(stall_s=0.2)
    assert next(lags) == {"worker": 0}


def test_a_stuck_consumer_ends_the_wait_with_its_lag(monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, iter([{"worker": 5, "sink": 0}] * 10_000))
    with pytest.raises(TimeoutError, match=r"no progress for 0.2 s .*'worker': 5"):
        _settle(stall_s=0.2)


def test_groups_not_waited_for_do_not_hold_it_up(monkeypatch: pytest.MonkeyPatch) -> None:
    _script(monkeypatch, iter([{"worker": 0, "a-bi-tool": 1_000}] * 10_000))
    _settle(stall_s=0.2)
