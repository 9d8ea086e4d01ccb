"""The Customer aggregate: one person, as the identity service knows them.

Identifiers are held as ``(kind, blind index)`` pairs: that is what every other service
sends, so matching works on them. Personal fields live in ``personal`` (a JSON object);
the infrastructure seals it with the customer's data key before it is stored, so erasing
the key erases the person from the log too (crypto-shredding).

A merge never edits the survivor's own fields: the survivor *absorbs* the merged
customer's identifiers (remembering which merge brought each), and the merged customer
points at the survivor. Undoing a merge gives the identifiers back and reactivates the
merged customer, so both are exactly as they were before.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

#: Identifier kinds in descending linking priority.
IDENTIFIER_KINDS = ("member_no", "pos_card", "ec_account", "line_id", "email", "phone", "device")
#: Kinds a person has at most one of: two different values mean two people.
EXCLUSIVE_KINDS = frozenset({"member_no", "ec_account", "line_id"})
GENDERS = ("female", "male", "other", "unknown")
CONSENT_CHANNELS = ("email", "sms", "line", "app_push", "postal")
CHANNELS = ("store", "online", "app", "call_center", "staff", "form", "import")
PERSONAL_KEYS = ("name_kanji", "name_kana", "birthday", "postal_code", "address", "contacts")
ATTRIBUTE_KEYS = ("gender", "prefecture", "city", "tags", "preferences", "owner", "birth_year", "birth_month")

#: Namespace of deterministic ids: the same first identifier always yields the same
#: customer_id, so replaying the same observations reproduces the same ids.
CUSTOMER_NAMESPACE = uuid.UUID("5b0c3b8e-5f1e-4f5a-9a55-6d2b1c0f7a10")


class DomainError(Exception):
    """Base of the identity domain's errors."""


class InvalidCustomerData(DomainError):
    pass


class CustomerInactive(DomainError):
    """The customer was merged into another or erased; act on the survivor instead."""


class CannotMergeWithItself(DomainError):
    pass


class VersionConflict(DomainError):
    """The customer changed since the caller read it (optimistic concurrency)."""


def identifier_key(kind: str, hash_: str) -> str:
    return f"{kind}:{hash_}"


def priority(kind: str) -> int:
    return IDENTIFIER_KINDS.index(kind)


def new_customer_id(kind: str, hash_: str, attempt: int = 0) -> uuid.UUID:
    """Deterministic id from the strongest identifier first seen (``attempt`` > 0 when a
    different person already holds that id because the identifier is shared)."""
    suffix = f":{attempt}" if attempt else ""
    return uuid.uuid5(CUSTOMER_NAMESPACE, f"{kind}:{hash_}{suffix}")


def validate_identifier(kind: str, hash_: str) -> None:
    if kind not in IDENTIFIER_KINDS:
        raise InvalidCustomerData(f"unknown identifier kind {kind!r}; one of {IDENTIFIER_KINDS}")
    if len(hash_) != 64:
        raise InvalidCustomerData("identifier hash must be a 64-character blind index")


def _validate_profile(personal: dict[str, Any], attributes: dict[str, Any]) -> None:
    unknown = set(personal) - set(PERSONAL_KEYS)
    if unknown:
        raise InvalidCustomerData(f"unknown personal fields {sorted(unknown)}")
    unknown = set(attributes) - set(ATTRIBUTE_KEYS)
    if unknown:
        raise InvalidCustomerData(f"unknown attributes {sorted(unknown)}")
    gender = attributes.get("gender", "unknown")
    if gender not in GENDERS:
        raise InvalidCustomerData(f"gender must be one of {GENDERS}")


