"""A local, single-node Apache Kafka broker for development — no Docker.

``crm kafka start`` runs the real Apache Kafka broker (KRaft, combined broker +
controller) as a plain JVM process, so the services, the relays and the tests talk to
the same broker software as production does, on a machine that only has Java 17+ and
Maven.

Where things live
-----------------
* **Jars** (shared by every checkout and by the tests, downloaded once)::

      ${CRM_KAFKA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/crm/kafka}/<kafka version>/
          pom.xml                 # the classpath, as a Maven project of packaging "pom"
          libs/*.jar              # what `mvn dependency:copy-dependencies` resolved
          libs/.classpath-complete  # marker: the sha256 of the pom the jars came from

  We resolve the broker from Maven Central instead of downloading the binary tarball:
  Maven verifies checksums, reuses ``~/.m2`` and lets us pin the logging binding.
  Kafka 4.1 depends on slf4j-api 1.7, so the binding is log4j-slf4j-impl (not
  log4j-slf4j2-impl).

* **Data** (per checkout)::

      ${CRM_VAR_DIR:-<project root>/var}/kafka/
          server.properties, log4j2.properties   # generated on every start; do not edit
          cluster.id                             # the KRaft cluster id, chosen once
          storage/                               # log.dirs (topic data + KRaft metadata log)
          logs/server.log, logs/stdout.log       # broker log, JVM stdout/stderr
          broker.pid                             # pid of the broker this data dir runs

  The project root is the nearest directory above the working directory whose
  pyproject.toml declares the uv workspace (``[tool.uv.workspace]``).

* **Ports**: the broker listens on ``127.0.0.1:${CRM_KAFKA_PORT:-9092}``; the KRaft
  controller on the next port up. Only loopback: this broker has no authentication.

Broker settings are single-node ones (every replication factor and min.insync.replicas
is 1, including the internal offsets / transaction / share-coordinator topics); topic
retention is Kafka's default (7 days), because tests and demos must not come to rely
on a broker that never forgets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PORT",
    "HOST",
    "KAFKA_VERSION",
    "KafkaLocalError",
    "KafkaStatus",
    "LocalKafka",
    "default_cache_root",
    "default_data_dir",
    "find_project_root",
    "new_cluster_id",
    "port_from_env",
    "port_open",
    "probe",
    "render_java_properties",
    "render_log4j2_properties",
    "render_pom",
    "render_server_properties",
    "wait_ready",
    "wait_ready_async",
]

KAFKA_VERSION = "4.1.1"
SCALA_BINARY_VERSION = "2.13"
# Kafka 4.1 still logs through slf4j-api 1.7, whose log4j2 binding is log4j-slf4j-impl.
LOG4J_VERSION = "2.24.3"
# Pinned so the download does not depend on which Maven version happens to be installed
# (each Maven release binds a different default maven-dependency-plugin).
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MIN_JAVA_MAJOR = 17  # Kafka 4.x brokers require Java 17.

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
NODE_ID = 1

# Modest heap: the development machines have 2 cores and also run ClickHouse and the
# services. G1 is the collector Kafka itself recommends and ships in its start scripts.
JVM_OPTIONS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    # A broker that ran out of heap is in an unknown state; dying lets `start` restart it.
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

ENV_CACHE = "CRM_KAFKA_CACHE"
ENV_VAR_DIR = "CRM_VAR_DIR"
ENV_PORT = "CRM_KAFKA_PORT"

_MARKER_NAME = ".classpath-complete"
_MVN_TIMEOUT_S = 20 * 60
_FORMAT_TIMEOUT_S = 120
_PROBE_REQUEST_TIMEOUT_MS = 3000
_PROBE_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.25

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


class KafkaLocalError(RuntimeError):
    """The local broker could not be provisioned, started or stopped."""


@dataclass(frozen=True)
class KafkaStatus:
    """What `LocalKafka.status` found.

    ``running`` means a Kafka client could fetch cluster metadata from ``bootstrap``.
    ``pid`` is the broker process this data dir started (None if there is none — a
    broker may still be running there, started from another data dir).
    """

    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    version: str
    jars_cached: bool
    cluster_id: str | None = None


# --------------------------------------------------------------------------- paths


def find_project_root(start: Path) -> Path:
    """Return the nearest directory at or above ``start`` holding the uv workspace root.

    A member's pyproject.toml (e.g. libs/crm_cli) does not count: only the one that
    declares ``[tool.uv.workspace]``, so running from inside a member still finds
    the checkout's single var/ directory. Falls back to ``start``.
    """
    start = start.resolve()
    for directory in (start, *start.parents):
        pyproject = directory / "pyproject.toml"
        try:
            text = pyproject.read_text(encoding="utf-8")
        except OSError:
            continue
        if re.search(r"^\s*\[tool\.uv\.workspace\]", text, re.MULTILINE):
            return directory
    return start


def default_cache_root(env: Mapping[str, str]) -> Path:
    """Directory holding one sub-directory per Kafka version (``<version>/libs``)."""
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE]).expanduser()
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "crm" / "kafka"


def default_data_dir(env: Mapping[str, str], cwd: Path) -> Path:
    """``$CRM_VAR_DIR/kafka``, else ``<project root>/var/kafka``."""
    if env.get(ENV_VAR_DIR):
        return Path(env[ENV_VAR_DIR]).expanduser().resolve() / "kafka"
    return find_project_root(cwd) / "var" / "kafka"


def port_from_env(env: Mapping[str, str]) -> int:
    """The broker port: ``$CRM_KAFKA_PORT`` or 9092. The controller uses the next one."""
    raw = env.get(ENV_PORT, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        raise KafkaLocalError(f"{ENV_PORT}={raw!r} is not a port number") from None
    if not 1 <= port <= 65534:  # port + 1 must be a valid port too (controller)
        raise KafkaLocalError(f"{ENV_PORT}={port} is out of range 1..65534")
    return port


# ---------------------------------------------------------------------- rendering


def _escape_properties(text: str, *, key: bool) -> str:
    """Escape for java.util.Properties.load(InputStream), which reads ISO-8859-1."""
    out: list[str] = []
    for index, char in enumerate(text):
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
        elif char == " " and (key or index == 0):
            # Leading blanks of a value are stripped by the loader; blanks end a key.
            out.append("\\ ")
        elif key and char in "=:#!":
            out.append("\\" + char)
        elif code < 0x20 or code > 0x7E:
            # \uXXXX (UTF-16 code units), so non-ASCII paths survive the Latin-1 reader.
            encoded = char.encode("utf-16-be")
            for i in range(0, len(encoded), 2):
                out.append(f"\\u{int.from_bytes(encoded[i : i + 2], 'big'):04x}")
        else:
            out.append(char)
    return "".join(out)


def render_java_properties(entries: Sequence[tuple[str, str]], *, header: Sequence[str] = ()) -> str:
    """Render ``key=value`` lines (in the given order) as a .properties file."""
    lines = [f"# {line}" for line in header]
    lines += [f"{_escape_properties(k, key=True)}={_escape_properties(v, key=False)}" for k, v in entries]
    return "\n".join(lines) + "\n"


def render_pom(kafka_version: str = KAFKA_VERSION, log4j_version: str = LOG4J_VERSION) -> str:
    """A packaging-``pom`` project whose runtime dependencies are the broker classpath."""
    deps = [
        ("org.apache.kafka", f"kafka_{SCALA_BINARY_VERSION}", kafka_version),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", log4j_version),
        ("org.apache.logging.log4j", "log4j-core", log4j_version),
    ]
    dep_xml = "\n".join(
        "    <dependency>"
        f"<groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>"
        "</dependency>"
        for g, a, v in deps
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by crm_cli.kafka_local: the local Kafka broker's classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.crm</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>{kafka_version}</version>
  <packaging>pom</packaging>
  <dependencies>
{dep_xml}
  </dependencies>
</project>
"""


