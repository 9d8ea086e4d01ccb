"""Survey invitations and answers through engagement's API (one uvicorn process, SQLite).

Starts ``python -m engagement api`` on a fresh ``var/``, defines a post-purchase survey,
invites ``BENCH_SURVEY_INVITES`` customers in requests of 1,000 (what a campaign does
before sending), then answers ``BENCH_SURVEY_ANSWERS`` of the invitations through their
signed links with ``BENCH_SURVEY_CONCURRENCY`` requests in flight (what recipients do,
compressed in time). Every answer must be a 201.

Targets: 1,000 invitations/s (a 50,000-customer segment invited in under a minute) and
150 answers/s (far beyond a campaign's response curve; an answer is an event-sourced
write of two aggregates in one transaction).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from common import Metric, free_port, wait_until_ok

INVITES = int(os.environ.get("BENCH_SURVEY_INVITES", "5000"))
ANSWERS = int(os.environ.get("BENCH_SURVEY_ANSWERS", "2000"))
CONCURRENCY = int(os.environ.get("BENCH_SURVEY_CONCURRENCY", "8"))
STAFF = {"X-API-Key": "dev-admin-key"}
SURVEY = {
    "title": "bench",
    "questions": [
        {"id": "recommend", "kind": "nps", "text": "?"},
        {"id": "satisfaction", "kind": "csat", "text": "?"},
        {
            "id": "liked",
            "kind": "multiple_choice",
            "text": "?",
            "choices": ["a", "b", "c"],
            "required": False,
        },
    ],
}


async def _measure(base: str) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        created = await http.post("/v1/surveys", json=SURVEY, headers=STAFF)
        created.raise_for_status()
        sid = created.json()["survey_id"]
        customers = [str(uuid.uuid4()) for _ in range(INVITES)]
        tokens: list[str] = []
        started = time.perf_counter()
        for start in range(0, INVITES, 1000):
            r = await http.post(
                f"/v1/surveys/{sid}/invitations",
                json={"customer_ids": customers[start : start + 1000]},
                headers=STAFF,
            )
            r.raise_for_status()
            tokens += [i["survey_url"].rsplit("/", 1)[1] for i in r.json()["invitations"]]
        invite_rate = INVITES / (time.perf_counter() - started)

        semaphore = asyncio.Semaphore(CONCURRENCY)
        statuses: list[int] = []

        async def answer(i: int, token: str) -> None:
            async with semaphore:
                body = {"answers": {"recommend": i % 11, "satisfaction": 1 + i % 5, "liked": ["a"]}}
                r = await http.post(f"/v1/public/survey-invitations/{token}/answers", json=body)
                statuses.append(r.status_code)

        started = time.perf_counter()
        await asyncio.gather(*(answer(i, t) for i, t in enumerate(tokens[:ANSWERS])))
        answer_rate = ANSWERS / (time.perf_counter() - started)
        if statuses != [201] * ANSWERS:
            bad = sorted({s for s in statuses if s != 201})
            raise RuntimeError(f"answers not all 201: {bad}")
        return invite_rate, answer_rate


def run() -> dict[str, Metric]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CRM_VAR_DIR": str(Path(tmp) / "var"), "CRM_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen(
            [sys.executable, "-m", "engagement", "api", "--port", str(port), "--workers", "1"], env=env
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_ok(f"{base}/healthz", 60)
            invite_rate, answer_rate = asyncio.run(_measure(base))
        finally:
            server.terminate()
            server.wait(30)
    print(f"invitations {invite_rate:,.0f}/s, answers {answer_rate:,.0f}/s")
    return {
        "invitations_per_s": Metric(invite_rate, "invitations/s", 1000),
        "answers_per_s": Metric(answer_rate, "answers/s", 150),
    }


if __name__ == "__main__":
    print(run())