class Customer(Aggregate):
    """A customer. ``identifiers`` maps ``kind:hash`` to how and why it is linked."""

    class Registered(Aggregate.Created):
        PERSONAL_FIELDS = ("personal",)
        channel: str
        personal: dict[str, Any]
        attributes: dict[str, Any]
        identifiers: list[dict[str, Any]]
        consents: dict[str, dict[str, Any]]
        registered_at: datetime

    @event(Registered)
    def __init__(
        self,
        *,
        channel: str,
        personal: dict[str, Any],
        attributes: dict[str, Any],
        identifiers: list[dict[str, Any]],
        consents: dict[str, dict[str, Any]],
        registered_at: datetime,
    ) -> None:
        self.channel = channel
        self.personal = dict(personal)
        self.attributes = dict(attributes)
        self.identifiers: dict[str, dict[str, Any]] = {
            identifier_key(i["kind"], i["hash"]): {
                **i,
                "linked_at": registered_at.isoformat(),
                "via_merge": None,
            }
            for i in identifiers
        }
        self.consents = {k: dict(v) for k, v in consents.items()}
        self.registered_at = registered_at
        self.status = "active"
        self.merged_into: uuid.UUID | None = None
        #: merge_id (hex) → merged customer id (hex), for merges this customer survived.
        self.absorbed: dict[str, str] = {}
        self.erased_at: datetime | None = None

    @classmethod
    def register(
        cls,
        *,
        customer_id: uuid.UUID,
        channel: str,
        personal: dict[str, Any],
        attributes: dict[str, Any],
        identifiers: list[dict[str, Any]],
        consents: dict[str, bool],
        registered_at: datetime,
    ) -> Customer:
        if channel not in CHANNELS:
            raise InvalidCustomerData(f"channel must be one of {CHANNELS}")
        _validate_profile(personal, attributes)
        for i in identifiers:
            validate_identifier(i["kind"], i["hash"])
        unknown = set(consents) - set(CONSENT_CHANNELS)
        if unknown:
            raise InvalidCustomerData(f"unknown consent channels {sorted(unknown)}")
        return cls._create(
            cls.Registered,
            id=customer_id,
            channel=channel,
            personal=personal,
            attributes=attributes,
            identifiers=identifiers,
            consents={ch: {"granted": g, "at": registered_at.isoformat()} for ch, g in consents.items()},
            registered_at=registered_at,
        )

    # -- invariants -------------------------------------------------------------------

    def _require_active(self) -> None:
        if self.status != "active":
            raise CustomerInactive(
                f"customer {self.id} is {self.status}"
                + (f" into {self.merged_into}" if self.merged_into else "")
            )

    def check_version(self, expected: int | None) -> None:
        if expected is not None and expected != self.version:
            raise VersionConflict(f"customer {self.id} is at version {self.version}, not {expected}")

    def has(self, kind: str, hash_: str) -> bool:
        return identifier_key(kind, hash_) in self.identifiers

    def values_of(self, kind: str) -> set[str]:
        return {i["hash"] for i in self.identifiers.values() if i["kind"] == kind}

    def conflicts_with(self, identifiers: list[tuple[str, str]]) -> list[str]:
        """Exclusive kinds where ``identifiers`` hold a value this customer does not."""
        conflicts = []
        for kind, hash_ in identifiers:
            if kind in EXCLUSIVE_KINDS:
                own = self.values_of(kind)
                if own and hash_ not in own:
                    conflicts.append(kind)
        return sorted(set(conflicts))

    # -- profile ----------------------------------------------------------------------

    class ProfileChanged(Aggregate.Event):
        PERSONAL_FIELDS = ("personal",)
        personal: dict[str, Any]
        attributes: dict[str, Any]
        changed: list[str]

    def change_profile(self, personal: dict[str, Any], attributes: dict[str, Any]) -> list[str]:
        """Apply a partial update; ``None`` removes a field. Returns the changed names."""
        self._require_active()
        _validate_profile(personal, attributes)
        new_personal = {k: v for k, v in {**self.personal, **personal}.items() if v is not None}
        new_attributes = {k: v for k, v in {**self.attributes, **attributes}.items() if v is not None}
        changed = sorted(
            [k for k in set(new_personal) | set(self.personal) if new_personal.get(k) != self.personal.get(k)]
            + [
                k
                for k in set(new_attributes) | set(self.attributes)
                if new_attributes.get(k) != self.attributes.get(k)
            ]
        )
        if changed:
            self._change_profile(personal=new_personal, attributes=new_attributes, changed=changed)
        return changed

    @event(ProfileChanged)
    def _change_profile(
        self, personal: dict[str, Any], attributes: dict[str, Any], changed: list[str]
    ) -> None:
        self.personal = dict(personal)
        self.attributes = dict(attributes)

    class ConsentChanged(Aggregate.Event):
        channel: str
        granted: bool
        at: datetime
        #: a consent confirmed by double opt-in: form, submission, wording version,
        #: how and when it was confirmed, the token's id (absent on older events)
        proof: dict[str, Any] | None = None

    def change_consent(self, channel: str, granted: bool, at: datetime) -> bool:
        self._require_active()
        if channel not in CONSENT_CHANNELS:
            raise InvalidCustomerData(f"consent channel must be one of {CONSENT_CHANNELS}")
        current = self.consents.get(channel)
        if current is not None and current["granted"] == granted:
            return False
        self._change_consent(channel=channel, granted=granted, at=at)
        return True

    def confirm_consent(self, channel: str, at: datetime, proof: dict[str, Any]) -> bool:
        """Grant consent confirmed by double opt-in, keeping its proof. The same proof
        (token) again changes nothing; a new proof is recorded even when the consent
        was already given (it is a fact of its own)."""
        self._require_active()
        if channel not in CONSENT_CHANNELS:
            raise InvalidCustomerData(f"consent channel must be one of {CONSENT_CHANNELS}")
        current = self.consents.get(channel) or {}
        if current.get("granted") and (current.get("proof") or {}).get("token_id") == proof.get("token_id"):
            return False
        self._change_consent(channel=channel, granted=True, at=at, proof=proof)
        return True

    @event(ConsentChanged)
    def _change_consent(
        self, channel: str, granted: bool, at: datetime, proof: dict[str, Any] | None = None
    ) -> None:
        self.consents[channel] = {"granted": granted, "at": at.isoformat()}
        if proof is not None:
            self.consents[channel]["proof"] = dict(proof)

    # -- identifiers ------------------------------------------------------------------

    class IdentifierLinked(Aggregate.Event):
        kind: str
        hash: str
        evidence: dict[str, Any]

    def link(self, kind: str, hash_: str, evidence: dict[str, Any]) -> bool:
        self._require_active()
        validate_identifier(kind, hash_)
        if self.has(kind, hash_):
            return False
        self._link(kind=kind, hash=hash_, evidence=evidence)
        return True

    @event(IdentifierLinked)
    def _link(self, kind: str, hash: str, evidence: dict[str, Any]) -> None:
        self.identifiers[identifier_key(kind, hash)] = {
            "kind": kind,
            "hash": hash,
            "evidence": evidence,
            "linked_at": evidence.get("at"),
            "via_merge": None,
        }

    class IdentifierUnlinked(Aggregate.Event):
        kind: str
        hash: str
        reason: str

    def unlink(self, kind: str, hash_: str, reason: str) -> None:
        self._require_active()
        if not self.has(kind, hash_):
            raise InvalidCustomerData(f"customer {self.id} has no such {kind}")
        self._unlink(kind=kind, hash=hash_, reason=reason)

    @event(IdentifierUnlinked)
    def _unlink(self, kind: str, hash: str, reason: str) -> None:
        del self.identifiers[identifier_key(kind, hash)]

    # -- merge and undo ---------------------------------------------------------------

    class Absorbed(Aggregate.Event):
        merge_id: uuid.UUID
        merged_id: uuid.UUID
        identifiers: list[dict[str, Any]]
        evidence: dict[str, Any]

    def absorb(self, merge_id: uuid.UUID, merged: Customer, evidence: dict[str, Any]) -> list[dict[str, Any]]:
        """Take the merged customer's identifiers; returns those that moved."""
        self._require_active()
        merged._require_active()
        if merged.id == self.id:
            raise CannotMergeWithItself(f"cannot merge customer {self.id} with itself")
        moved = [
            {"kind": i["kind"], "hash": i["hash"], "evidence": i["evidence"]}
            for key, i in sorted(merged.identifiers.items())
            if key not in self.identifiers
        ]
        self._absorb(merge_id=merge_id, merged_id=merged.id, identifiers=moved, evidence=evidence)
        return moved

    @event(Absorbed)
    def _absorb(
        self,
        merge_id: uuid.UUID,
        merged_id: uuid.UUID,
        identifiers: list[dict[str, Any]],
        evidence: dict[str, Any],
    ) -> None:
        for i in identifiers:
            self.identifiers[identifier_key(i["kind"], i["hash"])] = {
                **i,
                "linked_at": evidence.get("at"),
                "via_merge": merge_id.hex,
                "merge_evidence": evidence,
            }
        self.absorbed[merge_id.hex] = merged_id.hex

    class MergedInto(Aggregate.Event):
        merge_id: uuid.UUID
        survivor_id: uuid.UUID

    def merge_into(self, merge_id: uuid.UUID, survivor_id: uuid.UUID) -> None:
        self._require_active()
        if survivor_id == self.id:
            raise CannotMergeWithItself(f"cannot merge customer {self.id} with itself")
        self._merge_into(merge_id=merge_id, survivor_id=survivor_id)

    @event(MergedInto)
    def _merge_into(self, merge_id: uuid.UUID, survivor_id: uuid.UUID) -> None:
        self.status = "merged"
        self.merged_into = survivor_id

    class AbsorptionUndone(Aggregate.Event):
        merge_id: uuid.UUID
        merged_id: uuid.UUID
        identifiers: list[dict[str, Any]]

    def undo_absorption(self, merge_id: uuid.UUID, merged_id: uuid.UUID) -> list[dict[str, Any]]:
        """Give back what ``merge_id`` brought; returns the identifiers given back."""
        self._require_active()
        returned = [
            {"kind": i["kind"], "hash": i["hash"]}
            for i in self.identifiers.values()
            if i.get("via_merge") == merge_id.hex
        ]
        self._undo_absorption(merge_id=merge_id, merged_id=merged_id, identifiers=returned)
        return returned

    @event(AbsorptionUndone)
    def _undo_absorption(
        self, merge_id: uuid.UUID, merged_id: uuid.UUID, identifiers: list[dict[str, Any]]
    ) -> None:
        for i in identifiers:
            self.identifiers.pop(identifier_key(i["kind"], i["hash"]), None)
        self.absorbed.pop(merge_id.hex, None)

    class Restored(Aggregate.Event):
        merge_id: uuid.UUID

    def restore(self, merge_id: uuid.UUID) -> None:
        if self.status != "merged":
            raise CustomerInactive(f"customer {self.id} is {self.status}, not merged")
        self._restore(merge_id=merge_id)

    @event(Restored)
    def _restore(self, merge_id: uuid.UUID) -> None:
        self.status = "active"
        self.merged_into = None

    # -- erasure ----------------------------------------------------------------------

    class Erased(Aggregate.Event):
        reason: str
        identifiers: list[dict[str, Any]]
        at: datetime

    def erase(self, reason: str, at: datetime) -> list[dict[str, Any]]:
        """Forget the person: identifiers are released; the data key is deleted by the
        application, which makes every sealed copy of the personal fields unreadable."""
        if self.status == "erased":
            return []
        tombstoned = [{"kind": i["kind"], "hash": i["hash"]} for i in self.identifiers.values()]
        self._erase(reason=reason, identifiers=tombstoned, at=at)
        return tombstoned

    @event(Erased)
    def _erase(self, reason: str, identifiers: list[dict[str, Any]], at: datetime) -> None:
        self.status = "erased"
        self.personal = {}
        self.identifiers = {}
        self.erased_at = at