def render_server_properties(
    *, storage_dir: Path, port: int, controller_port: int, node_id: int = NODE_ID
) -> str:
    """server.properties of a single-node KRaft broker+controller on loopback."""
    entries: list[tuple[str, str]] = [
        ("process.roles", "broker,controller"),
        ("node.id", str(node_id)),
        # A static quorum of one voter: no `--standalone` bootstrap needed at format.
        ("controller.quorum.voters", f"{node_id}@{HOST}:{controller_port}"),
        ("listeners", f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}"),
        ("advertised.listeners", f"PLAINTEXT://{HOST}:{port}"),
        ("controller.listener.names", "CONTROLLER"),
        ("inter.broker.listener.name", "PLAINTEXT"),
        ("listener.security.protocol.map", "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"),
        ("log.dirs", str(storage_dir)),
        # Six partitions per auto-created topic so consumer groups of up to 6 members
        # (e.g. several Faust workers) can actually spread the load.
        ("num.partitions", "6"),
        ("auto.create.topics.enable", "true"),
        # One node: every replication factor / ISR minimum must be 1 or nothing works.
        ("default.replication.factor", "1"),
        ("min.insync.replicas", "1"),
        ("offsets.topic.replication.factor", "1"),
        ("transaction.state.log.replication.factor", "1"),
        ("transaction.state.log.min.isr", "1"),
        ("share.coordinator.state.topic.replication.factor", "1"),
        ("share.coordinator.state.topic.min.isr", "1"),
        # No point waiting for more group members on a development broker.
        ("group.initial.rebalance.delay.ms", "0"),
        # Default retention (7 days) is kept on purpose; smaller segments (64 MiB
        # instead of 1 GiB) let retention and compaction act on a laptop-sized log.
        ("log.segment.bytes", str(64 * 1024 * 1024)),
        # Any producer timestamp is taken, as before Kafka 4.0 (whose default refuses one
        # more than an hour ahead of the broker): the test suite runs a second time with
        # its clock a year ahead (scripts/test.sh) against this broker at the real time.
        ("log.message.timestamp.after.max.ms", str(2**63 - 1)),
    ]
    return render_java_properties(
        entries,
        header=(
            f"Generated by crm_cli.kafka_local for Kafka {KAFKA_VERSION}; rewritten on",
            "every `crm kafka start` - edit kafka_local.py instead.",
        ),
    )


