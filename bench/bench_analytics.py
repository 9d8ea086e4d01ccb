"""Analytics on chDB: query latency on 10M events, sink throughput from Kafka, freshness.

``make bench BENCH=analytics`` or ``python bench/bench_analytics.py [--quick] [--events N]
[--customers N] [--seed N] [--phases queries,sink,freshness] [--profile-sink]``.

1. **Data** (not measured): ``analytics_gen`` builds ``--events`` commerce events (default
   10M) for ``--customers`` (1M), a profile snapshot per customer and ``customers // 300``
   merges, as contract JSON (a sample is asserted to decode with the registry and
   re-encode identically), and writes them with ``insert_rows`` in 200k-row inserts into
   the same schema the sink feeds (the materialised views parse them). The populated
   chDB directory is cached in ``var/bench-cache/analytics-<events>-<customers>-<seed>-<hash>``
   (the hash covers the generator and the SQL), so only the first run pays for it
   (``BENCH_ANALYTICS_FRESH=1`` rebuilds). Each run works on a copy.
2. **Queries** on that copy, after background merges settled and the sink's maintenance
   compacted the quiet months of ``orders`` (``store/maintenance.py``; the newest month
   is spared, as the month being written would be; part counts are recorded):
   KPI overview of a 12-month period (channel all, and store), the 12×12 monthly cohort
   matrix, and the 360 timeline of random customers. p50/p95/p99 of ``RUNS`` (timelines
   ``TIMELINES``) runs after a warm-up; the first (cold) run is recorded apart.
   Targets: p95 ≤ 500 ms (KPI, cohorts), ≤ 50 ms (timeline).
3. **Sink**: ``SINK_EVENTS`` events (+ their customers' snapshots) produced to a fresh topic
   prefix first, then ``Sink.drain()`` consumes them into a fresh chDB directory. Rate =
   records over the time from the consumer's partition assignment to the last flush,
   with the deployed settings (batch size, validator processes); CPU seconds of the
   sink's process and of its validators are recorded. Target ≥ 50,000 events/s.
   ``--profile-sink`` repeats it under py-spy and records where the time goes.
4. **Freshness**: the sink with its default batching (25k rows / 500 ms) on the copy of
   the populated store, a producer process at ``FRESH_RATE`` events/s for
   ``FRESH_SECONDS`` s, and a poller in the sink's process (chDB allows one process per
   directory, as the embedded deployment does) that looks up every 20th event by
   (person_key, event_id) every 20 ms. Latency = first poll that sees it − the instant the
   producer handed it to the Kafka client. Target p99 ≤ 2 s.

Every phase runs in its own process (one chDB engine per process). The topics a run
creates are deleted at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from datetime import date
from pathlib import Path
from typing import Any

from common import Metric

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE_DIR = ROOT / "var" / "bench-cache"
WORK_DIR = ROOT / "var" / "bench-tmp"
BOOTSTRAP = os.environ.get("CRM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


QUICK = os.environ.get("BENCH_ANALYTICS_QUICK", "") not in ("", "0")
EVENTS = _env_int("BENCH_ANALYTICS_EVENTS", 200_000 if QUICK else 10_000_000)
CUSTOMERS = _env_int("BENCH_ANALYTICS_CUSTOMERS", 20_000 if QUICK else 1_000_000)
SEED = _env_int("BENCH_ANALYTICS_SEED", 11)
FRESH = os.environ.get("BENCH_ANALYTICS_FRESH", "") not in ("", "0")
PHASES = os.environ.get("BENCH_ANALYTICS_PHASES", "queries,sink,freshness").split(",")
PROFILE_SINK = os.environ.get("BENCH_ANALYTICS_PROFILE", "") not in ("", "0")
RUNS = _env_int("BENCH_ANALYTICS_RUNS", 30)
TIMELINES = _env_int("BENCH_ANALYTICS_TIMELINES", 200)
SINK_EVENTS = _env_int("BENCH_ANALYTICS_SINK_EVENTS", 50_000 if QUICK else 500_000)
FRESH_RATE = _env_int("BENCH_ANALYTICS_FRESH_RATE", 2_000)
FRESH_SECONDS = _env_int("BENCH_ANALYTICS_FRESH_SECONDS", 20 if QUICK else 60)
CHUNK = 200_000
PARTITIONS = 6
#: The query period: the data's second year (the first is the previous period).
PERIOD = (date(2025, 10, 1), date(2026, 10, 1))


class DetailedMetric(Metric):
    """A metric with the figures behind it (percentiles, part counts, profiles), written
    as an extra ``detail`` key. (A plain subclass: run.py loads this module without
    registering it, which dataclasses cannot cope with.)"""

    detail: dict[str, Any]

    def __init__(
        self,
        value: float,
        unit: str,
        target: float,
        higher_is_better: bool = True,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(value, unit, target, higher_is_better)
        object.__setattr__(self, "detail", detail or {})

    def as_json(self) -> dict[str, object]:
        return {**super().as_json(), "detail": self.detail}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "runs": len(values),
        "p50_ms": round(_pct(values, 0.5), 2),
        "p95_ms": round(_pct(values, 0.95), 2),
        "p99_ms": round(_pct(values, 0.99), 2),
        "max_ms": round(max(values), 2),
        "mean_ms": round(sum(values) / len(values), 2),
    }


def _client(path: Path) -> Any:
    import clickhouse_connect

    return clickhouse_connect.get_client(dsn=f"chdb://{path}")


# -- child processes: each prints one ``RESULT {json}`` line ------------------------------


def _child(phase: str, args: dict[str, Any], *, wrap: list[str] | None = None, timeout: float = 7200) -> Any:
    cmd = [*(wrap or []), sys.executable, str(Path(__file__).resolve()), "_phase", phase, json.dumps(args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    result = None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        else:
            print(line, end="", flush=True)
    proc.wait(timeout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"phase {phase} failed (exit {proc.returncode})")
    return result


def _say(message: str) -> None:
    print(f"[analytics {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- phase: populate ---------------------------------------------------------------------


def _fingerprint() -> str:
    digest = hashlib.sha256()
    sql_dir = ROOT / "services" / "analytics" / "src" / "analytics" / "store" / "sql"
    for path in [HERE / "analytics_gen.py", *sorted(sql_dir.glob("*.sql"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _cache_path(events: int, customers: int, seed: int) -> Path:
    return CACHE_DIR / f"analytics-{events}-{customers}-{seed}-{_fingerprint()}"


def _settle(client: Any, timeout_s: float) -> dict[str, Any]:
    """Wait until no merge runs and the part counts stopped changing; the parts then."""
    deadline = time.monotonic() + timeout_s
    last, stable, started = None, 0, time.monotonic()
    parts: list[Any] = []
    while time.monotonic() < deadline:
        merges = client.query("SELECT count() FROM system.merges").result_rows[0][0]
        parts = client.query(
            "SELECT table, count() AS parts, sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts"
            " WHERE active AND database = currentDatabase() GROUP BY table ORDER BY table"
        ).result_rows
        shape = [(t, p) for t, p, _, _ in parts]
        if merges == 0 and shape == last:
            stable += 1
            if stable >= 3:
                break
        else:
            stable = 0
        last = shape
        time.sleep(2)
    return {
        "settled_after_s": round(time.monotonic() - started, 1),
        "tables": {t: {"parts": int(p), "rows": int(r), "mib": round(b / 2**20, 1)} for t, p, r, b in parts},
    }


def phase_populate(args: dict[str, Any]) -> dict[str, Any]:
    import analytics_gen as gen

    from analytics.sink import encode_row, insert_rows
    from analytics.store import daily
    from analytics.store.migrations import migrate

    path = Path(args["path"])
    if (path / "READY.json").exists():
        return json.loads((path / "READY.json").read_text())
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    spec = gen.Spec(args["events"], args["customers"], args["seed"])
    started = time.perf_counter()
    population = gen.Population(spec)
    planned = time.perf_counter() - started
    _say(f"planned {spec.events:,} events for {spec.customers:,} customers in {planned:.1f} s:")
    _say(f"  {population.counts}")
    client = _client(path)
    migrate(client)

    # generate on this thread, insert on another (chDB releases the GIL while it works)
    chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    insert_seconds = [0.0]

    def inserter() -> None:
        try:
            while (rows := chunks.get()) is not None:
                t0 = time.perf_counter()
                insert_rows(client, rows)
                insert_seconds[0] += time.perf_counter() - t0
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=inserter, daemon=True)
    worker.start()
    offsets: dict[tuple[str, int], int] = {}
    sample: list[bytes] = []
    rows: list[bytes] = []
    n = 0
    for stream in (population.stream(), population.identity_stream()):
        for topic, key, raw in stream:
            partition = zlib.crc32(key.encode()) % PARTITIONS
            offset = offsets.get((topic, partition), 0)
            offsets[(topic, partition)] = offset + 1
            rows.append(encode_row(topic, partition, offset, raw))
            if n % 4999 == 0 or (topic == gen.CUSTOMER_TOPIC and len(sample) < 400):
                sample.append(raw)
            n += 1
            if len(rows) >= CHUNK:
                if errors:
                    raise errors[0]
                chunks.put(rows)
                rows = []
                if n % (CHUNK * 10) == 0:
                    _say(f"{n:,} records written ({time.perf_counter() - started:.0f} s)")
    if rows:
        chunks.put(rows)
    chunks.put(None)
    worker.join()
    if errors:
        raise errors[0]
    t0 = time.perf_counter()
    daily.refresh(client)  # what the sink does after each batch, for every day at once
    daily_seconds = time.perf_counter() - t0
    loaded = time.perf_counter() - started
    verified = gen.verify_sample(sample)
    _say(
        f"{n:,} records in {loaded:.0f} s (inserts {insert_seconds[0]:.0f} s); {verified} sampled records"
        " decode and round-trip; waiting for merges"
    )
    parts = _settle(client, 1800)
    meta = {
        "events": spec.events,
        "customers": spec.customers,
        "seed": spec.seed,
        "records": n,
        "counts": {**population.counts, "profile_snapshots": spec.customers, "merges": spec.merges},
        "verified_sample": verified,
        "load_seconds": round(loaded, 1),
        "insert_seconds": round(insert_seconds[0], 1),
        "kpi_daily_seconds": round(daily_seconds, 1),
        "parts_after_load": parts,
        "timeline_customers": population.sample_customers(2000, spec.seed + 5),
    }
    client.close()
    (path / "READY.json").write_text(json.dumps(meta))
    return meta


# -- phase: queries ----------------------------------------------------------------------


def _time(fn: Any, runs: int, warmup: int = 3) -> tuple[list[float], float]:
    cold = 0.0
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0:
            cold = (time.perf_counter() - t0) * 1000
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out, cold


def phase_queries(args: dict[str, Any]) -> dict[str, Any]:
    import random

    from analytics.queries import Queries
    from analytics.store import maintenance

    path = Path(args["path"])
    client = _client(path)
    parts = _settle(client, 900)
    _say(f"parts settled: {parts}")
    # What the sink's maintenance does with partitions that have been quiet for ten
    # minutes; the newest month is spared, as the month being written would be.
    t0 = time.perf_counter()
    compacted = maintenance.compact(client, quiet_s=0, spare_latest=1)
    parts["compacted"] = {"partitions": compacted, "seconds": round(time.perf_counter() - t0, 1)}
    parts["orders_parts_after_compaction"] = client.query(
        "SELECT partition_id, count() FROM system.parts WHERE table = 'orders' AND active"
        " GROUP BY partition_id ORDER BY partition_id DESC LIMIT 3"
    ).result_rows
    _say(f"compacted: {parts['compacted']}, newest months' parts: {parts['orders_parts_after_compaction']}")
    q = Queries(client)
    start, end = PERIOD
    results: dict[str, Any] = {"parts": parts}
    for channel in ("all", "store"):
        times, cold = _time(lambda c=channel: q.kpi_overview(start, end, c), args["runs"])
        results[f"kpi_{channel}"] = {**_summary(times), "cold_ms": round(cold, 1)}
        results[f"kpi_{channel}_values"] = q.kpi_overview(start, end, channel)
        _say(f"kpi {channel}: {results[f'kpi_{channel}']}")
    times, cold = _time(lambda: q.cohorts(start, end, "month"), args["runs"])
    matrix = q.cohorts(start, end, "month")
    results["cohorts"] = {
        **_summary(times),
        "cold_ms": round(cold, 1),
        "cohorts": len(matrix["cohorts"]),
        "offsets": len(matrix["offsets"]),
    }
    results["cohorts_first_row"] = matrix["cohorts"][0] if matrix["cohorts"] else None
    _say(f"cohorts: {results['cohorts']}")
    ids = args["customers"]
    rng = random.Random(args["seed"])
    picks = [rng.choice(ids) for _ in range(args["timelines"] + 20)]
    lengths: list[int] = []
    times = []
    for i, cid in enumerate(picks):
        t0 = time.perf_counter()
        rows = q.timeline(cid, 100)
        elapsed = (time.perf_counter() - t0) * 1000
        if i >= 20:  # the first 20 warm up
            times.append(elapsed)
            lengths.append(len(rows))
    keys_times, _ = _time(lambda: q.customer_keys(rng.choice(ids)), 100)
    results["timeline"] = {
        **_summary(times),
        "mean_events": round(sum(lengths) / len(lengths), 1),
        "max_events": max(lengths),
        "customer_keys_p50_ms": round(_pct(keys_times, 0.5), 2),
        "customer_keys_p95_ms": round(_pct(keys_times, 0.95), 2),
    }
    _say(f"timeline: {results['timeline']}")
    client.close()
    return results


# -- Kafka helpers -----------------------------------------------------------------------


async def _delete_topics(prefix: str) -> None:
    from crm_platform.testing import delete_topics, list_topics

    names = sorted(t for t in await list_topics(BOOTSTRAP) if t.startswith(prefix))
    if names:
        await delete_topics(BOOTSTRAP, names)


async def _produce_fast(prefix: str, records: list[tuple[str, str, bytes]]) -> float:
    """Whole record batches per partition, keyed like the platform's producer."""
    from aiokafka import AIOKafkaProducer

    from crm_platform.kafka import kafka_partition

    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        groups: dict[tuple[str, int], list[tuple[bytes, bytes, bytes]]] = {}
        for topic, key, raw in records:
            k = key.encode()
            groups.setdefault((prefix + topic, kafka_partition(k, PARTITIONS)), []).append(
                (k, raw, raw[raw.index(b'"event_type":"') + 14 : raw.index(b'","schema_version"')])
            )
        pending = []
        for (topic, partition), members in groups.items():
            batch = producer.create_batch()
            for k, raw, event_type in members:
                headers = [("event_type", event_type), ("content-type", b"application/json")]
                if batch.append(key=k, value=raw, timestamp=None, headers=headers) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=k, value=raw, timestamp=None, headers=headers)
                if len(pending) >= 64:
                    await asyncio.gather(*pending)
                    pending = []
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def phase_produce(args: dict[str, Any]) -> dict[str, Any]:
    import analytics_gen as gen

    from crm_platform.kafka import ensure_topics

    spec = gen.Spec(args["events"], args["customers"], args["seed"])
    population = gen.Population(spec)
    records = list(population.stream()) + list(population.identity_stream())
    asyncio.run(ensure_topics(BOOTSTRAP, prefix=args["prefix"]))
    seconds = asyncio.run(_produce_fast(args["prefix"], records))
    return {
        "records": len(records),
        "produce_seconds": round(seconds, 1),
        "produce_per_s": round(len(records) / seconds),
        "mean_bytes": sum(len(r[2]) for r in records) // len(records),
    }


