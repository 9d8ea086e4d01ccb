"""A local SMTP server that keeps every mail it receives in a Maildir: local mode's
mail provider (``python -m engagement mailsink``; the supervisor starts it beside the
dispatcher). The dispatcher speaks real SMTP to it, exactly as to a production relay
(Postfix, Amazon SES, SendGrid's SMTP endpoint); open ``var/engagement/mail/new/`` with
any mail client, or ``mutt -f var/engagement/mail``."""

from __future__ import annotations

import mailbox
from email import message_from_bytes
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session


class MaildirHandler:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(path, create=True)
        self.received = 0

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        mail = message_from_bytes(content, policy=default)
        mail["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
        self.maildir.add(mail)
        self.received += 1
        return "250 OK"


def start_mailsink(path: Path, host: str = "127.0.0.1", port: int = 8025) -> Controller:
    controller = Controller(MaildirHandler(path), hostname=host, port=port)
    controller.start()
    return controller