def render_log4j2_properties(log_file: Path) -> str:
    """log4j2 config: everything to a size-rolled ``log_file``, nothing to the console."""
    entries: list[tuple[str, str]] = [
        ("status", "warn"),
        ("name", "crm-kafka"),
        # Kafka logs its controlled shutdown from its own shutdown hook; log4j's hook
        # would race it and drop those lines. Appenders flush every line anyway.
        ("shutdownHook", "disable"),
        ("appender.server.type", "RollingFile"),
        ("appender.server.name", "server"),
        ("appender.server.fileName", str(log_file)),
        # '%' starts a conversion in file patterns; '%%' is a literal percent sign.
        ("appender.server.filePattern", str(log_file).replace("%", "%%") + ".%i"),
        ("appender.server.layout.type", "PatternLayout"),
        ("appender.server.layout.pattern", "[%d] %p %m (%c)%n"),
        ("appender.server.policies.type", "Policies"),
        ("appender.server.policies.size.type", "SizeBasedTriggeringPolicy"),
        ("appender.server.policies.size.size", "50MB"),
        ("appender.server.strategy.type", "DefaultRolloverStrategy"),
        ("appender.server.strategy.max", "5"),
        ("rootLogger.level", "info"),
        ("rootLogger.appenderRef.server.ref", "server"),
        # One line per request at INFO would drown everything else.
        ("logger.request.name", "kafka.request.logger"),
        ("logger.request.level", "warn"),
    ]
    return render_java_properties(entries, header=("Generated by crm_cli.kafka_local.",))


def new_cluster_id() -> str:
    """A KRaft cluster id, as ``kafka-storage random-uuid`` would print it.

    Kafka's Uuid is 16 random bytes in URL-safe base64 without padding; it never
    starts with '-' (unusable on a command line) and is never one of the two reserved
    ids (all zero, and 0...01). Generating it here saves one JVM start.
    """
    reserved = {bytes(16), bytes(15) + b"\x01"}
    while True:
        raw = secrets.token_bytes(16)
        text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if raw not in reserved and not text.startswith("-"):
            return text


# ------------------------------------------------------------------------ probing


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class _DropThreadRecords(logging.Filter):
    """Drops the log records of one thread (the one probing)."""

    def __init__(self, thread_id: int) -> None:
        super().__init__()
        self.thread_id = thread_id

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread_id


