"""Profile lookup latency: ``GET /customers/{id}`` on the identity API under 200 req/s.

Populates 20,000 customers (a third of them with a merge, so unified profiles are read
across two records), starts the real API process (uvicorn) on a copy of that store, then
sends requests open-loop at a fixed rate for ``BENCH_SECONDS`` from a separate
load-generator process (this file run as a script). Target: p99 ≤ 20 ms.

Populating registers every record through ``IdentityApplication.register``, one at a
time: two minutes, most of the benchmark, and nothing of it is measured. The populated
store is kept in ``var/bench-cache/`` under a hash of everything it is made from (the
population, the identity, platform and contracts code, eventsourcing's version, the
keys), so a run after any change to those registers anew and a run without one copies
it (``BENCH_PROFILE_FRESH=1`` registers anyway). Registering happens in ``/dev/shm``
when there is one (each commit's fsync is no part of a lookup); the API always reads from
an ordinary temporary directory.

The load generator is deliberately cheap, since it shares the 2 cores with the API: a
small asyncio HTTP/1.1 client over keep-alive TCP connections (a new connection whenever
every open one is busy), started fresh (it holds none of the population) and with the
cyclic GC off while it measures. httpx used ~3 ms of CPU per request, more than the
server, and ever more once requests queued in its pool, so the figures measured the
client as much as the API. A latency runs from the instant the request was *due* (the
open-loop schedule), not from when the client got round to sending it, so a stalled
client or server cannot hide its backlog (no coordinated omission). Every request counts;
any answer but 200 fails the run.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from common import Metric, free_port, wait_until_ok

RATE = int(os.environ.get("BENCH_RATE", "200"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
PEOPLE = int(os.environ.get("BENCH_PROFILE_PEOPLE", "20000"))
SEED = 3
FRESH = os.environ.get("BENCH_PROFILE_FRESH", "") not in ("", "0")
HERE = Path(__file__).resolve().parent
#: Populated stores of earlier runs, by what they were made from (``_fixture_key``).
CACHE_DIR = HERE.parent / "var" / "bench-cache"
#: A short warm-up at the full rate (connections open, code paths hot), on a few ids only.
WARMUP_SECONDS = int(os.environ.get("BENCH_WARMUP_SECONDS", "5"))
API_KEY = "dev-admin-key"
_KEEP_ALIVE_S = 4.0


# -- load generator (runs in its own process) ------------------------------------------


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.perf_counter()

    def fresh(self) -> bool:
        """Still usable: uvicorn closes a connection idle for 5 s (``timeout_keep_alive``)."""
        return not self.reader.at_eof() and time.perf_counter() - self.last_used < _KEEP_ALIVE_S

    async def get(self, request: bytes) -> int:
        """Send one request, read the whole response; returns the status code."""
        self.writer.write(request)
        status_line = await self.reader.readuntil(b"\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"response without content-length: {status_line!r} {head!r}")
        await self.reader.readexactly(length)
        return int(status_line.split(b" ", 2)[1])


async def _load(port: int, ids: list[str], rate: int, seconds: int) -> list[float]:
    """Open-loop: request n is due at ``start + n / rate`` whatever happened before."""
    idle: list[_Connection] = []
    opened: list[_Connection] = []
    latencies: list[float] = []
    errors: list[str] = []
    host = f"127.0.0.1:{port}"

    async def one(customer_id: str, due: float) -> None:
        while idle and not idle[-1].fresh():
            idle.pop().writer.close()
        if idle:
            conn = idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = _Connection(reader, writer)
            opened.append(conn)
        request = (
            f"GET /customers/{customer_id} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {API_KEY}\r\n"
            "Accept: application/json\r\n\r\n"
        ).encode()
        try:
            status = await conn.get(request)
        except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
            errors.append(repr(exc))
            return
        conn.last_used = time.perf_counter()
        latencies.append((conn.last_used - due) * 1000)
        if status != 200:
            errors.append(f"{customer_id}: HTTP {status}")
        idle.append(conn)

    tasks = []
    interval = 1 / rate
    start = time.perf_counter()
    for n in range(rate * seconds):
        due = start + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(random.choice(ids), due)))
    await asyncio.gather(*tasks)
    for conn in opened:
        conn.writer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[:3]}")
    return latencies


def _load_main(port: int, ids_file: str, warmup: int, rate: int, seconds: int) -> None:
    ids = Path(ids_file).read_text().split()
    gc.collect()
    gc.freeze()
    gc.disable()  # the client's own pauses would count as server latency
    if warmup:
        asyncio.run(_load(port, ids[:200], rate, warmup))
    cpu = time.process_time()
    latencies = asyncio.run(_load(port, ids, rate, seconds))
    cpu_ms = (time.process_time() - cpu) * 1000 / len(latencies)
    print(json.dumps({"latencies": latencies, "client_cpu_ms": cpu_ms}))


def _run_load(port: int, ids: list[str], tmp: str) -> tuple[list[float], float]:
    ids_file = Path(tmp) / "ids.txt"
    ids_file.write_text("\n".join(ids))
    args = [str(port), str(ids_file), str(WARMUP_SECONDS), str(RATE), str(SECONDS)]
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    return result["latencies"], result["client_cpu_ms"]


# -- the benchmark ------------------------------------------------------------------------


def _populate(var_dir: Path) -> list[str]:
    """Register the population through the application, as the channels would."""
    from crm_platform.settings import Settings
    from crm_platform.synthetic import Population
    from identity.bootstrap import build
    from identity.evaluation import command_for

    identity = build(Settings(var_dir=var_dir))
    ids: set[str] = set()
    try:
        for _, records in Population(seed=SEED).generate(PEOPLE):
            for record in records:
                ids.add(str(identity.app.register(command_for(record)).customer_id))
    finally:
        identity.close()
    return sorted(ids)


def _fixture_key() -> str:
    """What the populated store depends on: the population, every line of code that
    registers it (identity, the platform, the contracts), eventsourcing, and the keys."""
    from importlib.metadata import version

    from crm_platform.settings import Settings

    root = HERE.parent
    digest = hashlib.sha256(f"{PEOPLE}:{SEED}:{version('eventsourcing')}".encode())
    settings = Settings()
    digest.update(settings.master_key_bytes + settings.blind_index_key_bytes)
    for top in ("services/identity/src", "libs/crm_platform/src", "contracts/src"):
        for path in sorted((root / top).rglob("*")):
            if path.suffix in (".py", ".json") and path.is_file():
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


_STORE = Path("identity") / "events.sqlite"


def _fixture(var_dir: Path) -> tuple[list[str], str]:
    """The populated store in ``var_dir``, copied from the cache of populated stores
    (``_fixture_key``), which is filled first when it has none for these inputs.
    Registering 20,000 people one at a time is most of the benchmark's wall time and
    measures nothing of the lookup; ``BENCH_PROFILE_FRESH=1`` registers them anew."""
    from crm_platform.settings import Settings

    if Settings(var_dir=var_dir).event_store != "sqlite":
        started = time.perf_counter()
        ids = _populate(var_dir)
        return ids, f"registered in {time.perf_counter() - started:.0f} s (PostgreSQL: not cached)"
    cache = CACHE_DIR / f"profile_api-{_fixture_key()}"
    how = f"copied from {cache.relative_to(HERE.parent)}"
    if FRESH or not (cache / "ids.txt").exists():
        started = time.perf_counter()
        _fill_cache(cache)
        how = f"registered in {time.perf_counter() - started:.0f} s, then copied"
    # Where the API reads from: an ordinary temporary directory, on disk, as it always was.
    (var_dir / _STORE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cache / _STORE.name, var_dir / _STORE)
    return (cache / "ids.txt").read_text().split(), how


def _fill_cache(cache: Path) -> None:
    # Registered in memory when the machine has it: 40,000 commits, each an fsync on disk.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as scratch:
        ids = _populate(Path(scratch))
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        for stale in CACHE_DIR.glob("profile_api-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(dir=CACHE_DIR, prefix="partial-"))
        # The backup API copies a consistent snapshot, WAL included, though the key
        # store's connection may still be open.
        with (
            closing(sqlite3.connect(Path(scratch) / _STORE)) as src,
            closing(sqlite3.connect(partial / _STORE.name)) as dst,
        ):
            src.backup(dst)
        (partial / "ids.txt").write_text("\n".join(ids))
        partial.rename(cache)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run() -> dict[str, Metric]:

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ids, how = _fixture(Path(tmp))
        prepared = time.perf_counter() - started
        port = free_port()
        env = {**os.environ, "CRM_VAR_DIR": tmp, "CRM_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen([sys.executable, "-m", "identity", "api", "--port", str(port)], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_ok(f"{base}/healthz")
            server_cpu = _cpu_seconds(server.pid)
            latencies, client_cpu_ms = _run_load(port, ids, tmp)
            server_cpu = _cpu_seconds(server.pid) - server_cpu
        finally:
            server.terminate()
            server.wait(10)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(f"{len(ids)} customers {how} ({prepared:.0f} s in all)")
    print(
        f"{len(latencies)} requests at {RATE}/s over {len(ids)} customers: "
        f"p50 {p(0.5):.1f} ms, p95 {p(0.95):.1f} ms, p99 {p(0.99):.1f} ms, max {latencies[-1]:.1f} ms"
    )
    print(
        f"CPU per request: API {server_cpu * 1000 / (RATE * (SECONDS + WARMUP_SECONDS)):.2f} ms "
        f"(with the warm-up), load generator {client_cpu_ms:.2f} ms"
    )
    return {
        "profile_lookup_p99": Metric(p(0.99), "ms", 20, higher_is_better=False),
        "profile_lookup_p50": Metric(p(0.5), "ms", 5, higher_is_better=False),
        "rate": Metric(RATE, "req/s", 200),
    }


if __name__ == "__main__":
    _port, _ids_file, _warmup, _rate, _seconds = sys.argv[1:]
    _load_main(int(_port), _ids_file, int(_warmup), int(_rate), int(_seconds))
