"""``crm run`` (what ``make run`` calls) brings the platform up and down cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read()


def test_crm_run_serves_and_stops_on_ctrl_c(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {**os.environ, "CRM_VAR_DIR": str(tmp_path / "var")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_cli.main", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                status, body = _get("http://127.0.0.1:8001/readyz")
                if status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        assert status == 200, "identity API did not become ready"
        assert b'"kafka":"ok"' in body
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "CRM platform is up" in text
    assert "stopped" in text
    with pytest.raises(OSError):
        _get("http://127.0.0.1:8001/healthz")
