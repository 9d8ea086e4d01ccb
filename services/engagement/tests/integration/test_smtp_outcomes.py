"""What the SMTP provider makes of a real server's answers: once DATA has begun, a
timeout is an unknown outcome (the server may have taken the mail — here it did), never
a temporary failure that the dispatcher would retry; and failure reasons carry the
reply's codes, never its text (which quotes the address)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

from engagement.dispatch.providers import (
    OutcomeUnknown,
    Outgoing,
    PermanentFailure,
    SmtpProvider,
    TemporaryFailure,
)

pytestmark = pytest.mark.integration
TO = "taro.yamada@example.jp"


@dataclass
class Server:
    received: int = 0
    data_delay_s: float = 0.0
    rcpt_reply: str | None = None
    data_reply: str = "250 OK"
    commands: list[str] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        self.commands.append("DATA")
        if self.data_reply.startswith("250"):
            self.received += 1  # taken: from here on it will be delivered
        await asyncio.sleep(self.data_delay_s)  # the reply is slow to come
        return self.data_reply


@pytest.fixture
def server() -> Iterator[tuple[Server, int]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    state = Server()
    controller = Controller(state, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield state, port
    finally:
        controller.stop()


def send(port: int, timeout_s: float = 5.0) -> None:
    async def go() -> None:
        provider = SmtpProvider("127.0.0.1", port, "Shop <news@example.jp>", timeout_s=timeout_s)
        try:
            await provider.send(Outgoing(uuid.uuid4(), "email", TO, "本文", subject="件名"))
        finally:
            await provider.aclose()

    asyncio.run(go())


def test_a_timeout_after_data_began_is_an_unknown_outcome_not_a_retry(server: tuple[Server, int]) -> None:
    state, port = server
    state.data_delay_s = 2.0
    with pytest.raises(OutcomeUnknown, match="outcome unknown"):
        send(port, timeout_s=0.5)
    assert state.received == 1  # it did go out: a retry would have sent it twice


def test_a_refusal_before_data_is_still_temporary(server: tuple[Server, int]) -> None:
    state, port = server
    state.rcpt_reply = f"450 4.2.1 <{TO}>: mailbox busy"
    with pytest.raises(TemporaryFailure) as caught:
        send(port)
    assert str(caught.value) == "recipient refused (SMTP 450 4.2.1)"
    assert state.commands == []


@pytest.mark.parametrize(
    ("rcpt", "data", "reason"),
    [
        (
            f"550 5.1.1 <{TO}>: Recipient address rejected: User unknown",
            None,
            "recipient refused (SMTP 550 5.1.1)",
        ),
        (None, f"554 5.7.1 Message to <{TO}> rejected by policy", "SMTP 554 5.7.1"),
        (None, f"552 message for {TO} too large", "SMTP 552"),
    ],
)
def test_failure_reasons_carry_codes_not_the_servers_text(
    server: tuple[Server, int], rcpt: str | None, data: str | None, reason: str
) -> None:
    state, port = server
    state.rcpt_reply = rcpt
    if data:
        state.data_reply = data
    with pytest.raises(PermanentFailure) as caught:
        send(port)
    assert str(caught.value) == reason
    assert "@" not in str(caught.value)
