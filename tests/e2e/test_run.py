"""``crm run`` (what ``make run`` calls) brings the platform up and down cleanly."""

from __future__ import annotations

import os
import urllib.request
import uuid
from pathlib import Path

import pytest
from running import crm, running_platform

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read()


def test_crm_run_serves_and_stops_on_ctrl_c(kafka_bootstrap: str, tmp_path: Path) -> None:
    # A topic prefix of its own: the platform's consumer groups and topics of this run stay
    # out of the unprefixed ones a `make run` on the same broker uses.
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "CRM_VAR_DIR": str(tmp_path / "var"), "CRM_KAFKA_TOPIC_PREFIX": prefix}
    with running_platform(env, up_within_s=90) as platform:
        for port in (8001, 8002):
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            assert status == 200
            assert b'"kafka":"ok"' in body
        status, body = _get("http://127.0.0.1:8003/readyz")
        assert status == 200 and b'"event_store":"ok"' in body
        status, body = _get("http://127.0.0.1:8004/readyz")
        assert status == 200 and b'"clickhouse":"ok"' in body
        status, body = _get("http://127.0.0.1:8004/")
        assert status == 200 and b"<html" in body.lower()
        kpi = crm(env, "kpi", "--channel", "store", timeout=60)
        assert kpi.returncode == 0, kpi.stderr
        assert "active customers" in kpi.stdout and "(store)" in kpi.stdout
    text = platform.output
    assert platform.proc.returncode == 0, f"exit {platform.proc.returncode}: {text[-3000:]}"
    assert "stopped" in text
    for port in (8001, 8002, 8003, 8004):
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{port}/healthz")
