"""The surveys-and-forms demo against the real identity, engagement and support APIs (each
its own process), as part of a small demo load: everything it plans is accepted."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from crm_cli.demo import Endpoints, load, plan
from crm_cli.demo_surveys import SEMINAR_CAPACITY, SurveyLoadReport, plan_surveys
from crm_platform.kafka import ensure_topics

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(service: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", service, "api", "--port", str(port)], env=env, stdout=out, stderr=out
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"{service} did not start"
        time.sleep(0.3)


@pytest.fixture
def endpoints(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Endpoints]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    identity_port, engagement_port, support_port = _free_port(), _free_port(), _free_port()
    env = {
        **os.environ,
        "CRM_VAR_DIR": str(tmp_path / "var"),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_KAFKA_TOPIC_PREFIX": prefix,
        "CRM_LOG_LEVEL": "WARNING",
        "CRM_IDENTITY_URL": f"http://127.0.0.1:{identity_port}",
    }
    procs = [
        _start("identity", identity_port, env, tmp_path / "identity.log"),
        _start("engagement", engagement_port, env, tmp_path / "engagement.log"),
        _start("support", support_port, env, tmp_path / "support.log"),  # the demo's tickets
    ]
    try:
        yield Endpoints(
            identity=f"http://127.0.0.1:{identity_port}",
            engagement=f"http://127.0.0.1:{engagement_port}",
            support=f"http://127.0.0.1:{support_port}",
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_the_surveys_demo_loads_through_the_apis(endpoints: Endpoints) -> None:
    today = datetime.now(timezone(timedelta(hours=9))).date()  # the services' clocks are real
    demo = plan(100, seed=5, today=today, months=3)
    report = asyncio.run(load(demo, endpoints, lambda *_: None))  # surveys and forms included
    loaded = SurveyLoadReport(**report.surveys)
    planned = plan_surveys(demo, seed=5, today=today)
    assert loaded.failures == []
    assert loaded.invited > 0 and loaded.invited == len(planned.invitees)
    assert loaded.answered > 0
    assert loaded.answered == len(planned.answers)
    assert loaded.signups == len(planned.signups)
    assert (loaded.confirmed, loaded.waitlisted) == (
        SEMINAR_CAPACITY,
        len(planned.registrations) - SEMINAR_CAPACITY,
    )
