"""The sink's contract checks: in this process, in worker processes, and what becomes of
the workers when their parent dies."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import date

import factory as f
import orjson

from analytics.checking import Checked, Checker, check_groups
from crm_contracts.registry import encode
from crm_contracts.topics import COMMERCE_ORDER, IDENTITY_CUSTOMER


def _groups() -> list[tuple[str, list[bytes]]]:
    orders = [
        encode(f.store_order(f"m{i}", f"2026-03-{1 + i % 3:02d}", f"o{i}", ("tops", 1, 990)))
        for i in range(9)
    ]
    orders.insert(4, b"{not json")
    orders.insert(7, orders[0].replace(b'"total":990', b'"total":"lots"'))
    merge = f.merged(uuid.uuid4(), uuid.uuid4(), [f.ident("x")], f.at("2026-03-02"))
    return [(COMMERCE_ORDER.name, orders), (IDENTITY_CUSTOMER.name, [b"[]", encode(merge)])]


def test_a_batch_is_checked_into_rows_dead_letters_merges_and_days() -> None:
    checked = check_groups(_groups())
    assert checked.valid == 10
    assert [(g, i) for g, i, _ in checked.dead] == [(0, 4), (0, 7), (1, 0)]
    reasons = {(g, i): reason for g, i, reason in checked.dead}
    assert "payload.total" in reasons[(0, 7)]
    rows = [orjson.loads(line) for line in checked.block.splitlines()]
    assert len(rows) == 10
    assert [r["_topic"] for r in rows] == [COMMERCE_ORDER.name] * 9 + [IDENTITY_CUSTOMER.name]
    assert len(checked.merges) == 1
    assert checked.days == {date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)}


def test_worker_processes_check_exactly_as_the_sink_would_itself() -> None:
    groups = _groups()

    async def both() -> tuple[Checked, Checked]:
        here, pool = Checker(0), Checker(2)
        await pool.start()
        try:
            return await here.check(groups), await pool.check(groups)
        finally:
            pool.close()

    here, pooled = asyncio.run(both())
    assert pooled.valid == here.valid
    assert sorted(pooled.dead) == sorted(here.dead)
    assert sorted(pooled.block.splitlines()) == sorted(here.block.splitlines())
    assert pooled.days == here.days
    # each partition's records keep their order
    ours = [r for r in pooled.block.splitlines() if COMMERCE_ORDER.name.encode() in r]
    assert ours == [r for r in here.block.splitlines() if COMMERCE_ORDER.name.encode() in r]


def test_a_worker_ends_with_its_parent_even_when_the_parent_is_killed() -> None:
    script = (
        "import asyncio, os\n"
        "from analytics.checking import Checker\n"
        "async def main():\n"
        "    c = Checker(1)\n"
        "    await c.start()\n"
        "    print(next(iter(c._pool._processes)), flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    worker = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(worker, 9)
    raise AssertionError("the checker worker outlived its killed parent")
