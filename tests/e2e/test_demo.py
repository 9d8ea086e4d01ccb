"""The whole platform, small: a demo retailer loaded through the APIs, then checked
against its ground truth — resolution quality, and every purchase counted exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_small_retailer_resolves_well_and_every_purchase_counts_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Topics of its own on the shared broker: the platform sees this retailer only.
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "CRM_VAR_DIR": str(tmp_path / "var"), "CRM_KAFKA_TOPIC_PREFIX": prefix}
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
    threading.Thread(target=lambda: lines.extend(iter(stdout.readline, b"")), daemon=True).start()
    report = tmp_path / "report.json"
    try:
        deadline = time.monotonic() + 120
        while not any(b"CRM platform is up" in line for line in lines):
            assert proc.poll() is None, b"".join(lines).decode()[-3000:]
            assert time.monotonic() < deadline, "the platform never came up"
            time.sleep(0.2)
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "crm_cli.main",
                "demo",
                "--customers",
                "150",
                "--seed",
                "3",
                "--report-json",
                str(report),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        # Loading again resumes: nothing is sent twice, the figures stay.
        again = subprocess.run(
            [
                sys.executable,
                "-m",
                "crm_cli.main",
                "demo",
                "--customers",
                "150",
                "--seed",
                "3",
                "--report-json",
                str(tmp_path / "again.json"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "already loaded" in again.stdout
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=90)
    figures = json.loads(report.read_text())
    quality, expected, counted = figures["quality"], figures["expected"], figures["all_time"]
    # Who is who, against the generator's ground truth (a wrong merge costs most).
    assert quality["precision"] >= 0.98, quality
    assert quality["f1"] >= 0.95, quality
    # Every generated purchase counted once: no more, no fewer, to the yen.
    assert counted["orders"] == expected["orders"]
    assert counted["revenue"] == expected["revenue"]
    assert json.loads((tmp_path / "again.json").read_text())["all_time"]["orders"] == expected["orders"]
