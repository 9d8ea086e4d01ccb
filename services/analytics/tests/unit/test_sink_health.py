"""The standalone sink's readiness: up is not enough, it must be sinking."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from analytics.entrypoints.metrics import create
from analytics.sink import STALL_S, SinkStats


def test_a_sink_with_records_waiting_and_no_flush_for_two_minutes_is_not_ready() -> None:
    now = time.time()
    stats = SinkStats(started_at=now - 10)
    client = TestClient(create(stats))
    assert client.get("/readyz").status_code == 200  # just started, nothing to do yet

    stats.lag = {"crm.commerce.order/0": 500}
    assert client.get("/readyz").status_code == 200  # records waiting, but it only started

    stats.started_at = now - STALL_S - 5  # two minutes on, still nothing flushed
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "stalled" and answer.json()["consumer_lag"] == 500

    stats.last_flush_at = time.time()  # a batch went in
    ready = client.get("/readyz").json()
    assert (ready["status"], ready["consumer_lag"], ready["insert_failures"]) == ("ok", 500, 0)
    assert ready["seconds_since_flush"] < 5
    stats.last_flush_at = now - STALL_S - 5
    stats.lag = {"crm.commerce.order/0": 0}  # caught up: quiet is not stalled
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
