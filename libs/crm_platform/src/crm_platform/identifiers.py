"""Normalisation of identifiers, identical at every service's edge.

The same e-mail typed at a store counter (全角, upper case) and in the web shop must give
the same blind index, so every service normalises with this module before hashing.
Names and addresses are *not* identifiers: their fuzzy matching lives in identity.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import phonenumbers

from crm_contracts.envelope import Identifier, IdentifierKind
from crm_platform.crypto import BlindIndexer


class InvalidIdentifier(ValueError):
    """An identifier value that cannot be normalised; ``kind`` names which one."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


_EMAIL = re.compile(
    r"^[^@\s]{1,64}@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
#: Providers where "+tag" is a sub-address of the same mailbox; Gmail also ignores dots.
PLUS_ADDRESSING = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "outlook.jp",
        "hotmail.com",
        "hotmail.co.jp",
        "live.jp",
        "icloud.com",
        "me.com",
        "fastmail.com",
        "proton.me",
        "protonmail.com",
    }
)
_DOT_INSENSITIVE = frozenset({"gmail.com", "googlemail.com"})
_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_.:-]{0,63}$")
_OPAQUE = frozenset({"line_id", "device", "ec_account"})
_SEPARATORS = re.compile(r"[\s-]")
_SPACE = re.compile(r"\s")
_DASHES = str.maketrans(dict.fromkeys("‐‑‒–—―−ー－ｰ", "-"))


def _nfkc(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip()


def normalise_email(raw: str) -> str:
    value = _nfkc(raw).lower()
    if not _EMAIL.match(value):
        raise InvalidIdentifier("email", "not an e-mail address")
    local, domain = value.rsplit("@", 1)
    if domain == "googlemail.com":
        domain = "gmail.com"
    if domain in PLUS_ADDRESSING:
        local = local.split("+", 1)[0]
    if domain in _DOT_INSENSITIVE:
        local = local.replace(".", "")
    if not local:
        raise InvalidIdentifier("email", "empty local part")
    return f"{local}@{domain}"


def normalise_phone(raw: str, region: str = "JP") -> str:
    """E.164 (``+81312345678``) from ``03-1234-5678``, ``0312345678``, ``+81 3 1234 5678``, 全角."""
    value = _nfkc(raw).translate(_DASHES)
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidIdentifier("phone", f"not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifier("phone", "not a valid phone number for its region")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_code(kind: str, raw: str) -> str:
    """Member numbers, POS cards, shop accounts, LINE ids, device ids: NFKC, upper case,
    no spaces or dashes between digit groups (``0012-3456`` == ``00123456``)."""
    folded = _nfkc(raw).upper()
    # Opaque ids from other systems keep their punctuation (case and width folded only).
    value = folded if kind in _OPAQUE else _SEPARATORS.sub("", folded.translate(_DASHES))
    if not value or len(value) > 128 or _SPACE.search(value):
        raise InvalidIdentifier(kind, "empty, too long, or contains spaces")
    if kind in ("member_no", "pos_card") and not _CODE.match(value):
        raise InvalidIdentifier(kind, "only letters, digits and . _ : - are allowed")
    return value


def normalise(kind: IdentifierKind | str, raw: str) -> str:
    try:
        kind = IdentifierKind(kind)
    except ValueError:
        raise InvalidIdentifier(
            str(kind), f"unknown identifier kind; one of {[k.value for k in IdentifierKind]}"
        ) from None
    if kind is IdentifierKind.EMAIL:
        return normalise_email(raw)
    if kind is IdentifierKind.PHONE:
        return normalise_phone(raw)
    return normalise_code(kind.value, raw)


#: Kinds whose value is also an address that is case-sensitive where it is used: a LINE
#: user id, an app's push token. They match case-insensitively (the blind index is of
#: the normalised value) but are kept, for sending, as observed.
CASE_SENSITIVE_ADDRESSES = frozenset({"line_id", "device"})


def contact_value(kind: IdentifierKind | str, raw: str) -> str:
    """The value to keep as the customer's address on a channel: the normalised value,
    except for :data:`CASE_SENSITIVE_ADDRESSES`, kept as observed (NFKC, trimmed; still
    validated as :func:`normalise` would)."""
    normalised = normalise(kind, raw)
    if str(IdentifierKind(kind).value) in CASE_SENSITIVE_ADDRESSES:
        return _nfkc(raw)
    return normalised


def blind_identifier(indexer: BlindIndexer, kind: IdentifierKind | str, raw: str) -> Identifier:
    """Normalise and hash in one step: what every edge puts on Kafka."""
    return indexer.identifier(kind, normalise(kind, raw))


class BlindIdentifiers:
    """:func:`blind_identifier` with a bounded memo, for an edge that sees the same
    customers again and again (a store's members, the web shop's accounts): normalising
    (phone numbers above all) and hashing cost more than the rest of an event.

    The memo is keyed by the value as received and lives in this process's memory only,
    like the request that brought it; the oldest entries go first. Invalid values are
    not remembered (each raises again). It keeps only the blind index (a string, which
    the cyclic GC does not track) and builds the :class:`Identifier` on each call: a
    memo of a hundred thousand models is three hundred thousand long-lived objects that
    every full collection walks, a quarter of an ingestion worker's CPU."""

    def __init__(self, indexer: BlindIndexer, max_entries: int = 100_000) -> None:
        self._indexer = indexer
        self._memo = lru_cache(maxsize=max_entries)(self._compute)

    def _compute(self, kind: str, raw: str) -> str:
        return self._indexer.index(kind, normalise(kind, raw))

    def __call__(self, kind: IdentifierKind | str, raw: str) -> Identifier:
        kind = _kind(kind)
        return Identifier(kind=kind, hash=self._memo(kind.value, raw))  # a key of two strings

    def hash(self, kind: IdentifierKind | str, raw: str) -> str:
        """Only the blind index (what a native edge writes itself)."""
        return self._memo(_kind(kind).value, raw)


def _kind(kind: IdentifierKind | str) -> IdentifierKind:
    try:
        return IdentifierKind(kind)
    except ValueError:
        raise InvalidIdentifier(
            str(kind), f"unknown identifier kind; one of {[k.value for k in IdentifierKind]}"
        ) from None
