"""``crm run`` as a subprocess for end-to-end tests: started, awaited, stopped with Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Platform:
    proc: subprocess.Popen[bytes]
    lines: list[bytes] = field(default_factory=list)

    @property
    def output(self) -> str:
        return b"".join(self.lines).decode(errors="replace")


@contextmanager
def running_platform(env: dict[str, str], *args: str, up_within_s: float = 120) -> Iterator[Platform]:
    """``crm run --no-load`` until the banner says the platform is up; on leaving, Ctrl-C
    and wait for everything to stop (``platform.proc.returncode`` tells how)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_cli.main", "run", "--no-load", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    platform = Platform(proc)
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: platform.lines.extend(iter(stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + up_within_s
        while not any(b"CRM platform is up" in line for line in platform.lines):
            assert proc.poll() is None, platform.output[-3000:]
            assert time.monotonic() < deadline, "crm run never reported the platform up"
            time.sleep(0.2)
        yield platform
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=90)
        reader.join(timeout=10)


def crm(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
