"""Signed tracking tokens: the open pixel, click redirects and unsubscribe links.

A token names a message (its id, a random-looking UUID), what it is for and, for a
click, which of the message's links — never an address, a name or a customer id, so a
forwarded mail or a proxy log leaks nothing personal. It is authenticated with
HMAC-SHA256 (truncated to 128 bits) under a key derived from the platform's master key,
so a token cannot be forged or altered: changing the link number or turning an open
token into an unsubscribe one breaks the MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["o", "c", "u"]  # open, click, unsubscribe
_KINDS = ("o", "c", "u")
_PAYLOAD = struct.Struct(">c16sH")
_MAC_BYTES = 16


class InvalidToken(ValueError):
    pass


@dataclass(frozen=True)
class Tracked:
    kind: Kind
    message_id: uuid.UUID
    link_no: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TrackingSigner:
    """Signs with a key derived from the current master key; verifies with it or with
    one derived from an older master key still configured (``CRM_MASTER_KEYS_PREVIOUS``),
    so the links of messages sent before a master key rotation keep working while the
    old key is kept (docs/security.md)."""

    def __init__(self, master_key: bytes, previous: Sequence[bytes] = ()) -> None:
        self._key = self._derive(master_key)
        self._older = [self._derive(k) for k in previous if k != master_key]

    @staticmethod
    def _derive(master_key: bytes) -> bytes:
        return hmac.new(master_key, b"crm.engagement.tracking.v1", hashlib.sha256).digest()

    def _mac(self, payload: bytes, key: bytes | None = None) -> bytes:
        return hmac.new(key or self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def _verifies(self, payload: bytes, given: bytes) -> bool:
        return any(hmac.compare_digest(given, self._mac(payload, k)) for k in (self._key, *self._older))

    def token(self, kind: Kind, message_id: uuid.UUID, link_no: int = 0) -> str:
        payload = _PAYLOAD.pack(kind.encode(), message_id.bytes, link_no)
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, kind: Kind) -> Tracked:
        if len(token) > 64 or token.count(".") != 1:
            raise InvalidToken("malformed token")
        body, mac = token.split(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except ValueError:
            raise InvalidToken("malformed token") from None
        if len(payload) != _PAYLOAD.size or not self._verifies(payload, given):
            raise InvalidToken("token does not verify")
        raw_kind, raw_id, link_no = _PAYLOAD.unpack(payload)
        found = raw_kind.decode()
        if found != kind or found not in _KINDS:
            raise InvalidToken("token is for another purpose")
        return Tracked(kind, uuid.UUID(bytes=raw_id), link_no)
