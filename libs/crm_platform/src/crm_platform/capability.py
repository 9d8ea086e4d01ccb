"""Contact capabilities: engagement's signed word that a customer is a message's recipient.

Identity answers a contact point (a channel's address and the greeting name) to a key
with ``identity:contact`` only when the request carries a capability: a token naming
one message (its id, its campaign, the recipient's customer id, one channel) and an
expiry, signed with **Ed25519** by engagement's dispatcher at send time. Identity holds
only the public key (``CRM_CONTACT_VERIFY_KEY``), so it can check a capability but
not make one; the private key (``CRM_CONTACT_SIGNING_KEY``) lives in the dispatcher
alone. A leaked ``identity:contact`` API key therefore reads nobody's address, and a
captured token reads one recipient's address on one channel for a few minutes.

Format: ``base64url(JSON claims) "." base64url(signature of the claims' bytes)``.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

#: Development signing seed (refused in production, like every development secret).
DEV_CONTACT_SIGNING_KEY = base64.b64encode(b"crm-dev-contact-signing-key-32b!").decode()
#: A capability's lifetime: long enough for a send and its retries, short enough that a
#: captured one is soon worthless.
CAPABILITY_TTL_S = 900
CHANNELS = frozenset({"email", "sms", "line", "app_push"})


class InvalidCapability(Exception):
    """Not a capability identity can honour; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ContactCapability:
    message_id: uuid.UUID
    campaign_id: uuid.UUID
    customer_id: uuid.UUID
    channel: str
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _private(seed_b64: str) -> Ed25519PrivateKey:
    seed = base64.b64decode(seed_b64, validate=True)
    if len(seed) != 32:
        raise ValueError("an Ed25519 signing key is 32 bytes (base64)")
    return Ed25519PrivateKey.from_private_bytes(seed)


def verify_key_of(signing_key_b64: str) -> str:
    """The public key (base64) identity needs to check what this signing key signs."""
    raw = _private(signing_key_b64).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


DEV_CONTACT_VERIFY_KEY = verify_key_of(DEV_CONTACT_SIGNING_KEY)


def new_signing_key() -> tuple[str, str]:
    """A fresh (signing key, verify key) pair, base64."""
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(seed).decode(), base64.b64encode(public).decode()


def sign(signing_key_b64: str, capability: ContactCapability) -> str:
    claims = orjson.dumps(
        {
            "v": 1,
            "mid": str(capability.message_id),
            "cmp": str(capability.campaign_id),
            "cid": str(capability.customer_id),
            "ch": capability.channel,
            "exp": int(capability.expires_at.timestamp()),
        }
    )
    return f"{_b64(claims)}.{_b64(_private(signing_key_b64).sign(claims))}"


def verify(verify_key_b64: str, token: str, now: datetime) -> ContactCapability:
    """The capability ``token`` stands for, if signed by the dispatcher and not expired."""
    try:
        claims_part, signature_part = token.split(".")
        claims_bytes, signature = _unb64(claims_part), _unb64(signature_part)
    except ValueError:
        raise InvalidCapability("not a capability token") from None
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(verify_key_b64))
    try:
        public.verify(signature, claims_bytes)
    except InvalidSignature:
        raise InvalidCapability("the signature does not verify") from None
    try:
        claims = orjson.loads(claims_bytes)
        capability = ContactCapability(
            message_id=uuid.UUID(claims["mid"]),
            campaign_id=uuid.UUID(claims["cmp"]),
            customer_id=uuid.UUID(claims["cid"]),
            channel=str(claims["ch"]),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
    except (ValueError, KeyError, TypeError):
        raise InvalidCapability("malformed claims") from None
    if claims.get("v") != 1 or capability.channel not in CHANNELS:
        raise InvalidCapability("malformed claims")
    if capability.expires_at <= now:
        raise InvalidCapability("expired")
    return capability
