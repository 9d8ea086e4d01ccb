"""``crm run`` (what ``make run`` calls) brings the platform up and down cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
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
        [sys.executable, "-m", "crm_cli.main", "run", "--no-load"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    lines: list[bytes] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any(b"CRM platform is up" in line for line in lines):
            assert proc.poll() is None, b"".join(lines).decode()
            assert time.monotonic() < deadline, "crm run never reported the platform up"
            time.sleep(0.2)
        for port in (8001, 8002):
            status, body = _get(f"http://127.0.0.1:{port}/readyz")
            assert status == 200
            assert b'"kafka":"ok"' in body
        status, body = _get("http://127.0.0.1:8004/readyz")
        assert status == 200 and b'"clickhouse":"ok"' in body
        status, body = _get("http://127.0.0.1:8004/")
        assert status == 200 and b"<html" in body.lower()
        kpi = subprocess.run(
            [sys.executable, "-m", "crm_cli.main", "kpi", "--channel", "store"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert kpi.returncode == 0, kpi.stderr
        assert "active customers" in kpi.stdout and "(store)" in kpi.stdout
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    text = b"".join(lines).decode()
    assert proc.returncode == 0, f"exit {proc.returncode}: {text[-3000:]}"
    assert "stopped" in text
    for port in (8001, 8002, 8004):
        with pytest.raises(OSError):
            _get(f"http://127.0.0.1:{port}/healthz")