@contextlib.contextmanager
def _quiet_aiokafka() -> Iterator[None]:
    """Silence aiokafka's connection errors while we probe a broker that is expected to
    be down or still starting: failures are the normal case and we report them
    ourselves. Scoped to this thread so other aiokafka users keep their logs."""
    flt = _DropThreadRecords(threading.get_ident())
    # A logger's filters only see records logged on it (not its children's), so the
    # filter goes on every aiokafka logger: "aiokafka", "aiokafka.conn", ...
    names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] == "aiokafka"]
    loggers = [logging.getLogger(name) for name in {"aiokafka", *names}]
    for lg in loggers:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(flt)


async def probe(bootstrap: str) -> dict[str, Any]:
    """Fetch cluster metadata from ``bootstrap`` with a real Kafka client.

    The connection handshake includes ApiVersions and the bootstrap a Metadata
    request, so success means a Kafka broker is serving requests, which an open TCP
    port alone does not prove (it may be another program, or a broker still starting
    up). Returns the
    description (``cluster_id``, ``controller_id``, ``brokers``); raises otherwise.
    Each request times out after a few seconds; bound the whole call with
    ``asyncio.timeout`` if needed.
    """
    # Imported lazily: `crm --help` and the unit tests need no Kafka client.
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="crm-kafka-probe",
        request_timeout_ms=_PROBE_REQUEST_TIMEOUT_MS,
    )
    with _quiet_aiokafka():
        try:
            await admin.start()
            description: dict[str, Any] = await admin.describe_cluster()
        finally:
            await admin.close()
    if not description.get("brokers"):
        raise KafkaLocalError(f"{bootstrap} answered but reported no brokers yet")
    return description


def _split_bootstrap(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",", maxsplit=1)[0].strip().rpartition(":")
    return host or HOST, int(port)


async def _poll_until_ready(bootstrap: str, errors: list[BaseException]) -> dict[str, Any]:
    host, port = _split_bootstrap(bootstrap)
    while True:
        # Cheap TCP check first, so a closed port does not cost a client start-up.
        if await asyncio.to_thread(port_open, host, port):
            try:
                async with asyncio.timeout(_PROBE_TIMEOUT_S):
                    return await probe(bootstrap)
            except Exception as exc:  # any failure means "not ready yet"
                errors.append(exc)
        else:
            errors.append(ConnectionRefusedError(f"nothing listens on {host}:{port}"))
        del errors[:-1]  # only the latest one is reported
        await asyncio.sleep(_POLL_INTERVAL_S)


async def wait_ready_async(bootstrap: str) -> dict[str, Any]:
    """Wait until a Kafka client can fetch cluster metadata from ``bootstrap``.

    Returns the cluster description. Waits forever: bound it with
    ``async with asyncio.timeout(...)``.
    """
    return await _poll_until_ready(bootstrap, [])


def wait_ready(bootstrap: str, timeout: float = 60.0) -> dict[str, Any]:
    """Block until a Kafka client can fetch cluster metadata from ``bootstrap``.

    Returns the cluster description; raises `TimeoutError` (with the last error seen)
    after ``timeout`` seconds. Runs its own event loop: async code uses
    `wait_ready_async`.
    """
    errors: list[BaseException] = []

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return await _poll_until_ready(bootstrap, errors)

    try:
        return asyncio.run(bounded())
    except TimeoutError:
        last = f" (last error: {errors[-1]!r})" if errors else ""
        raise TimeoutError(f"Kafka at {bootstrap} not ready after {timeout:.0f}s{last}") from None


def _probe_once(bootstrap: str, timeout: float = _PROBE_TIMEOUT_S) -> dict[str, Any] | None:
    """Cluster description if a Kafka broker answers on ``bootstrap`` now, else None."""
    host, port = _split_bootstrap(bootstrap)
    if not port_open(host, port):
        return None
    try:
        return asyncio.run(asyncio.wait_for(probe(bootstrap), timeout))
    except Exception:  # "not a (ready) Kafka broker", whatever the reason
        return None


# ---------------------------------------------------------------------- utilities


