"""API keys: how they are configured, stored and recognised.

``CRM_API_KEYS`` maps a **key id** to ``{"sha256": <hex digest of the key>, "scopes": [...]}``:
the configuration never holds a key itself, and what an API records of its caller
(``decided_by``, the audit log) is the key id. ``crm keys new-api-key --id X --scopes ...``
prints a new random key and its entry.

SHA-256 and not a password KDF (bcrypt, Argon2): a key is 256 bits from
``secrets.token_urlsafe(32)``, not a word a person chose, so there is no dictionary to
try and a slow hash would only slow every request down. Keys shorter than
``MIN_API_KEY_LENGTH`` are refused in production before they are hashed.

Development and test keep the older form ``{"<key>": [scopes]}`` (``DEV_API_KEYS``, the
tests' keys): such a key's id is ``key-`` and the first 12 hex digits of its digest,
never the key. Production refuses that form (``Settings``).

A presented key is hashed once and compared with every configured digest in constant
time (``hmac.compare_digest``, no early exit), so neither a key nor which entry it
matched can be guessed from timings.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Shortest key production accepts (``crm keys new-api-key`` makes 43 characters).
MIN_API_KEY_LENGTH = 32
#: What a key id may look like (it travels in events and the audit log).
KEY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class HashedApiKey(BaseModel):
    """A configured key: the SHA-256 of the key (hex) and its scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    scopes: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class ApiKeyEntry:
    key_id: str
    digest: bytes
    scopes: frozenset[str]


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def plaintext_key_id(key: str) -> str:
    """The id of a key configured in clear (development): derived, not the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def key_table(
    api_keys: Mapping[str, Sequence[str] | HashedApiKey | Mapping[str, Any]],
) -> tuple[ApiKeyEntry, ...]:
    """The configured keys as entries (id, digest, scopes), from either form."""
    entries = []
    for name, value in api_keys.items():
        if isinstance(value, HashedApiKey | Mapping):
            hashed = value if isinstance(value, HashedApiKey) else HashedApiKey.model_validate(value)
            entries.append(ApiKeyEntry(name, bytes.fromhex(hashed.sha256), frozenset(hashed.scopes)))
        else:
            entries.append(ApiKeyEntry(plaintext_key_id(name), digest(name), frozenset(value)))
    return tuple(entries)


def plaintext_entries(api_keys: Mapping[str, Any]) -> list[str]:
    """Ids of the entries configured in clear (refused in production)."""
    return [plaintext_key_id(k) for k, v in api_keys.items() if not isinstance(v, HashedApiKey | Mapping)]


def authenticate(table: Iterable[ApiKeyEntry], presented: str, *, min_length: int = 0) -> ApiKeyEntry | None:
    """The entry ``presented`` is the key of, or None. Every entry is compared."""
    if len(presented) < min_length:
        return None
    wanted = digest(presented)
    found = None
    for entry in table:
        if hmac.compare_digest(entry.digest, wanted) and found is None:
            found = entry
    return found


def new_api_key(key_id: str, scopes: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """A fresh random key and its ``CRM_API_KEYS`` entry ``{key_id: {sha256, scopes}}``."""
    key = secrets.token_urlsafe(32)
    return key, {key_id: {"sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": list(scopes)}}
