"""Local mode's providers: the mail sink keeps what the SMTP provider sends in a Maildir,
the webhook sink what the webhook provider posts, per channel."""

from __future__ import annotations

import asyncio
import json
import mailbox
import socket
import uuid
from pathlib import Path

import pytest

from engagement.dispatch.mailsink import start_mailsink, start_webhook_sink
from engagement.dispatch.providers import Outgoing, PermanentFailure, SmtpProvider, WebhookProvider

pytestmark = pytest.mark.integration


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sinks_keep_what_the_providers_send(tmp_path: Path) -> None:
    smtp_port, hook_port = _port(), _port()
    controller = start_mailsink(tmp_path / "mail", port=smtp_port)
    hooks = start_webhook_sink(tmp_path / "outbox", port=hook_port)
    mid = uuid.uuid4()

    async def send() -> None:
        smtp = SmtpProvider("127.0.0.1", smtp_port, "Shop <news@example.jp>")
        await smtp.send(
            Outgoing(
                mid,
                "email",
                "taro@example.jp",
                "本文",
                subject="件名",
                to_name="山田 太郎",
                unsubscribe_url="http://127.0.0.1:8002/t/u/x",
            )
        )
        line = WebhookProvider(f"http://127.0.0.1:{hook_port}/line")
        await line.send(Outgoing(mid, "line", "U1234", "こんにちは"))
        await line.aclose()
        fax = WebhookProvider(f"http://127.0.0.1:{hook_port}/fax")
        with pytest.raises(PermanentFailure):
            await fax.send(Outgoing(mid, "fax", "x", "y"))
        await fax.aclose()

    try:
        asyncio.run(send())
    finally:
        hooks.shutdown()
        controller.stop()
    mails = list(mailbox.Maildir(tmp_path / "mail", create=False))
    assert len(mails) == 1
    assert mails[0]["Message-ID"] == f"<{mid}@crm-engagement>"
    assert mails[0]["X-Envelope-To"] == "taro@example.jp"
    assert mails[0]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    lines = (tmp_path / "outbox" / "line.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["text"] for x in lines] == ["こんにちは"]
    assert not (tmp_path / "outbox" / "fax.jsonl").exists()
