"""``engagement api --workers 2`` (how ``crm run`` serves ingestion): two processes on
one port, each with its own producer and ledger connection, sharing the ledger file."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from crm_contracts.registry import decode
from crm_contracts.topics import COMMERCE_ORDER
from crm_platform.kafka import ensure_topics
from crm_platform.testing import read_topic

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; init reaps it


def _describe(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return f"{pid} (gone)"


def _order(n: int, run: str) -> dict[str, object]:
    return {
        "type": "store_order",
        "occurred_at": "2026-11-01T10:00:00+09:00",
        "identifiers": {"member_no": f"M{n:06d}"},
        "payload": {
            "order_id": f"{run}-{n}",
            "store_id": "S001",
            "lines": [{"line_no": 1, "sku": "SKU-1", "category": "tops", "quantity": 1, "unit_price": 1000}],
            "total": 1000,
        },
    }


def test_two_workers_share_the_port_the_ledger_and_stop_together(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    port = _free_port()
    env = {
        **os.environ,
        "CRM_VAR_DIR": str(tmp_path / "var"),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_KAFKA_TOPIC_PREFIX": prefix,
        "CRM_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "engagement", "api", "--port", str(port), "--workers", "2"], env=env
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not become ready"
            assert server.poll() is None, "the API exited"
            time.sleep(0.3)
        assert len(_children(server.pid)) >= 2  # two workers (and uvicorn's supervisor)

        run = uuid.uuid4().hex[:6]
        headers = {"X-API-Key": "dev-pos-key"}

        async def send_all() -> list[httpx.Response]:
            # A connection per request: each is accepted by whichever worker is free.
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:
                first = await asyncio.gather(
                    *(client.post("/v1/events", json=_order(n, run)) for n in range(40))
                )
                # The same orders again: whichever worker takes a resend finds it in the
                # shared ledger and reports a duplicate.
                again = await asyncio.gather(
                    *(client.post("/v1/events", json=_order(n, run)) for n in range(40))
                )
                return [*first, *again]

        responses = asyncio.run(send_all())
        assert [r.status_code for r in responses] == [202] * 80
        assert [r.json()["status"] for r in responses[:40]] == ["accepted"] * 40
        assert [r.json()["status"] for r in responses[40:]] == ["duplicate"] * 40

        records = asyncio.run(read_topic(kafka_bootstrap, prefix + COMMERCE_ORDER.name, 40))
        orders = sorted(decode(r.value).payload.order_id for r in records)  # type: ignore[attr-defined]
        assert orders == sorted(f"{run}-{n}" for n in range(40))

        workers = _children(server.pid)
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
        deadline = time.monotonic() + 5  # a worker may still be tearing down its memory
        while (left := [pid for pid in workers if _alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"workers outlived the API: {[_describe(pid) for pid in left]}"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
