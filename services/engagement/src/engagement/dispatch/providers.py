"""Where messages leave the platform: e-mail over SMTP, other channels over an HTTP webhook.

A provider either returns (the message was accepted), raises ``TemporaryFailure`` (not
accepted, worth retrying: a 4xx SMTP reply, a refused connection, an HTTP 429/5xx),
``PermanentFailure`` (refused for good: a 5xx SMTP reply such as an unknown mailbox, an
HTTP 4xx) or ``OutcomeUnknown`` (SMTP: the connection broke or timed out once the
message's DATA had begun, so the server may well have accepted it). Only what was
certainly not accepted is retried: an unknown outcome is recorded as failed, never sent
again — at most once.

Failure reasons carry codes only (the SMTP reply code and the RFC 3463 enhanced status
code, an HTTP status), never the server's text: a server quotes the address it refused,
and reasons are published (``message.failed``) and land in ClickHouse.

SMS, LINE and app push share ``WebhookProvider``: it POSTs a JSON body to the channel's
configured URL (an SMS gateway, a LINE Messaging API relay, a push service), signed
with HMAC-SHA256 (``X-CRM-Signature: sha256=<hex>``) and carrying the message id as
``Idempotency-Key`` so a receiver can drop a duplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any, Protocol

import aiosmtplib
import httpx
import orjson
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default


class TemporaryFailure(Exception):
    pass


class PermanentFailure(Exception):
    pass


class OutcomeUnknown(Exception):
    """The provider may have taken the message; sending it again could deliver it twice."""


#: An RFC 3463 enhanced status code at the start of an SMTP reply's text (``5.1.1 …``).
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")


def smtp_reason(code: int, text: str) -> str:
    """``SMTP 550 5.1.1``: the reply code and the enhanced status code, not the text."""
    enhanced = _ENHANCED.match(text.strip())
    return f"SMTP {code}" + (f" {enhanced.group(1)}" if enhanced else "")


class _Session(aiosmtplib.SMTP):
    """An SMTP session that knows whether the current message's DATA has begun: before
    it nothing can have been delivered; from then on a broken connection or a timeout
    leaves the outcome unknown."""

    data_started = False

    async def data(self, message: str | bytes, /, *, timeout: Any = Default.token) -> SMTPResponse:
        self.data_started = True
        return await super().data(message, timeout=timeout)


@dataclass(frozen=True)
class Outgoing:
    message_id: uuid.UUID
    channel: str
    to: str
    body: str
    subject: str | None = None
    html: str | None = None
    to_name: str | None = None
    unsubscribe_url: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Provider(Protocol):
    async def send(self, message: Outgoing) -> None: ...

    async def aclose(self) -> None: ...


class SmtpProvider:
    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        username: str | None = None,
        password: str | None = None,
        security: str = "none",
        timeout_s: float = 15.0,
        pool_size: int = 8,
    ) -> None:
        self.pool_size = pool_size
        self._idle: list[_Session] = []
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.security = security
        self.timeout_s = timeout_s

    def build(self, message: Outgoing) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = formataddr((" ".join((message.to_name or "").split()), message.to))
        mail["Subject"] = message.subject or ""
        mail["Date"] = formatdate(localtime=False)
        # The same id on every attempt: a receiving server that saw it drops a copy.
        mail["Message-ID"] = f"<{message.message_id}@crm-engagement>"
        if message.unsubscribe_url:
            # RFC 2369 / RFC 8058 one-click unsubscribe (Gmail and Yahoo require it for bulk mail)
            mail["List-Unsubscribe"] = f"<{message.unsubscribe_url}>"
            mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        for key, value in message.metadata.items():
            mail[f"X-CRM-{key}"] = value
        mail.set_content(message.body)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    async def _connect(self) -> _Session:
        client = _Session(
            hostname=self.host,
            port=self.port,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            timeout=self.timeout_s,
        )
        await client.connect()
        if self.username and self.password:
            await client.login(self.username, self.password)
        return client

    async def send(self, message: Outgoing) -> None:
        mail = self.build(message)
        for _ in range(2):
            reused = bool(self._idle)
            client = self._idle.pop() if reused else None
            try:
                if client is None:
                    client = await self._connect()
                client.data_started = False
                await client.send_message(mail)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self._keep(client)
                codes = [r.code for r in exc.recipients]
                reason = (
                    "recipient refused ("
                    + ", ".join(smtp_reason(r.code, r.message) for r in exc.recipients)
                    + ")"
                )
                if all(400 <= c < 500 for c in codes):
                    raise TemporaryFailure(reason) from None
                raise PermanentFailure(reason) from None
            except aiosmtplib.SMTPResponseException as exc:
                # the server answered (to DATA too): it did not take the message
                await _close(client)
                reason = smtp_reason(exc.code, exc.message)
                if 400 <= exc.code < 500:
                    raise TemporaryFailure(reason) from None
                raise PermanentFailure(reason) from None
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                started = client is not None and client.data_started
                await _close(client)
                if started:  # the server may have taken it before the line went quiet
                    raise OutcomeUnknown(f"SMTP outcome unknown: {type(exc).__name__} during DATA") from None
                if reused and isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                    continue  # the server dropped an idle session: once more on a fresh one
                raise TemporaryFailure(f"SMTP unavailable: {type(exc).__name__}") from None
            self._keep(client)
            return

    def _keep(self, client: _Session | None) -> None:
        """Keep a session for the next message (RFC 5321 allows many per connection):
        a connection and a TLS handshake per mail is most of a bulk send's cost."""
        if client is not None and client.is_connected and len(self._idle) < self.pool_size:
            self._idle.append(client)
        elif client is not None:
            client.close()

    async def aclose(self) -> None:
        while self._idle:
            await _close(self._idle.pop())


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is None or not client.is_connected:
        return
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


class WebhookProvider:
    def __init__(self, url: str, secret: str = "", timeout_s: float = 10.0) -> None:
        self.url = url
        self._secret = secret.encode()
        self._client = httpx.AsyncClient(timeout=timeout_s)

    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    async def send(self, message: Outgoing) -> None:
        body = orjson.dumps(
            {
                "message_id": str(message.message_id),
                "channel": message.channel,
                "to": message.to,
                "text": message.body,
                "title": message.subject,
                "metadata": message.metadata,
            }
        )
        headers = {"Content-Type": "application/json", "Idempotency-Key": str(message.message_id)}
        if self._secret:
            headers["X-CRM-Signature"] = self.sign(body)
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TemporaryFailure(f"webhook unavailable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TemporaryFailure(f"webhook answered {response.status_code}")
        if response.status_code >= 400:
            raise PermanentFailure(f"webhook answered {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


class RateLimiter:
    """A token bucket: at most ``rate`` sends a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)