def _write_if_changed(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` unless it already holds exactly that."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock: two `crm kafka start`s (or parallel test workers) on the
    same data dir / jar cache must not both download, format or launch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 40, start_offset: int = 0) -> str:
    """The last ``lines`` lines of ``path`` from byte ``start_offset`` on ('' if absent)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            # The file may have been rolled over since we took the offset.
            fh.seek(start_offset if start_offset <= size else 0)
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _java_major(version_output: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_x".
    return int(match.group(2) or 0) if major == 1 else major


# children we launched in this process, so `stop` can reap them (no zombies in tests)
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# ----------------------------------------------------------------------- the broker


class LocalKafka:
    """Provision, start, stop and inspect the local development broker.

    Every argument defaults from the environment (see the module docstring); tests pass
    their own ``data_dir`` and ``port`` and keep the shared jar cache.
    """

    version: str = KAFKA_VERSION

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        cache_root: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self._env = env
        self.data_dir: Path = (data_dir or default_data_dir(env, cwd or Path.cwd())).resolve()
        self.port: int = port if port is not None else port_from_env(env)
        self.cache_root: Path = (cache_root or default_cache_root(env)).resolve()
        self._progress = progress
        self._java_path: str | None = None

    # paths ----------------------------------------------------------------------

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def version_dir(self) -> Path:
        return self.cache_root / self.version

    @property
    def libs_dir(self) -> Path:
        return self.version_dir / "libs"

    @property
    def pom_file(self) -> Path:
        return self.version_dir / "pom.xml"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs_dir / "stdout.log"

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log4j_properties(self) -> Path:
        return self.data_dir / "log4j2.properties"

    @property
    def cluster_id_file(self) -> Path:
        return self.data_dir / "cluster.id"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def _say(self, message: str) -> None:
        log.info(message)
        if self._progress is not None:
            self._progress(message)

    # tools ----------------------------------------------------------------------

    def _java(self) -> str:
        """Path of a Java >= 17 (``$JAVA_HOME/bin/java`` first, then PATH)."""
        if self._java_path is not None:
            return self._java_path
        java_home = self._env.get("JAVA_HOME")
        candidate = str(Path(java_home) / "bin" / "java") if java_home else None
        if not candidate or not os.access(candidate, os.X_OK):
            candidate = shutil.which("java")
        if not candidate:
            raise KafkaLocalError(
                f"java not found: the local Kafka broker needs Java {MIN_JAVA_MAJOR}+ "
                "(e.g. `apt-get install openjdk-17-jre-headless`, or set JAVA_HOME)"
            )
        result = subprocess.run(
            [candidate, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
        major = _java_major(result.stderr + result.stdout)
        if major is not None and major < MIN_JAVA_MAJOR:
            raise KafkaLocalError(
                f"{candidate} is Java {major}; Kafka {self.version} needs Java {MIN_JAVA_MAJOR}+"
            )
        self._java_path = candidate
        return candidate

    def _classpath(self) -> str:
        # The JVM expands "dir/*" to every jar in dir itself; no shell involved.
        return str(self.libs_dir / "*")

    # jars -----------------------------------------------------------------------

    def _pom_digest(self) -> str:
        return hashlib.sha256(render_pom(self.version).encode()).hexdigest()

    def jars_cached(self) -> bool:
        """True if the classpath for this version was resolved completely."""
        try:
            marker = json.loads((self.libs_dir / _MARKER_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(marker, dict) and marker.get("pom_sha256") == self._pom_digest()

    def ensure_jars(self) -> Path:
        """Download the broker classpath into the cache unless it is already complete.

        Maven resolves into a temporary sibling directory which is renamed into place
        only once complete (marker written first), so an interrupted download never
        leaves a half classpath that looks usable. Returns the libs directory.
        """
        if self.jars_cached():
            return self.libs_dir
        mvn = shutil.which("mvn")
        if not mvn:
            raise KafkaLocalError(
                "mvn not found: it is needed once, to download the Kafka broker jars "
                "(e.g. `apt-get install maven`)"
            )
        self._java()  # fail early with the clearer message when Java is missing too
        self.version_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.version_dir / ".lock"):
            if self.jars_cached():  # another process finished while we waited
                return self.libs_dir
            pom = render_pom(self.version)
            _write_if_changed(self.pom_file, pom)
            tmp = Path(tempfile.mkdtemp(prefix="libs.tmp-", dir=self.version_dir))
            try:
                self._say(f"Downloading Kafka {self.version} jars with Maven (once)…")
                cmd = [
                    mvn, "-q", "-B", "-f", str(self.pom_file),
                    f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                    f"-DoutputDirectory={tmp}",
                    "-DincludeScope=runtime",
                ]  # fmt: skip
                try:
                    result = subprocess.run(
                        cmd,
                        cwd=self.version_dir,
                        capture_output=True,
                        text=True,
                        timeout=_MVN_TIMEOUT_S,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    raise KafkaLocalError(
                        f"mvn did not finish within {_MVN_TIMEOUT_S}s: {' '.join(cmd)}"
                    ) from None
                jars = sorted(p.name for p in tmp.glob("*.jar"))
                if result.returncode != 0 or not any(j.startswith("kafka_") for j in jars):
                    output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
                    raise KafkaLocalError(
                        f"mvn failed (exit {result.returncode}) resolving Kafka "
                        f"{self.version}: {' '.join(cmd)}\n{output}"
                    )
                marker = {"pom_sha256": self._pom_digest(), "version": self.version, "jars": jars}
                (tmp / _MARKER_NAME).write_text(json.dumps(marker, indent=1), encoding="utf-8")
                # A stale/incomplete libs dir is moved aside first: rename() onto a
                # non-empty directory fails.
                if self.libs_dir.exists():
                    old = Path(tempfile.mkdtemp(prefix="libs.old-", dir=self.version_dir))
                    os.replace(self.libs_dir, old / "libs")
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, self.libs_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            self._say(f"Cached {len(jars)} jars in {self.libs_dir}")
        return self.libs_dir

    # storage --------------------------------------------------------------------

    def write_config(self) -> None:
        """(Re)write server.properties and log4j2.properties for the current port."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        _write_if_changed(
            self.server_properties,
            render_server_properties(
                storage_dir=self.storage_dir,
                port=self.port,
                controller_port=self.controller_port,
            ),
        )
        _write_if_changed(self.log4j_properties, render_log4j2_properties(self.server_log))

    def cluster_id(self) -> str | None:
        """The cluster id chosen for this data dir, if any."""
        try:
            return self.cluster_id_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def ensure_formatted(self) -> str:
        """Write the config and format the KRaft storage once; returns the cluster id.

        The cluster id is chosen before formatting and kept in ``cluster.id``, so a
        format interrupted half-way is retried with the same id. Formatting is skipped
        when ``storage/meta.properties`` exists.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        cluster_id = self.cluster_id()
        if cluster_id is None:
            cluster_id = new_cluster_id()
            _write_if_changed(self.cluster_id_file, cluster_id + "\n")
        if (self.storage_dir / "meta.properties").exists():
            return cluster_id
        self.ensure_jars()
        self._say(f"Formatting KRaft storage in {self.storage_dir}")
        cmd = [
            self._java(), "-Xmx256m", "-cp", self._classpath(),
            f"-Dlog4j2.configurationFile={self.log4j_properties}",
            "kafka.tools.StorageTool", "format",
            "-t", cluster_id, "-c", str(self.server_properties),
            "--ignore-formatted",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=_FORMAT_TIMEOUT_S, check=False)
        if result.returncode != 0 or not (self.storage_dir / "meta.properties").exists():
            raise KafkaLocalError(
                f"formatting Kafka storage failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return cluster_id

    # process --------------------------------------------------------------------

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def _is_our_broker(self, pid: int) -> bool:
        """True if ``pid`` is alive and is the broker of this data dir.

        Checks the command line, because after a reboot the pid in a stale pid file
        may belong to an unrelated process we must not signal.
        """
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return False
        except OSError:
            # No procfs (not Linux): the best we can do is "the pid exists".
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        args = raw.decode("utf-8", "replace").split("\0")  # a zombie has an empty one
        return "kafka.Kafka" in args and str(self.server_properties) in args

    def managed_pid(self) -> int | None:
        """Pid of the live broker this data dir started, or None."""
        pid = self._read_pid()
        return pid if pid is not None and self._is_our_broker(pid) else None

    def _failure(self, headline: str, server_log_offset: int) -> KafkaLocalError:
        parts = [headline]
        stdout = _tail(self.stdout_log, 20)
        if stdout:
            parts.append(f"--- {self.stdout_log} (tail)\n{stdout}")
        server = _tail(self.server_log, 40, server_log_offset)
        if server:
            parts.append(f"--- {self.server_log} (tail)\n{server}")
        return KafkaLocalError("\n".join(parts))

    def start(self, timeout: float = 60.0) -> bool:
        """Start the broker unless one already serves ``bootstrap``.

        Returns True if this call launched a broker, False if one was already running
        (this data dir's, or any Kafka broker on the port). Returns only once a Kafka
        client can fetch cluster metadata. On failure or timeout the half-started JVM is
        stopped and `KafkaLocalError` carries the tail of the logs.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.data_dir / ".lock"):
            pid = self.managed_pid()
            if pid is not None:
                # Ours is running (maybe still starting): wait for it, never start twice.
                try:
                    wait_ready(self.bootstrap, timeout)
                except TimeoutError as exc:
                    raise KafkaLocalError(
                        f"the broker of {self.data_dir} (pid {pid}) is running but does not "
                        f"answer on {self.bootstrap} ({exc}); try `crm kafka stop` first"
                    ) from None
                return False
            self.pid_file.unlink(missing_ok=True)  # stale, if any
            if _probe_once(self.bootstrap) is not None:
                self._say(f"A Kafka broker already answers on {self.bootstrap}")
                return False
            for busy in (self.port, self.controller_port):
                if port_open(HOST, busy):
                    raise KafkaLocalError(
                        f"{HOST}:{busy} is in use by something that is not this Kafka "
                        f"broker; free it or set {ENV_PORT} (the controller uses port+1)"
                    )
            self.ensure_jars()
            self.ensure_formatted()
            return self._launch(timeout)

    def _launch(self, timeout: float) -> bool:
        cmd = [
            self._java(), *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self.log4j_properties}",
            "-cp", self._classpath(),
            "kafka.Kafka", str(self.server_properties),
        ]  # fmt: skip
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            offset = self.server_log.stat().st_size
        except OSError:
            offset = 0
        self._say(f"Starting Kafka {self.version} on {self.bootstrap}")
        with open(self.stdout_log, "wb") as out:
            # A new session: the broker must outlive this CLI and not get its Ctrl-C.
            proc = subprocess.Popen(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        _CHILDREN[proc.pid] = proc
        _write_if_changed(self.pid_file, f"{proc.pid}\n")

        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                _CHILDREN.pop(proc.pid, None)
                self.pid_file.unlink(missing_ok=True)
                raise self._failure(f"Kafka exited with code {code} during start-up", offset)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._terminate(proc.pid, timeout=15.0)
                self.pid_file.unlink(missing_ok=True)
                raise self._failure(
                    f"Kafka did not become ready on {self.bootstrap} within {timeout:.0f}s",
                    offset,
                )
            if _probe_once(self.bootstrap, timeout=min(5.0, remaining)) is not None:
                return True
            time.sleep(_POLL_INTERVAL_S)

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._is_our_broker(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _terminate(self, pid: int, timeout: float) -> None:
        """SIGTERM (Kafka then shuts down cleanly), SIGKILL if that takes too long."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            self._say(f"Kafka (pid {pid}) still running after {timeout:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10.0):
                raise KafkaLocalError(f"could not stop Kafka (pid {pid})")
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop this data dir's broker; returns its pid, or None if it was not running.

        A broker on the port that this data dir did not start is left alone.
        """
        if not self.data_dir.exists():
            return None
        with _file_lock(self.data_dir / ".lock"):
            pid = self.managed_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return None
            self._say(f"Stopping Kafka (pid {pid})")
            self._terminate(pid, timeout)
            self.pid_file.unlink(missing_ok=True)
            return pid

    def status(self) -> KafkaStatus:
        """Whether a broker answers on ``bootstrap``, and what this data dir knows."""
        description = _probe_once(self.bootstrap)
        cluster_id = description.get("cluster_id") if description else None
        return KafkaStatus(
            running=description is not None,
            pid=self.managed_pid(),
            bootstrap=self.bootstrap,
            data_dir=self.data_dir,
            version=self.version,
            jars_cached=self.jars_cached(),
            cluster_id=cluster_id or self.cluster_id(),
        )