# -- phase: sink throughput --------------------------------------------------------------


def phase_sink(args: dict[str, Any]) -> dict[str, Any]:
    from analytics.sink import Sink
    from analytics.store.migrations import migrate
    from crm_platform.process import quiet_gc
    from crm_platform.settings import Settings

    path = Path(args["path"])
    client = _client(path)
    migrate(client)

    async def go() -> dict[str, Any]:
        sink = Sink(
            client,
            bootstrap=BOOTSTRAP,
            group_id=f"bench-{uuid.uuid4().hex[:8]}",
            topic_prefix=args["prefix"],
            # as deployed
            batch_rows=Settings().sink_batch_rows,
            validators=Settings().sink_validators,
        )
        await sink.start()
        quiet_gc()  # as the sink's process (and the API's, which embeds it) does
        try:
            t_join = time.perf_counter()
            while not sink._consumer.assignment():  # the group join is no part of the rate
                await asyncio.sleep(0.02)
            joined = time.perf_counter() - t_join
            t0, w0 = time.perf_counter(), time.time()
            cpu0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            handled = await sink.drain(timeout_s=1800)
            wall = time.perf_counter() - t0
            busy = sink.stats.last_flush_at - w0
        finally:
            await sink.stop()  # the checker processes end: their CPU time is counted
        cpu1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

        def cpu(k: int) -> float:
            return round((cpu1[k].ru_utime + cpu1[k].ru_stime) - (cpu0[k].ru_utime + cpu0[k].ru_stime), 1)

        return {
            "records": handled,
            "rows_inserted": sink.stats.rows_inserted,
            "batches": sink.stats.batches,
            "dead_lettered": sink.stats.dead_lettered,
            "group_join_s": round(joined, 2),
            "drain_wall_s": round(wall, 2),
            "seconds": round(busy, 2),
            "events_per_s": round(handled / busy),
            # CPU seconds of the sink's process (with chDB's threads) and its checkers
            "cpu_sink_s": cpu(0),
            "cpu_checkers_s": cpu(1),
        }

    result = asyncio.run(go())
    counts = client.query(
        "SELECT (SELECT count() FROM events), (SELECT count() FROM orders), (SELECT count() FROM customers),"
        " (SELECT count() FROM identity_map)"
    ).result_rows[0]
    result["tables"] = dict(
        zip(("events", "orders", "customers", "identity_map"), map(int, counts), strict=True)
    )
    client.close()
    return result


