"""Local mode's message providers (``python -m engagement mailsink``; the supervisor
starts it beside the dispatcher).

* An SMTP server that keeps every mail it receives in a Maildir. The dispatcher speaks
  real SMTP to it, exactly as to a production relay (Postfix, Amazon SES, SendGrid's
  SMTP endpoint); open ``var/engagement/mail/new/`` with any mail client, or
  ``mutt -f var/engagement/mail``.
* An HTTP webhook receiver for SMS, LINE and app push (``POST /<channel>``): each body
  is appended to ``var/engagement/outbox/<channel>.jsonl``, as a gateway would take it.
"""

from __future__ import annotations

import json
import mailbox
import threading
from email import message_from_bytes
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session


class MaildirHandler:
    def __init__(self, path: Path) -> None:
        # Maildir(create=True) makes tmp/new/cur only in a directory it creates itself
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(path, create=False)
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


WEBHOOK_CHANNELS = ("sms", "line", "app_push")


def start_webhook_sink(path: Path, host: str = "127.0.0.1", port: int = 8026) -> ThreadingHTTPServer:
    """Accept ``POST /sms``, ``/line`` and ``/app_push`` (JSON, at most 64 KiB) into
    ``<path>/<channel>.jsonl``."""
    path.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            channel = self.path.strip("/")
            length = int(self.headers.get("Content-Length") or 0)
            if channel not in WEBHOOK_CHANNELS or not 0 < length <= 65_536:
                self.send_response(404 if channel not in WEBHOOK_CHANNELS else 413)
                self.end_headers()
                return
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            with lock, (path / f"{channel}.jsonl").open("a", encoding="utf-8") as out:
                out.write(json.dumps(body, ensure_ascii=False) + "\n")
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="webhook-sink", daemon=True).start()
    return server
