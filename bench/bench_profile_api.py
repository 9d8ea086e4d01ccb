"""Profile lookup latency: ``GET /customers/{id}`` on the identity API under 200 req/s.

Populates 20,000 customers (a third of them with a merge, so unified profiles are read
across two records), starts the real API process (uvicorn), then sends requests
open-loop at a fixed rate for ``BENCH_SECONDS`` from a separate process... here from an
asyncio client in this process, which shares the 2 cores. Target: p99 ≤ 20 ms.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import Metric

from crm_platform.settings import Settings
from crm_platform.synthetic import Population
from identity.bootstrap import build
from identity.evaluation import command_for

RATE = int(os.environ.get("BENCH_RATE", "200"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
PEOPLE = int(os.environ.get("BENCH_PROFILE_PEOPLE", "20000"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(base: str, ids: list[str]) -> list[float]:
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(
        base_url=base, headers={"X-API-Key": "dev-admin-key"}, limits=httpx.Limits(max_connections=64)
    ) as client:

        async def one(customer_id: str) -> None:
            nonlocal errors
            started = time.perf_counter()
            response = await client.get(f"/customers/{customer_id}")
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                errors += 1

        tasks = []
        interval = 1 / RATE
        start = time.perf_counter()
        for n in range(RATE * SECONDS):
            delay = start + n * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(random.choice(ids))))
        await asyncio.gather(*tasks)
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return latencies


def run() -> dict[str, Metric]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(var_dir=Path(tmp))
        identity = build(settings)
        population = Population(seed=3)
        ids: list[str] = []
        for _, records in population.generate(PEOPLE):
            for record in records:
                result = identity.app.register(command_for(record))
                ids.append(str(result.customer_id))
        identity.close()
        ids = sorted(set(ids))
        port = _free_port()
        env = {**os.environ, "CRM_VAR_DIR": tmp, "CRM_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "identity", "api", "--port", str(port)], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            asyncio.run(_load(base, ids[:200]))  # warm-up
            latencies = sorted(asyncio.run(_load(base, ids)))
        finally:
            server.terminate()
            server.wait(10)
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(
        f"{len(latencies)} requests at {RATE}/s over {len(ids)} customers: "
        f"p50 {p(0.5):.1f} ms, p95 {p(0.95):.1f} ms, p99 {p(0.99):.1f} ms, max {latencies[-1]:.1f} ms"
    )
    return {
        "profile_lookup_p99": Metric(p(0.99), "ms", 20, higher_is_better=False),
        "profile_lookup_p50": Metric(p(0.5), "ms", 5, higher_is_better=False),
        "rate": Metric(RATE, "req/s", 200),
    }
