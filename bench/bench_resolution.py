"""Identity resolution quality on a labelled synthetic population.

Registers every record of ``BENCH_PEOPLE`` synthetic people (Japanese names with width,
kana, 旧字体 and typo noise, moves, new phones, shared family e-mails and landlines)
through the identity application, then scores the resulting customers against the
ground truth with pairwise precision / recall / F1. Targets: F1 ≥ 0.97, precision ≥ 0.99.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import Metric

from crm_platform.settings import Settings
from crm_platform.synthetic import labelled_records
from identity.bootstrap import build
from identity.evaluation import evaluate

PEOPLE = int(os.environ.get("BENCH_PEOPLE", "2000"))
SEED = int(os.environ.get("BENCH_SEED", "11"))


def run() -> dict[str, Metric]:
    records = labelled_records(PEOPLE, seed=SEED)
    with tempfile.TemporaryDirectory() as tmp:
        identity = build(Settings(var_dir=Path(tmp)))
        started = time.perf_counter()
        result = evaluate(identity.app, records)
        elapsed = time.perf_counter() - started
        identity.close()
    m = result.metrics
    print(
        f"{result.records} records of {result.people} people → {result.customers} customers, "
        f"{result.reviews} reviews opened, {len(result.false_merges)} wrong merges"
    )
    return {
        "precision": Metric(m.precision, "ratio", 0.99),
        "recall": Metric(m.recall, "ratio", 0.95),
        "f1": Metric(m.f1, "ratio", 0.97),
        "registrations_per_s": Metric(result.records / elapsed, "records/s", 100),
    }
