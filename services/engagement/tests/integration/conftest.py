"""Real neighbours for campaign tests: identity's (and analytics') API in processes of
their own — services never import each other, their tests neither — and an SMTP server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session


@dataclass
class Served:
    url: str
    server: uvicorn.Server | None = None


def serve(app: Any, name: str) -> Iterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"{name} did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def service_api(service: str, tmp_path: Path, **env: str) -> Iterator[Served]:
    """``python -m <service> api`` on a free port, on its own ``var/``; its log is
    shown when it does not start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = tmp_path / f"{service}.log"
    environment = {
        **os.environ,
        "CRM_VAR_DIR": str(tmp_path / f"{service}-var"),
        "CRM_LOG_LEVEL": "WARNING",
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", service, "api", "--port", str(port)],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{service} api did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Served(url)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def identity_api(tmp_path: Path) -> Iterator[Served]:
    """identity's real API on its own SQLite store, on a free port."""
    yield from service_api("identity", tmp_path)


@dataclass
class Mailbox:
    """What an SMTP server received; ``fail_next`` answers that many DATA commands with
    a temporary error (451) first."""

    mails: list[EmailMessage] = field(default_factory=list)
    fail_next: int = 0
    refused: int = 0

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.fail_next > 0:
            self.fail_next -= 1
            self.refused += 1
            return "451 4.3.0 try again later"
        mail = message_from_bytes(envelope.original_content or b"", policy=default)
        assert isinstance(mail, EmailMessage)
        self.mails.append(mail)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()
