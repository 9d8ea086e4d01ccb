"""CSV import throughput: ``python -m engagement import`` on a generated retailer export.

``ROWS`` rows (store and online orders of 1–4 lines, members and anonymous buyers), every
order validated, blind-indexed, acknowledged by Kafka and recorded in the order ledger.
Rate = rows / wall time of the import process (start-up included). Target ≥ 20,000 rows/s.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import Metric

from crm_platform.kafka import ensure_topics

BOOTSTRAP = os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
ROWS = int(os.environ.get("BENCH_CSV_ROWS", "200000"))
HEADER = [
    *("order_id", "channel", "occurred_at", "store_id", "member_no", "email", "line_no", "sku"),
    *("category", "quantity", "unit_price", "discount", "shipping", "total", "payment_method"),
]


def write_export(path: Path, rows: int) -> int:
    written = order = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(HEADER)
        while written < rows:
            order += 1
            lines = 1 + order % 4
            online = order % 3 == 0
            prices = [990 + 500 * ((order + n) % 9) for n in range(lines)]
            shipping = 550 if online else 0
            total = sum(prices) + shipping
            for n, price in enumerate(prices, 1):
                out.writerow(
                    [
                        f"X{order:08d}",
                        "online" if online else "store",
                        f"2025-{1 + order % 12:02d}-{1 + order % 28:02d} {order % 24:02d}:15",
                        "" if online else f"S{order % 40:03d}",
                        "" if online or order % 5 == 0 else f"M{order % 60_000:07d}",
                        f"c{order % 60_000}@example.jp" if online else "",
                        n,
                        f"SKU-{(order * 7 + n) % 3000:05d}",
                        ("tops", "bottoms", "outer", "goods")[(order + n) % 4],
                        1,
                        price,
                        0,
                        shipping,
                        total,
                        "credit_card",
                    ]
                )
                written += 1
    return written


def run() -> dict[str, Metric]:
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    asyncio.run(ensure_topics(BOOTSTRAP, prefix=prefix))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.csv"
        rows = write_export(path, ROWS)
        env = {**os.environ, "CRM_VAR_DIR": tmp, "CRM_LOG_LEVEL": "WARNING", "CRM_KAFKA_TOPIC_PREFIX": prefix}
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "engagement", "import", str(path), "--source", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"import failed: {result.stderr[-2000:]}")
    summary = result.stderr.strip().splitlines()[-1]
    print(summary)
    match = re.search(r"([\d,]+) accepted", summary)
    if not match or int(match.group(1).replace(",", "")) == 0:
        raise RuntimeError(f"nothing was accepted: {summary}")
    if "rejected (0 rows" not in summary:
        raise RuntimeError(f"rows were rejected: {summary}")
    rate = rows / seconds
    print(f"{rows:,} rows in {seconds:.1f} s = {rate:,.0f} rows/s (process start included)")
    return {"csv_import_rows_per_s": Metric(rate, "rows/s", 20_000)}
