"""Benchmark runner: ``python bench/run.py [name ...]`` (``make bench BENCH=name``).

Each ``bench/bench_<name>.py`` defines ``run() -> dict[str, Metric]``. The runner prints
the figures and writes ``bench/results/<name>.json`` as
``{"metrics": {metric: {value, unit, target, higher_is_better}}, "commit": sha}``.
Benchmarks are never timed assertions in the test suite.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from common import KEPT_TOPICS, Metric  # noqa: E402

from crm_platform.testing import delete_topics, list_topics  # noqa: E402

BOOTSTRAP = os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_speed() -> float:
    """Seconds for ten million additions in a Python loop, best of three."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def run_one(name: str, console: Console) -> dict[str, Metric]:
    path = HERE / f"bench_{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no benchmark {name!r}; available: {', '.join(available())}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    console.print(f"[bold]running {name}[/bold]")
    reference = machine_speed()
    before = asyncio.run(list_topics(BOOTSTRAP))
    started = time.perf_counter()
    try:
        metrics: dict[str, Metric] = module.run()
    finally:
        # Each run publishes under topics of its own: without this the broker collects
        # hundreds of partitions, and later runs pay for them.
        created = sorted(t for t in asyncio.run(list_topics(BOOTSTRAP)) - before if not KEPT_TOPICS.match(t))
        if created:
            asyncio.run(delete_topics(BOOTSTRAP, created))
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "metrics": {k: m.as_json() for k, m in metrics.items()},
        "commit": _commit(),
        "seconds": round(time.perf_counter() - started, 1),
        # This machine's speed varies with its neighbours (the same build has measured
        # ±40 % apart): the seconds a fixed pure-Python loop took just before, so figures
        # of different runs can be compared (lower is faster: 0.30 s on a good day, 0.48 s
        # minutes later; it moves within a run too).
        "reference_loop_s": reference,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = Table(title=f"{name} ({payload['seconds']} s; reference loop {reference} s)")
    for column in ("metric", "value", "unit", "target", "meets"):
        table.add_column(column)
    for key, m in metrics.items():
        table.add_row(
            key,
            f"{m.value:,.2f}",
            m.unit,
            f"{m.target:,}",
            "[green]yes[/green]" if m.meets else "[red]no[/red]",
        )
    console.print(table)
    return metrics


def main(argv: list[str]) -> int:
    console = Console()
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        console.print(f"[red]unknown benchmark(s) {unknown}; available: {available()}[/red]")
        return 2
    for name in names:
        run_one(name, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
