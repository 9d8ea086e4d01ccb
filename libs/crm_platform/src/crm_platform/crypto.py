"""Personal-data protection: blind indexes and sealed values (ARCHITECTURE.md, Personal data).

* A **blind index** is ``HMAC-SHA256(blind_index_key, "<kind>:<normalised value>")``. Every
  service's edge computes the same index for the same identifier, so events can be joined
  on it without carrying the raw value; without the key it cannot be reversed by
  enumerating phone numbers.
* A **sealed value** is personal data encrypted with AES-256-GCM under a per-customer
  *data key*. Data keys are stored only wrapped (encrypted) by the master key, inside the
  identity service. Erasing a customer deletes the data key: every sealed copy anywhere
  (Kafka, ClickHouse, backups) becomes unreadable at once (crypto-shredding).
* The **master key has a version** (:class:`MasterKeys`): each wrapped data key records
  the version that wrapped it (a stored key without one is version 1), older master keys
  stay readable by version until ``crm keys rotate`` re-wrapped every data key under the
  current one; then the old master key can be removed, and with it every copy of the old
  wrapped keys (WAL, free pages, backups) is shredded too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crm_contracts.envelope import Identifier, IdentifierKind, SealedValue

_NONCE_BYTES = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SealError(Exception):
    """A sealed value could not be opened: wrong key, tampered data, or key erased."""


class BlindIndexer:
    """Computes blind indexes of already-normalised identifier values."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("blind index key must be at least 32 bytes")
        self._key = key
        # Keyed once; each index copies the keyed state (the key schedule is not redone).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @property
    def key(self) -> bytes:
        """The key, for a native implementation of the same index at a hot edge."""
        return self._key

    def index(self, kind: IdentifierKind | str, normalised_value: str) -> str:
        mac = self._keyed.copy()
        mac.update(f"{IdentifierKind(kind).value}:{normalised_value}".encode())
        return mac.hexdigest()

    def identifier(self, kind: IdentifierKind | str, normalised_value: str) -> Identifier:
        kind = IdentifierKind(kind)
        # Validated, which pydantic-core does faster than model_construct assembles it.
        return Identifier(kind=kind, hash=self.index(kind, normalised_value))


def generate_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_key(master_key: bytes, data_key: bytes, key_id: str) -> bytes:
    """Encrypt a data key with the master key, bound to its key id."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(master_key).encrypt(nonce, data_key, key_id.encode())


def unwrap_key(master_key: bytes, wrapped: bytes, key_id: str) -> bytes:
    try:
        return AESGCM(master_key).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:], key_id.encode())
    except InvalidTag:
        raise SealError(f"cannot unwrap data key {key_id}") from None


class MasterKeys:
    """The master key ring: the current key and its version, and older keys by version
    (read only, to unwrap data keys not yet re-wrapped by ``crm keys rotate``)."""

    def __init__(self, current: bytes, version: int = 1, previous: Mapping[int, bytes] | None = None) -> None:
        if version < 1:
            raise ValueError("a master key version is a positive integer")
        keys = dict(previous or {})
        if version in keys and keys[version] != current:
            raise ValueError(f"master key version {version} is both current and previous with another key")
        for v, key in {**keys, version: current}.items():
            if v < 1 or len(key) != 32:
                raise ValueError(f"master key version {v} must be a 32-byte key with a version >= 1")
        keys[version] = current
        self._keys = keys
        self._version = version

    @classmethod
    def of(cls, master: bytes | MasterKeys) -> MasterKeys:
        """A key ring from a ring or from one key (version 1)."""
        return master if isinstance(master, MasterKeys) else cls(master)

    @property
    def version(self) -> int:
        """The current version: what :meth:`wrap` wraps with."""
        return self._version

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._keys))

    def wrap(self, data_key: bytes, key_id: str) -> tuple[int, bytes]:
        """The data key wrapped by the current master key, and that key's version."""
        return self._version, wrap_key(self._keys[self._version], data_key, key_id)

    def unwrap(self, wrapped: bytes, key_id: str, version: int | None) -> bytes:
        """Unwrap with the master key of ``version`` (None: a key stored before versions,
        version 1); SealError if that version is not configured any more."""
        v = 1 if version is None else version
        key = self._keys.get(v)
        if key is None:
            raise SealError(
                f"data key {key_id} was wrapped by master key version {v}, which is not configured"
                " (CRM_MASTER_KEYS_PREVIOUS)"
            )
        return unwrap_key(key, wrapped, key_id)


def seal(data_key: bytes, key_id: str, value: object, context: str = "") -> SealedValue:
    """Encrypt a JSON-serialisable value. ``context`` (e.g. the event type) is bound as
    associated data, so a sealed value cannot be replayed into another field."""
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, orjson.dumps(value), f"{key_id}|{context}".encode())
    return SealedValue(key_id=key_id, nonce=_b64(nonce), ciphertext=_b64(ciphertext))


def open_sealed(data_key: bytes, sealed: SealedValue, context: str = "") -> object:
    try:
        plain = AESGCM(data_key).decrypt(
            _unb64(sealed.nonce), _unb64(sealed.ciphertext), f"{sealed.key_id}|{context}".encode()
        )
    except (InvalidTag, ValueError):
        raise SealError(f"cannot open value sealed with {sealed.key_id}") from None
    return orjson.loads(plain)