def _profile_summary(raw_path: Path, top: int = 25) -> dict[str, Any]:
    """Collapsed stacks (py-spy ``--format raw``) → share of samples per function,
    inclusive and self, for the frames that matter."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n

    def share(d: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {"frame": k, "pct": round(100 * v / total, 1)}
            for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    return {"samples": total, "inclusive": share(inclusive), "self": share(own)}


# -- phase: freshness --------------------------------------------------------------------


def phase_fresh_producer(args: dict[str, Any]) -> None:
    """Open loop at ``rate``/s; prints ``SAMPLE event_id person_key t`` for every 20th."""
    import analytics_gen as gen
    from aiokafka import AIOKafkaProducer

    spec = gen.Spec(
        args["rate"] * args["seconds"], max(1000, args["rate"] * args["seconds"] // 10), args["seed"]
    )
    records = list(gen.Population(spec).stream())
    ids = [raw[13:49].decode() for _, _, raw in records]

    async def go() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        print("READY", flush=True)
        sys.stdin.readline()  # the sink is assigned: go
        interval = 1 / args["rate"]
        futures = []
        started = time.perf_counter()
        lag = 0.0
        for n, (topic, key, raw) in enumerate(records):
            due = started + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            sent_at = time.time()
            futures.append(await producer.send(args["prefix"] + topic, value=raw, key=key.encode()))
            if n % 20 == 0:
                print(f"SAMPLE {ids[n]} {key} {sent_at:.6f}", flush=True)
        # The offered load: records over the time they took to hand over (the last
        # acknowledgements come after; the latencies measured include them).
        elapsed = (time.perf_counter() - started) * len(records) / max(1, len(records) - 1)
        await asyncio.gather(*futures)
        await producer.stop()
        print(f"DONE {len(records)} {elapsed:.3f} {lag:.3f}", flush=True)

    asyncio.run(go())


def phase_freshness(args: dict[str, Any]) -> dict[str, Any]:
    from analytics.sink import Sink
    from crm_platform.kafka import ensure_topics
    from crm_platform.settings import Settings

    path = Path(args["path"])
    prefix = args["prefix"]
    asyncio.run(ensure_topics(BOOTSTRAP, prefix=prefix))
    sink_client = _client(path)
    poll_client = _client(path)
    outstanding: dict[str, tuple[str, float]] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()
    done = threading.Event()
    producer_done: list[str] = []
    producer = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "_phase",
            "fresh_producer",
            json.dumps(
                {"prefix": prefix, "rate": args["rate"], "seconds": args["seconds"], "seed": args["seed"]}
            ),
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert producer.stdout is not None
    assert producer.stdin is not None
    while (line := producer.stdout.readline()) and not line.startswith("READY"):
        pass

    def reader() -> None:
        assert producer.stdout is not None
        for line in producer.stdout:
            if line.startswith("SAMPLE "):
                _, event_id, key, t = line.split()
                with lock:
                    outstanding[event_id] = (key, float(t))
            elif line.startswith("DONE"):
                producer_done.append(line)

    polls: list[float] = []

    def poller() -> None:
        while not done.is_set():
            with lock:
                batch = dict(outstanding)
            if batch:
                t0 = time.perf_counter()
                rows = poll_client.query(
                    "SELECT toString(event_id) FROM events WHERE person_key IN {keys:Array(String)}"
                    " AND event_id IN {ids:Array(UUID)}",
                    parameters={"keys": sorted({k for k, _ in batch.values()}), "ids": list(batch)},
                ).result_rows
                now = time.time()
                polls.append((time.perf_counter() - t0) * 1000)
                with lock:
                    for (event_id,) in rows:
                        if event_id in outstanding:
                            seen[event_id] = now - outstanding.pop(event_id)[1]
            time.sleep(0.02)

    async def go() -> dict[str, Any]:
        sink = Sink(
            sink_client,
            bootstrap=BOOTSTRAP,
            group_id=f"bench-{uuid.uuid4().hex[:8]}",
            topic_prefix=prefix,
            validators=Settings().sink_validators,  # as deployed
        )
        await sink.start()
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        while not sink._consumer.assignment():
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # fetchers positioned
        threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=poller, daemon=True)]
        for t in threads:
            t.start()
        producer.stdin.write("go\n")  # type: ignore[union-attr]
        producer.stdin.flush()  # type: ignore[union-attr]
        deadline = time.monotonic() + args["seconds"] + 60
        while time.monotonic() < deadline and not (producer_done and not outstanding):
            await asyncio.sleep(0.2)
        done.set()
        stop.set()
        await task
        await sink.stop()
        return {"batches": sink.stats.batches, "records": sink.stats.records_in}

    stats = asyncio.run(go())
    producer.wait(30)
    latencies = [v * 1000 for v in seen.values()]
    sent, elapsed, lag = producer_done[0].split()[1:] if producer_done else ("0", "1", "0")
    result = {
        **_summary(latencies),
        "samples": len(latencies),
        "never_seen": len(outstanding),
        "produced": int(sent),
        "achieved_rate": round(int(sent) / float(elapsed)),
        "producer_max_behind_s": float(lag),
        "poll_query_p50_ms": round(_pct(polls, 0.5), 2) if polls else None,
        "poll_query_p99_ms": round(_pct(polls, 0.99), 2) if polls else None,
        **stats,
    }
    sink_client.close()
    poll_client.close()
    return result


# -- the benchmark -----------------------------------------------------------------------


def run() -> dict[str, Metric]:
    metrics: dict[str, Metric] = {}
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    cache = _cache_path(EVENTS, CUSTOMERS, SEED)
    if FRESH and cache.exists():
        shutil.rmtree(cache)
    reused = (cache / "READY.json").exists()
    _say(f"dataset {EVENTS:,} events / {CUSTOMERS:,} customers: {'cached' if reused else 'building'} {cache}")
    meta = _child("populate", {"path": str(cache), "events": EVENTS, "customers": CUSTOMERS, "seed": SEED})
    customers = meta.pop("timeline_customers")
    metrics["dataset_events"] = DetailedMetric(
        meta["events"], "events", 10_000_000, detail={**meta, "cache": str(cache), "reused": reused}
    )
    copy = Path(tempfile.mkdtemp(prefix="analytics-", dir=WORK_DIR)) / "clickhouse"
    try:
        if "queries" in PHASES or "freshness" in PHASES:
            t0 = time.perf_counter()
            shutil.copytree(cache, copy, symlinks=True)
            _say(f"copied the store in {time.perf_counter() - t0:.1f} s")
        if "queries" in PHASES:
            q = _child(
                "queries",
                {
                    "path": str(copy),
                    "customers": customers,
                    "runs": RUNS,
                    "timelines": TIMELINES,
                    "seed": SEED,
                },
            )
            parts = q.pop("parts")
            for name, key, target in (
                ("kpi_overview_all", "kpi_all", 500),
                ("kpi_overview_store", "kpi_store", 500),
                ("cohorts_12x12", "cohorts", 500),
                ("timeline", "timeline", 50),
            ):
                s = q[key]
                detail = {**s, **({"parts": parts} if name == "kpi_overview_all" else {})}
                if key.startswith("kpi"):
                    detail["values"] = q[f"{key}_values"]
                if key == "cohorts":
                    detail["first_row"] = q["cohorts_first_row"]
                metrics[f"{name}_p95"] = DetailedMetric(s["p95_ms"], "ms", target, False, detail)
                metrics[f"{name}_p50"] = Metric(s["p50_ms"], "ms", target, False)
                metrics[f"{name}_p99"] = Metric(s["p99_ms"], "ms", target, False)
        if "sink" in PHASES:
            prefix = f"benchan{uuid.uuid4().hex[:6]}."
            try:
                spec = {"events": SINK_EVENTS, "customers": max(1000, SINK_EVENTS // 10), "seed": SEED + 100}
                produced = _child("produce", {**spec, "prefix": prefix})
                _say(f"produced {produced}")
                sink_dir = copy.parent / "sink"
                s = _child("sink", {"path": str(sink_dir), "prefix": prefix})
                shutil.rmtree(sink_dir, ignore_errors=True)
                _say(f"sink: {s}")
                detail = {**s, "produced": produced}
                if PROFILE_SINK and shutil.which("py-spy"):
                    raw = copy.parent / "sink-profile.txt"
                    prof = _child(
                        "sink",
                        {"path": str(copy.parent / "sink2"), "prefix": prefix},
                        wrap=["py-spy", "record", "--native", "-r", "50", "-f", "raw", "-o", str(raw), "--"],
                    )
                    detail["profiled_run"] = prof
                    detail["profile"] = _profile_summary(raw)
                    shutil.rmtree(copy.parent / "sink2", ignore_errors=True)
                    shutil.copy(raw, WORK_DIR / "analytics-sink-profile.txt")
                    detail["profile_raw"] = str(WORK_DIR / "analytics-sink-profile.txt")
                    shutil.rmtree(copy.parent / "sink-x", ignore_errors=True)
                metrics["sink_events_per_s"] = DetailedMetric(
                    s["events_per_s"], "events/s", 50_000, detail=detail
                )
            finally:
                asyncio.run(_delete_topics(prefix))
        if "freshness" in PHASES:
            prefix = f"benchfr{uuid.uuid4().hex[:6]}."
            try:
                f = _child(
                    "freshness",
                    {
                        "path": str(copy),
                        "prefix": prefix,
                        "rate": FRESH_RATE,
                        "seconds": FRESH_SECONDS,
                        "seed": SEED + 200,
                    },
                )
            finally:
                asyncio.run(_delete_topics(prefix))
            _say(f"freshness: {f}")
            metrics["freshness_p99"] = DetailedMetric(f["p99_ms"], "ms", 2000, False, f)
            metrics["freshness_p95"] = Metric(f["p95_ms"], "ms", 2000, False)
            metrics["freshness_p50"] = Metric(f["p50_ms"], "ms", 2000, False)
            metrics["freshness_load_rate"] = Metric(f["achieved_rate"], "events/s", FRESH_RATE)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)
    return metrics


PHASE_FUNCS = {
    "populate": phase_populate,
    "queries": phase_queries,
    "produce": phase_produce,
    "sink": phase_sink,
    "freshness": phase_freshness,
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["_phase"]:
        sys.path.insert(0, str(HERE))
        name, args = argv[1], json.loads(argv[2])
        if name == "fresh_producer":
            phase_fresh_producer(args)
            return 0
        result = PHASE_FUNCS[name](args)
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200k events / 20k customers")
    parser.add_argument("--events", type=int)
    parser.add_argument("--customers", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached store")
    parser.add_argument("--phases", help="comma-separated: queries,sink,freshness")
    parser.add_argument("--profile-sink", action="store_true", help="py-spy the sink")
    parser.add_argument("--sink-events", type=int)
    parser.add_argument("--fresh-seconds", type=int)
    parser.add_argument("--fresh-rate", type=int)
    ns = parser.parse_args(argv)
    env = {
        "BENCH_ANALYTICS_QUICK": "1" if ns.quick else None,
        "BENCH_ANALYTICS_EVENTS": ns.events,
        "BENCH_ANALYTICS_CUSTOMERS": ns.customers,
        "BENCH_ANALYTICS_SEED": ns.seed,
        "BENCH_ANALYTICS_FRESH": "1" if ns.fresh else None,
        "BENCH_ANALYTICS_PHASES": ns.phases,
        "BENCH_ANALYTICS_PROFILE": "1" if ns.profile_sink else None,
        "BENCH_ANALYTICS_SINK_EVENTS": ns.sink_events,
        "BENCH_ANALYTICS_FRESH_SECONDS": ns.fresh_seconds,
        "BENCH_ANALYTICS_FRESH_RATE": ns.fresh_rate,
    }
    os.environ.update({k: str(v) for k, v in env.items() if v is not None})
    sys.path.insert(0, str(HERE))
    import run as runner
    from rich.console import Console

    runner.run_one("analytics", Console())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
