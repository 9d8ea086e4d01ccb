"""Starts the platform's processes together, prefixes their logs, watches and stops them.

Each process is a service role (``python -m identity api``), started with the same
Python and environment as the CLI. A process that dies is restarted with back-off; one
that keeps dying stops the whole platform, loudly, rather than leaving it half up.
Ctrl-C (or SIGTERM) stops every process with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape

COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta")


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    #: URL answering 200 once the process is ready (HTTP roles only).
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def platform_processes() -> list[ProcessSpec]:
    """The service roles that exist today, in start order."""
    py = sys.executable
    return [
        ProcessSpec(
            "identity-api", (py, "-m", "identity", "api"), health_url="http://127.0.0.1:8001/healthz"
        ),
        ProcessSpec("identity-relay", (py, "-m", "identity", "relay")),
        ProcessSpec("identity-resolver", (py, "-m", "identity", "resolver")),
        # Ingestion is CPU-bound per event (validation, blind indexes, encoding): two
        # processes share its port.
        ProcessSpec(
            "engagement-api",
            (py, "-m", "engagement", "api", "--workers", "2"),
            health_url="http://127.0.0.1:8002/healthz",
        ),
        ProcessSpec("engagement-relay", (py, "-m", "engagement", "relay")),
        ProcessSpec("engagement-worker", (py, "-m", "engagement", "worker")),
        ProcessSpec("engagement-eraser", (py, "-m", "engagement", "eraser")),
        ProcessSpec("support-api", (py, "-m", "support", "api"), health_url="http://127.0.0.1:8003/healthz"),
        ProcessSpec("support-relay", (py, "-m", "support", "relay")),
        ProcessSpec("support-eraser", (py, "-m", "support", "eraser")),
        # Local mode's providers (SMTP on 127.0.0.1:8025 into var/engagement/mail, SMS /
        # LINE / app push webhooks on 8026 into var/engagement/outbox), then the campaign
        # dispatcher that sends to them.
        ProcessSpec("engagement-mailsink", (py, "-m", "engagement", "mailsink")),
        ProcessSpec(
            "engagement-dispatcher",
            (py, "-m", "engagement", "dispatcher"),
            env={
                f"CRM_{channel.upper()}_WEBHOOK_URL": f"http://127.0.0.1:8026/{channel}"
                for channel in ("sms", "line", "app_push")
            },
        ),
        # With chDB (local mode) the sink runs inside the analytics API's process.
        ProcessSpec(
            "analytics-api", (py, "-m", "analytics", "api"), health_url="http://127.0.0.1:8004/healthz"
        ),
    ]


@dataclass
class _Running:
    spec: ProcessSpec
    colour: str
    popen: subprocess.Popen[bytes]
    started_at: float
    restarts: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        console: Console | None = None,
        *,
        grace_s: float = 10.0,
        max_restarts_per_minute: int = 3,
    ) -> None:
        self.specs = list(specs)
        self.console = console or Console()
        self.grace_s = grace_s
        self.max_restarts = max_restarts_per_minute
        self._running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self.failed: str | None = None

    def _spawn(self, spec: ProcessSpec, colour: str) -> _Running:
        popen = subprocess.Popen(
            spec.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # our Ctrl-C is handled here, not delivered twice
        )
        running = _Running(spec, colour, popen, time.monotonic())
        threading.Thread(target=self._pump, args=(running,), daemon=True).start()
        return running

    def _pump(self, running: _Running) -> None:
        assert running.popen.stdout is not None
        prefix = f"[{running.colour}]{running.spec.name:>16}[/{running.colour}] │ "
        for raw in iter(running.popen.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.console.print(prefix + escape(line), highlight=False, soft_wrap=True)

    def start(self) -> None:
        for i, spec in enumerate(self.specs):
            self._running[spec.name] = self._spawn(spec, COLOURS[i % len(COLOURS)])

    def wait_healthy(self, timeout_s: float = 60.0) -> list[str]:
        """Names of processes whose health URL did not answer in time (empty = all up)."""
        deadline = time.monotonic() + timeout_s
        pending = {r.spec.name: r.spec.health_url for r in self._running.values() if r.spec.health_url}
        while pending and time.monotonic() < deadline and not self._stop.is_set():
            for name, url in list(pending.items()):
                if self._running[name].popen.poll() is not None:
                    continue
                try:
                    with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback URL
                        if response.status == 200:
                            del pending[name]
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.3)
        return sorted(pending)

    def watch(self, on_tick: Callable[[], None] | None = None) -> None:
        """Block until stopped; restart processes that exit, within the restart budget."""
        while not self._stop.wait(0.5):
            for name, running in list(self._running.items()):
                code = running.popen.poll()
                if code is None:
                    continue
                now = time.monotonic()
                recent = [t for t in running.restarts if now - t < 60]
                if len(recent) >= self.max_restarts:
                    self.failed = f"{name} exited with {code} {len(recent) + 1} times within a minute"
                    self.console.print(f"[bold red]{escape(self.failed)}; stopping the platform[/bold red]")
                    self._stop.set()
                    break
                self.console.print(f"[yellow]{name} exited with {code}; restarting[/yellow]")
                time.sleep(min(2 ** len(recent), 8))
                replacement = self._spawn(running.spec, running.colour)
                replacement.restarts = [*recent, now]
                self._running[name] = replacement
            if on_tick:
                on_tick()

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Ctrl-C (or SIGTERM) was received: shutting down is not a failure."""
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)

    def stop(self) -> None:
        """SIGTERM everything (reverse start order), SIGKILL what outlives the grace period."""
        self._stop.set()
        procs = [r for r in reversed(list(self._running.values())) if r.popen.poll() is None]
        for r in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(r.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for r in procs:
            try:
                r.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.print(f"[yellow]{r.spec.name} ignored SIGTERM; killing it[/yellow]")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.popen.pid, signal.SIGKILL)
                r.popen.wait()
