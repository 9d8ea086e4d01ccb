"""The identity application: commands and queries on customers, and every identity
decision (create, link, merge, send to review, undo, erase) recorded as events.

It takes and returns IDs and primitives; infrastructure errors become domain errors
(``AggregateNotFoundError`` → ``CustomerNotFound``, a lost optimistic-concurrency race
→ ``ConcurrentUpdate``). Two entry points decide identity:

* :meth:`register` — a channel registers a person with personal data: exact identifiers
  first (checked against the names, so a family sharing an e-mail stays two people),
  then fuzzy matching of names, birthday and address against blocked candidates.
* :meth:`observe` — the resolver saw identifiers (blind indexes only) on an order, a
  ticket, a form: link, create or merge by the deterministic rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, cast

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from crm_platform.crypto import BlindIndexer
from crm_platform.eventstore import project
from identity.adapters.keystore import DataKeyStore
from identity.adapters.mapper import PersonalDataMapper, personal_data_left_sealed
from identity.adapters.recorders import IndexQueries
from identity.domain.claim import IdentifierClaim, claim_id
from identity.domain.customer import (
    Customer,
    CustomerInactive,
    DomainError,
    InvalidCustomerData,
    new_customer_id,
    priority,
)
from identity.domain.merge import Merge, MergeNotFound, MergeNotUndoable, merge_id_for
from identity.domain.review import (
    IntakeClaim,
    ReviewItem,
    ReviewNotFound,
    intake_claim_id,
    review_id_for,
)
from identity.matching.normalise import (
    address_key,
    kana_name_key,
    kanji_name_key,
    loose_kana_key,
    postal_code_key,
)
from identity.matching.scoring import MatchRecord, Score, same_person_names, score_pair

#: Identifiers that belong to one person (unlike a family e-mail or a home phone).
PERSONAL_KINDS = frozenset({"member_no", "pos_card", "ec_account", "line_id"})


class CustomerNotFound(DomainError):
    def __init__(self, customer_id: uuid.UUID) -> None:
        super().__init__(f"no customer {customer_id}")
        self.customer_id = customer_id


class ConcurrentUpdate(DomainError):
    """Another request changed the same customer or identifier first; retry."""


class NoHolder(DomainError):
    """No active customer holds this identifier alone: a confirmation for it grants nothing."""


class SearchTooBroad(DomainError):
    """A name search matching more customers than it may answer."""

    code = "query_too_broad"


#: Shortest normalised name key a search takes, per column.
NAME_SEARCH_MIN = {"name_kanji_key": 2, "loose_kana_key": 3}


class IdentifierHeldByOther(DomainError):
    def __init__(self, kind: str, owner: uuid.UUID) -> None:
        super().__init__(f"this {kind} belongs to customer {owner}; merge the customers instead")
        self.owner = owner


@dataclass(frozen=True, order=True)
class Ident:
    """An identifier as identity handles it: kind and blind index."""

    kind: str
    hash: str

    @property
    def priority(self) -> int:
        return priority(self.kind)

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "hash": self.hash}


@dataclass(frozen=True)
class Resolution:
    """What an identity decision did."""

    customer_id: uuid.UUID | None
    outcome: str  # created | linked | matched | merged | ambiguous
    merges: tuple[uuid.UUID, ...] = ()
    reviews: tuple[uuid.UUID, ...] = ()
    linked: tuple[Ident, ...] = ()
    #: of the identifiers observed, those the customer holds after the decision (newly
    #: linked or not): what a cache of identifier owners may record for it
    held: tuple[Ident, ...] = ()


@dataclass(frozen=True)
class Thresholds:
    #: Fuzzy score at or above which two records merge without a human.
    auto_merge: float = 0.93
    #: Fuzzy score at or above which (and below auto_merge) a pair goes to review.
    review: float = 0.80
    #: An identifier held by more customers than this is marked shared for good.
    max_owners: int = 5


@dataclass(frozen=True)
class RegisterCustomer:
    channel: str
    #: (kind, normalised clear value) of every identifier the channel observed.
    identifiers: list[tuple[str, str]] = field(default_factory=list)
    #: (kind, value) to keep as the customer's addresses, when not the normalised values
    #: (a LINE id or a push token is case-sensitive where it is used: crm_platform.identifiers.contact_value)
    contacts: list[tuple[str, str]] | None = None
    personal: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    consents: dict[str, bool] = field(default_factory=dict)
    registered_at: datetime | None = None
    decided_by: str | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def merge_contacts(base: Mapping[str, list[str]], extra: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Union of two ``{kind: [clear values]}`` maps, each list sorted."""
    merged = {kind: list(values) for kind, values in base.items()}
    for kind, values in extra.items():
        merged[kind] = sorted(set(merged.get(kind, [])) | set(values))
    return merged


def _birthday(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    return date.fromisoformat(value) if value else None


class IdentityApplication(Application[uuid.UUID]):
    name = "identity"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        indexer: BlindIndexer,
        key_store: Callable[[IdentityApplication], DataKeyStore],
        thresholds: Thresholds = Thresholds(),
    ) -> None:
        env = dict(env or {})
        persistence = env.get("PERSISTENCE_MODULE", "eventsourcing.sqlite")
        env["MAPPER_TOPIC"] = "identity.adapters.mapper:PersonalDataMapper"
        env["APPLICATION_RECORDER_TOPIC"] = (
            "identity.adapters.recorders:IdentityPostgresRecorder"
            if persistence.endswith("postgres")
            else "identity.adapters.recorders:IdentitySQLiteRecorder"
        )
        super().__init__(env=env)
        self.indexer = indexer
        self.thresholds = thresholds
        self._uow: dict[uuid.UUID, Aggregate] | None = None
        #: aggregates known not to exist, within the current unit of work (``prefetch``)
        self._absent: set[uuid.UUID] = set()
        self.keys = key_store(self)
        cast(PersonalDataMapper, self.mapper).keys = self.keys

    @property
    def index(self) -> IndexQueries:
        return cast(IndexQueries, self.recorder)

    # -- loading ------------------------------------------------------------------------

    def _customer(self, customer_id: uuid.UUID, version: int | None = None) -> Customer:
        if version is None and self._uow is not None and customer_id in self._uow:
            return cast(Customer, self._uow[customer_id])
        try:
            return cast(Customer, self.repository.get(customer_id, version=version, projector_func=project))
        except AggregateNotFoundError:
            raise CustomerNotFound(customer_id) from None

    def _maybe(self, aggregate_id: uuid.UUID) -> Any:
        if self._uow is not None:
            if aggregate_id in self._uow:
                return self._uow[aggregate_id]
            if aggregate_id in self._absent:
                return None
        try:
            return self.repository.get(aggregate_id, projector_func=project)
        except AggregateNotFoundError:
            return None

    def _active_root(self, customer: Customer) -> Customer:
        """Follow merges to the customer that holds this one now."""
        seen = {customer.id}
        while customer.status == "merged" and customer.merged_into is not None:
            customer = self._customer(customer.merged_into)
            if customer.id in seen:  # pragma: no cover - a cycle would be a bug
                raise DomainError(f"merge cycle at {customer.id}")
            seen.add(customer.id)
        return customer

    def _claims(self, idents: Iterable[Ident]) -> dict[Ident, IdentifierClaim | None]:
        return {i: self._maybe(claim_id(i.kind, i.hash)) for i in idents}

    # -- saving -------------------------------------------------------------------------

    def _index_row(self, customer: Customer) -> dict[str, Any]:
        p = customer.personal
        return {
            "customer_id": customer.id.hex,
            "status": customer.status,
            "merged_into": customer.merged_into.hex if customer.merged_into else None,
            "name_kanji_key": kanji_name_key(p["name_kanji"]) if p.get("name_kanji") else None,
            "kana_key": kana_name_key(p["name_kana"]) if p.get("name_kana") else None,
            "loose_kana_key": loose_kana_key(p["name_kana"]) if p.get("name_kana") else None,
            "birthday": p.get("birthday"),
            "postal_code": postal_code_key(p["postal_code"]) if p.get("postal_code") else None,
            "address_key": address_key(p["address"]) if p.get("address") else None,
            "prefecture": customer.attributes.get("prefecture"),
            "registered_at": customer.registered_at.isoformat(),
        }

    @contextmanager
    def unit_of_work(self) -> Iterator[None]:
        """Decide several things, then save them in one transaction (one commit instead
        of one per decision). Loads inside see the unit's own changes. If the final save
        loses a race, nothing of the unit is saved and ``ConcurrentUpdate`` is raised:
        the caller redoes the work one decision at a time."""
        if self._uow is not None:
            yield  # nested: the outer unit saves
            return
        self._uow = {}
        try:
            yield
            objs = list(self._uow.values())
            self._uow = None
            if objs:
                self._save(*objs)
        finally:
            self._uow = None
            self._absent.clear()

    def prefetch(self, aggregate_ids: Iterable[uuid.UUID]) -> None:
        """Inside a unit of work: find out in one query which of these aggregates exist,
        so that looking up one that does not costs no query. If one is created by
        another writer meanwhile, saving the unit fails as a concurrent update."""
        if self._uow is None:
            return
        wanted = [i for i in set(aggregate_ids) if i not in self._uow and i not in self._absent]
        if wanted:
            present = self.index.existing(wanted)
            self._absent.update(i for i in wanted if i not in present)

    def prefetch_observations(self, observations: Iterable[Sequence[Ident]]) -> None:
        """``prefetch`` what ``observe`` will look up first for each of these: the claims
        of its identifiers and the customer id a first sighting would take."""
        ids: list[uuid.UUID] = []
        for idents in observations:
            if idents:
                ids += [claim_id(i.kind, i.hash) for i in idents]
                strongest = min(idents, key=lambda i: (i.priority, i.hash))
                ids.append(new_customer_id(strongest.kind, strongest.hash, 0))
        self.prefetch(ids)

    def _save(self, *aggregates: Aggregate | None) -> None:
        if self._uow is not None:
            for a in aggregates:
                if a is not None:
                    self._uow[a.id] = a
            return
        unique: dict[int, Aggregate] = {}
        for a in aggregates:
            if a is not None:
                unique.setdefault(id(a), a)  # aggregates are unhashable; dedupe by identity
        objs = list(unique.values())
        rows = [self._index_row(a) for a in objs if isinstance(a, Customer)]
        try:
            self.save(*objs, index_rows=rows)
        except IntegrityError:
            raise ConcurrentUpdate("a customer or identifier changed concurrently; retry") from None

    # -- registration -------------------------------------------------------------------

    def hash_identifiers(self, pairs: Iterable[tuple[str, str]]) -> list[Ident]:
        return sorted({Ident(kind, self.indexer.index(kind, value)) for kind, value in pairs})

    def register(self, cmd: RegisterCustomer) -> Resolution:
        """Register a person seen by a channel; link or merge with who they already are."""
        at = cmd.registered_at or _now()
        idents = self.hash_identifiers(cmd.identifiers)
        personal = self._personal_with_contacts(cmd)
        if not idents and not personal.get("name_kanji") and not personal.get("name_kana"):
            raise InvalidCustomerData("a customer needs at least a name or one identifier")
        newcomer = self._newcomer(cmd, idents, personal)
        claims = self._claims(idents)
        # Exact identifiers, checked against the names: who is this already?
        matches: dict[uuid.UUID, tuple[Customer, Ident]] = {}
        for ident in sorted(idents, key=lambda i: i.priority):
            claim = claims[ident]
            owner = claim.sole_owner if claim else None
            if owner is None or owner in matches:
                continue
            customer = self._active_root(self._customer(owner))
            if customer.status != "active":
                continue
            if customer.conflicts_with([(i.kind, i.hash) for i in idents]):
                continue  # a different member sharing a weaker identifier
            known = self._match_record(customer)
            if ident.kind in PERSONAL_KINDS:
                # A member number or shop account is one person's: only a different
                # birthday outweighs it (a typo in the reading does not).
                if newcomer.birthday and known.birthday and newcomer.birthday != known.birthday:
                    continue
            elif same_person_names(newcomer, known) is False:
                continue  # a family member sharing an e-mail or a home phone
            matches.setdefault(customer.id, (customer, ident))
        if matches:
            return self._register_known(cmd, at, idents, personal, claims, list(matches.values()))
        return self._register_new(cmd, at, idents, personal, claims, newcomer)

    def _register_new(
        self,
        cmd: RegisterCustomer,
        at: datetime,
        idents: list[Ident],
        personal: dict[str, Any],
        claims: dict[Ident, IdentifierClaim | None],
        newcomer: MatchRecord,
        auto_merge: bool = True,
    ) -> Resolution:
        customer_id = self._new_id(idents, personal, at)
        evidence = {
            "rule": "registration",
            "decided_by": cmd.decided_by,
            "at": at.isoformat(),
            "channel": cmd.channel,
        }
        customer = Customer.register(
            customer_id=customer_id,
            channel=cmd.channel,
            personal=personal,
            attributes=cmd.attributes,
            identifiers=[{**i.as_dict(), "evidence": evidence} for i in idents],
            consents=cmd.consents,
            registered_at=at,
        )
        changed_claims = [self._claim(claims, i, customer.id, evidence) for i in idents]
        # Fuzzy: is this newcomer someone we know under other identifiers?
        best = self._best_candidate(newcomer, exclude={customer.id.hex})
        merges: tuple[uuid.UUID, ...] = ()
        reviews: tuple[uuid.UUID, ...] = ()
        outcome = "created"
        to_save: list[Aggregate | None] = [customer, *changed_claims]
        if best is not None:
            candidate, score = best
            if score.value >= self.thresholds.auto_merge and auto_merge:
                survivor = self._customer(candidate)
                fuzzy = self._fuzzy_evidence(score, at, cmd.decided_by)
                merge, claim_changes = self._merge_objects(survivor, customer, fuzzy, claims)
                to_save = [customer, survivor, merge, *claim_changes]
                merges, outcome = (merge.id,), "merged"
                customer_id = survivor.id
            elif score.value >= self.thresholds.review:
                review = self._open_review(customer.id, candidate, score, at)
                if review is not None:
                    to_save.append(review)
                    reviews = (review.id,)
        self._save(*to_save)
        return Resolution(customer_id, outcome, merges, reviews, tuple(idents))

    def intake(self, cmd: RegisterCustomer, source_key: str, source: Mapping[str, Any]) -> Resolution:
        """Register a person from an unverified public source (a web form anyone may
        submit, no key of the person's own): whoever presents an e-mail address need
        not be the person who holds it.

        * No identifier held by anyone: a new customer, as :meth:`register` creates one
          — but a fuzzy match only opens a review (never an automatic merge) and no
          consent is applied (a public form's consent needs double opt-in:
          :meth:`confirm_consent`).
        * Any identifier held by an existing customer: that customer is the answer and
          **nothing changes** on it or on anyone — no link, no merge, no profile, no
          consent. Identifiers nobody holds are filed as an :class:`IntakeClaim` for
          review; other customers whose identifiers came along are filed as a review
          pair with it (``rule: public-intake``).

        ``source_key`` names the submission (a retry files the same claims again,
        which changes nothing); ``source`` is kept as evidence (form id, submission id).
        ``held`` in the answer: the identifiers presented that the answered customer holds.
        """
        at = cmd.registered_at or _now()
        idents = self.hash_identifiers(cmd.identifiers)
        if not idents:
            raise InvalidCustomerData("a public intake needs at least one identifier")
        claims = self._claims(idents)
        owners: dict[uuid.UUID, Customer] = {}
        unknown: list[Ident] = []
        for ident in sorted(idents, key=lambda i: (i.priority, i.hash)):
            claim = claims[ident]
            if claim is None or not claim.owners:
                unknown.append(ident)
                continue
            for owner in claim.owners:  # a shared identifier: each holder counts
                root = self._active_root(self._customer(uuid.UUID(owner)))
                owners.setdefault(root.id, root)
        active = [c for c in owners.values() if c.status == "active"]
        if not owners:
            safe = RegisterCustomer(
                channel=cmd.channel,
                identifiers=cmd.identifiers,
                contacts=cmd.contacts,
                personal=cmd.personal,
                attributes=cmd.attributes,
                consents={},
                registered_at=at,
                decided_by=cmd.decided_by,
            )
            personal = self._personal_with_contacts(safe)
            return self._register_new(
                safe, at, idents, personal, claims, self._newcomer(safe, idents, personal), auto_merge=False
            )
        if not active:
            # Only erased (or otherwise inactive) holders: nobody to answer for, nothing to file.
            return Resolution(None, "ambiguous")
        primary = active[0]
        evidence = {
            "rule": "public-intake",
            "channel": cmd.channel,
            "decided_by": cmd.decided_by,
            "at": at.isoformat(),
            "source": dict(source),
            "presented": sorted({i.kind for i in idents}),
        }
        to_save: list[Aggregate | None] = []
        reviews: list[uuid.UUID] = []
        for other in active[1:]:
            existing = self._maybe(review_id_for(primary.id, other.id))
            if existing is None:
                pair = ReviewItem.open(primary.id, other.id, 0.0, evidence)
                to_save.append(pair)
                reviews.append(pair.id)
            elif isinstance(existing, ReviewItem) and existing.status == "open":
                reviews.append(existing.id)
        if unknown:
            identifiers = [i.as_dict() for i in unknown]
            found = self._maybe(intake_claim_id(primary.id, source_key, identifiers))
            if found is None:
                filed = IntakeClaim.open(primary.id, source_key, identifiers, evidence)
                to_save.append(filed)
                reviews.append(filed.id)
            elif isinstance(found, IntakeClaim) and found.status == "open":
                reviews.append(found.id)  # a retry: filed already
        if to_save:
            self._save(*to_save)
        held = tuple(i for i in idents if primary.has(i.kind, i.hash))
        return Resolution(primary.id, "matched", (), tuple(reviews), (), held)

    def _personal_with_contacts(self, cmd: RegisterCustomer) -> dict[str, Any]:
        personal = dict(cmd.personal)
        contacts: dict[str, list[str]] = {}
        for kind, value in cmd.identifiers if cmd.contacts is None else cmd.contacts:
            contacts.setdefault(kind, [])
            if value not in contacts[kind]:
                contacts[kind].append(value)
        if contacts:
            personal["contacts"] = contacts
        return personal

    @staticmethod
    def _newcomer(cmd: RegisterCustomer, idents: list[Ident], personal: dict[str, Any]) -> MatchRecord:
        return MatchRecord(
            customer_id="",
            name_kanji=personal.get("name_kanji"),
            name_kana=personal.get("name_kana"),
            birthday=_birthday(personal.get("birthday")),
            postal_code=personal.get("postal_code"),
            address=personal.get("address"),
            prefecture=cmd.attributes.get("prefecture"),
            contact_hashes=frozenset(i.hash for i in idents if i.kind in ("email", "phone")),
        )

    def confirm_consent(
        self, kind: str, hash_: str, channel: str, proof: dict[str, Any]
    ) -> tuple[uuid.UUID, int]:
        """Grant ``channel`` consent confirmed by double opt-in to the one active
        customer holding the identifier (kind, blind index) the confirmation was sent to,
        with its proof. ``NoHolder`` when nobody (or more than one customer) holds it:
        an address filed only as a claim proves nothing about anyone's profile."""
        claim = self._maybe(claim_id(kind, hash_))
        owner = claim.sole_owner if isinstance(claim, IdentifierClaim) else None
        if owner is None:
            raise NoHolder(f"no single customer holds this {kind}")
        customer = self._active_root(self._customer(owner))
        if customer.status != "active":
            raise NoHolder(f"no active customer holds this {kind}")
        at = datetime.fromisoformat(str(proof["confirmed_at"]))
        if customer.confirm_consent(channel, at, proof):
            self._save(customer)
        return customer.id, customer.version

    def _register_known(
        self,
        cmd: RegisterCustomer,
        at: datetime,
        idents: list[Ident],
        personal: dict[str, Any],
        claims: dict[Ident, IdentifierClaim | None],
        matches: list[tuple[Customer, Ident]],
    ) -> Resolution:
        survivor, via = matches[0]
        evidence = {
            "rule": f"exact:{via.kind}",
            "matched_fields": [via.kind],
            "decided_by": cmd.decided_by,
            "at": at.isoformat(),
            "channel": cmd.channel,
        }
        to_save: list[Aggregate | None] = [survivor]
        merges = []
        for other, other_via in matches[1:]:
            merge, claim_changes = self._merge_objects(
                survivor, other, {**evidence, "rule": f"exact:{via.kind}+{other_via.kind}"}, claims
            )
            merges.append(merge.id)
            to_save += [other, merge, *claim_changes]
        linked = []
        for ident in idents:
            if not survivor.has(ident.kind, ident.hash) and not survivor.conflicts_with(
                [(ident.kind, ident.hash)]
            ):
                survivor.link(ident.kind, ident.hash, evidence)
                linked.append(ident)
            to_save.append(self._claim(claims, ident, survivor.id, evidence))
        # What the channel knows and we do not (a kana reading, a birthday) fills gaps.
        missing = {k: v for k, v in personal.items() if k != "contacts" and not survivor.personal.get(k)}
        contacts = merge_contacts(survivor.personal.get("contacts", {}), personal.get("contacts", {}))
        if contacts != survivor.personal.get("contacts", {}):
            missing["contacts"] = contacts
        attributes = {k: v for k, v in cmd.attributes.items() if k not in survivor.attributes}
        if missing or attributes:
            survivor.change_profile(missing, attributes)
        for channel, granted in cmd.consents.items():
            survivor.change_consent(channel, granted, at)
        reviews: tuple[uuid.UUID, ...] = ()
        if missing:
            # What we just learnt (an address, a birthday) may reveal another record of
            # this person: score again.
            involved = {c.id.hex for c, _ in matches}
            extra, reviews = self._rescore(survivor, claims, at, cmd.decided_by, involved)
            to_save += extra
            merges += [a.id for a in extra if isinstance(a, Merge)]
        self._save(*to_save)
        outcome = "merged" if merges else ("linked" if linked else "matched")
        return Resolution(survivor.id, outcome, tuple(merges), reviews, tuple(linked))

    def _rescore(
        self,
        survivor: Customer,
        claims: dict[Ident, IdentifierClaim | None],
        at: datetime,
        decided_by: str | None,
        involved: set[str],
    ) -> tuple[list[Aggregate], tuple[uuid.UUID, ...]]:
        best = self._best_candidate(self._match_record(survivor), exclude=involved | {survivor.id.hex})
        if best is None:
            return [], ()
        candidate, score = best
        if score.value >= self.thresholds.auto_merge:
            other = self._customer(candidate)
            first = min((survivor, other), key=lambda c: (c.registered_at, c.id.hex))
            if first is not survivor:
                return [], ()  # merging the survivor away mid-command is left to the next pass
            merge, claim_changes = self._merge_objects(
                survivor, other, self._fuzzy_evidence(score, at, decided_by), claims
            )
            return [other, merge, *claim_changes], ()
        if score.value >= self.thresholds.review:
            review = self._open_review(survivor.id, candidate, score, at)
            if review is not None:
                return [review], (review.id,)
        return [], ()

    def _new_id(self, idents: list[Ident], personal: dict[str, Any], at: datetime) -> uuid.UUID:
        if not idents:
            names = f"{personal.get('name_kanji')}|{personal.get('name_kana')}"
            seed = f"{names}|{personal.get('birthday')}|{at.isoformat()}"
            return new_customer_id("anonymous", seed)
        strongest = min(idents, key=lambda i: (i.priority, i.hash))
        for attempt in range(100):
            candidate = new_customer_id(strongest.kind, strongest.hash, attempt)
            if self._maybe(candidate) is None:
                return candidate
        raise DomainError("could not allocate a customer id")  # pragma: no cover

    def _claim(
        self,
        claims: dict[Ident, IdentifierClaim | None],
        ident: Ident,
        owner: uuid.UUID,
        evidence: dict[str, Any],
    ) -> IdentifierClaim:
        claim = claims.get(ident)
        if claim is None:
            claim = IdentifierClaim.open(ident.kind, ident.hash)
            claims[ident] = claim
        claim.claim(owner, evidence, self.thresholds.max_owners)
        return claim

    # -- fuzzy matching -----------------------------------------------------------------

    def _match_record(self, customer: Customer) -> MatchRecord:
        p = customer.personal
        return MatchRecord(
            customer_id=customer.id.hex,
            name_kanji=p.get("name_kanji"),
            name_kana=p.get("name_kana"),
            birthday=_birthday(p.get("birthday")),
            postal_code=p.get("postal_code"),
            address=p.get("address"),
            prefecture=customer.attributes.get("prefecture"),
            contact_hashes=frozenset(
                i["hash"] for i in customer.identifiers.values() if i["kind"] in ("email", "phone")
            ),
        )

    def _candidates(self, record: MatchRecord, exclude: set[str]) -> list[str]:
        """Blocking: only customers sharing a reading, a birthday or a postal code with
        the same family-name start are scored, never the whole base."""
        loose = loose_kana_key(record.name_kana) if record.name_kana else None
        kanji = kanji_name_key(record.name_kanji) if record.name_kanji else None
        clauses, params = [], []
        if loose:
            clauses.append("loose_kana_key = ?")
            params.append(loose)
        if record.birthday and loose:
            clauses.append("(birthday = ? AND substr(loose_kana_key, 1, 2) = ?)")
            params += [record.birthday.isoformat(), loose[:2]]
        if record.birthday and kanji:
            clauses.append("(birthday = ? AND substr(name_kanji_key, 1, 1) = ?)")
            params += [record.birthday.isoformat(), kanji[:1]]
        postal = postal_code_key(record.postal_code) if record.postal_code else None
        if postal and (loose or kanji):
            clauses.append(
                "(postal_code = ? AND (substr(loose_kana_key, 1, 2) = ? OR substr(name_kanji_key, 1, 1) = ?))"
            )
            params += [postal, (loose or "")[:2], (kanji or "")[:1]]
        if kanji:
            clauses.append("name_kanji_key = ?")
            params.append(kanji)
        if not clauses:
            return []
        rows = self.index.query_index(f"status = 'active' AND ({' OR '.join(clauses)})", params, limit=50)
        return [r["customer_id"] for r in rows if r["customer_id"] not in exclude]

    def _best_candidate(self, record: MatchRecord, exclude: set[str]) -> tuple[uuid.UUID, Score] | None:
        """The best-scoring candidate. When two different customers both score for an
        automatic merge, the record is ambiguous (a parent and child of one name at one
        address): the best is capped into the review band instead."""
        scored: list[tuple[uuid.UUID, Score]] = []
        for hex_id in self._candidates(record, exclude):
            other = self._customer(uuid.UUID(hex_id))
            if other.status != "active":
                continue
            review = (
                self._maybe(review_id_for(other.id, uuid.UUID(record.customer_id)))
                if record.customer_id
                else None
            )
            if review is not None and review.status == "rejected":
                continue  # a human said these are two people
            scored.append((other.id, score_pair(record, self._match_record(other))))
        if not scored:
            return None
        scored.sort(key=lambda pair: pair[1].value, reverse=True)
        best = scored[0]
        if len(scored) > 1 and scored[1][1].value >= self.thresholds.auto_merge:
            capped = Score(self.thresholds.review, best[1].matched, (*best[1].conflicting, "ambiguous"))
            return best[0], capped
        return best

    @staticmethod
    def _fuzzy_evidence(score: Score, at: datetime, decided_by: str | None) -> dict[str, Any]:
        return {
            "rule": "fuzzy",
            "score": score.value,
            "matched_fields": list(score.matched),
            "conflicting_fields": list(score.conflicting),
            "decided_by": decided_by,
            "at": at.isoformat(),
        }

    def _open_review(self, a: uuid.UUID, b: uuid.UUID, score: Score, at: datetime) -> ReviewItem | None:
        if self._maybe(review_id_for(a, b)) is not None:
            return None
        return ReviewItem.open(a, b, score.value, self._fuzzy_evidence(score, at, "matcher"))

    # -- observations from other services -----------------------------------------------

    def observe(
        self, idents: Sequence[Ident], channel: str = "store", source: str | None = None
    ) -> Resolution:
        """Decide who an observation (identifiers only, no personal data) belongs to."""
        idents = sorted(set(idents), key=lambda i: (i.priority, i.hash))
        if not idents:
            return Resolution(None, "ambiguous")
        at = _now()
        claims = self._claims(idents)
        owners: dict[uuid.UUID, Customer] = {}
        unknown: list[Ident] = []
        for ident in idents:
            claim = claims[ident]
            if claim is None or not claim.owners:
                unknown.append(ident)
                continue
            owner = claim.sole_owner
            if owner is not None and owner not in owners:
                root = self._active_root(self._customer(owner))
                if root.status == "active":
                    owners[root.id] = root
        evidence = {
            "rule": "",
            "decided_by": "resolver",
            "at": at.isoformat(),
            "source": source,
            "channel": channel,
        }
        pairs = [(i.kind, i.hash) for i in idents]
        compatible = [c for c in owners.values() if not c.conflicts_with(pairs)]
        if not compatible:
            if not unknown:
                return Resolution(None, "ambiguous")
            return self._observe_new(unknown, claims, evidence, channel, at)
        survivor = min(compatible, key=lambda c: self._strength(c, idents))
        to_save: list[Aggregate | None] = [survivor]
        merges = []
        for other in compatible:
            if other.id == survivor.id or other.conflicts_with(
                [(i["kind"], i["hash"]) for i in survivor.identifiers.values()]
            ):
                continue
            if same_person_names(self._match_record(survivor), self._match_record(other)) is False:
                continue
            merge, claim_changes = self._merge_objects(
                survivor, other, {**evidence, "rule": "exact:co-observed"}, claims
            )
            merges.append(merge.id)
            to_save += [other, merge, *claim_changes]
        linked = []
        strongest_known = min(
            (i for i in idents if survivor.has(i.kind, i.hash)), key=lambda i: i.priority, default=None
        )
        link_evidence = {
            **evidence,
            "rule": f"exact:co-observed-with-{strongest_known.kind if strongest_known else 'merge'}",
            "matched_fields": [strongest_known.kind] if strongest_known else [],
        }
        for ident in unknown:
            if survivor.conflicts_with([(ident.kind, ident.hash)]):
                continue
            survivor.link(ident.kind, ident.hash, link_evidence)
            to_save.append(self._claim(claims, ident, survivor.id, link_evidence))
            linked.append(ident)
        held = tuple(i for i in idents if survivor.has(i.kind, i.hash))
        if len(to_save) == 1 and not survivor.pending_events:
            return Resolution(survivor.id, "matched", held=held)
        self._save(*to_save)
        outcome = "merged" if merges else ("linked" if linked else "matched")
        return Resolution(survivor.id, outcome, tuple(merges), (), tuple(linked), held)

    @staticmethod
    def _strength(customer: Customer, idents: Sequence[Ident]) -> tuple[int, str]:
        held = [i.priority for i in idents if customer.has(i.kind, i.hash)]
        return (min(held) if held else 99, customer.registered_at.isoformat() + customer.id.hex)

    def _observe_new(
        self,
        unknown: list[Ident],
        claims: dict[Ident, IdentifierClaim | None],
        evidence: dict[str, Any],
        channel: str,
        at: datetime,
    ) -> Resolution:
        evidence = {**evidence, "rule": "first-seen"}
        customer = Customer.register(
            customer_id=self._new_id(unknown, {}, at),
            channel=channel if channel in ("store", "online", "app", "form", "call_center") else "import",
            personal={},
            attributes={},
            identifiers=[{**i.as_dict(), "evidence": evidence} for i in unknown],
            consents={},
            registered_at=at,
        )
        changed = [self._claim(claims, i, customer.id, evidence) for i in unknown]
        self._save(customer, *changed)
        return Resolution(customer.id, "created", linked=tuple(unknown), held=tuple(unknown))

    # -- merge and undo ---------------------------------------------------------------

    def _merge_objects(
        self,
        survivor: Customer,
        merged: Customer,
        evidence: dict[str, Any],
        claims: dict[Ident, IdentifierClaim | None] | None = None,
    ) -> tuple[Merge, list[IdentifierClaim]]:
        """Merge in memory; the caller saves. ``claims`` holds the claim objects the
        caller already loaded, so one save never carries two copies of one claim."""
        claims = {} if claims is None else claims
        merge_id = merge_id_for(survivor.id, merged.id, merged.version)
        moved = survivor.absorb(merge_id, merged, evidence)
        merged.merge_into(merge_id, survivor.id)
        changed = []
        for i in merged.identifiers.values():
            ident = Ident(i["kind"], i["hash"])
            if ident not in claims:
                claims[ident] = self._maybe(claim_id(ident.kind, ident.hash))
            claim = claims[ident]
            if claim is None:
                continue
            claim.release(merged.id, f"merged into {survivor.id}")
            claim.claim(survivor.id, evidence, self.thresholds.max_owners)
            changed.append(claim)
        return Merge.record(merge_id, survivor.id, merged.id, moved, evidence), changed

    def merge(
        self, survivor_id: uuid.UUID, merged_id: uuid.UUID, *, decided_by: str, reason: str = "staff request"
    ) -> uuid.UUID:
        """Merge ``merged_id`` into ``survivor_id`` (a staff decision); returns the merge id."""
        if survivor_id == merged_id:
            from identity.domain.customer import CannotMergeWithItself

            raise CannotMergeWithItself(f"cannot merge customer {survivor_id} with itself")
        survivor, merged = self._customer(survivor_id), self._customer(merged_id)
        evidence = {"rule": "staff", "decided_by": decided_by, "reason": reason, "at": _now().isoformat()}
        merge, claims = self._merge_objects(survivor, merged, evidence)
        self._save(survivor, merged, merge, *claims)
        return merge.id

    def undo_merge(self, merge_id: uuid.UUID, *, reason: str, undone_by: str | None) -> Resolution:
        """Give the merged customer back everything it had; later events follow its identifiers."""
        merge = self._maybe(merge_id)
        if not isinstance(merge, Merge):
            raise MergeNotFound(f"no merge {merge_id}")
        survivor, merged = self._customer(merge.survivor_id), self._customer(merge.merged_id)
        if merge.undone is None and survivor.status != "active":
            raise MergeNotUndoable(
                f"customer {survivor.id} is {survivor.status} since; undo the later merge first"
            )
        merge.undo(reason, undone_by, [])  # raises MergeAlreadyUndone
        returned = survivor.undo_absorption(merge.id, merged.id)
        merged.restore(merge.id)
        at = _now()
        changed = []
        for i in merged.identifiers.values():
            claim = self._maybe(claim_id(i["kind"], i["hash"]))
            if claim is None:
                continue
            if not survivor.has(i["kind"], i["hash"]):
                claim.release(survivor.id, f"merge {merge.id} undone")
            claim.claim(
                merged.id,
                {"rule": "merge-undone", "at": at.isoformat(), "decided_by": undone_by},
                self.thresholds.max_owners,
            )
            changed.append(claim)
        self._save(survivor, merged, merge, *changed)
        return Resolution(
            merged.id, "restored", (merge.id,), linked=tuple(Ident(i["kind"], i["hash"]) for i in returned)
        )

    # -- review queue -------------------------------------------------------------------

    def list_reviews(
        self, status: str = "open", *, after: int = 0, limit: int = 1_000_000
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The review queue, oldest first: up to ``limit`` items of ``status`` opened after
        store position ``after``, and the position to continue from (``None`` when there
        are no more). Positions are the notification ids of the ``Opened`` events, which
        only grow, so an item opened meanwhile comes after every page already read."""
        reviews: list[dict[str, Any]] = []
        position = after
        batch = max(100, min(limit + 1, 1_000))
        while True:
            notifications = self.recorder.select_notifications(
                start=position + 1,
                limit=batch,
                topics=[_topic(ReviewItem.Opened), _topic(IntakeClaim.Opened)],
            )
            for notification in notifications:
                item = self._maybe(cast(uuid.UUID, notification.originator_id))
                if isinstance(item, ReviewItem | IntakeClaim) and status in ("all", item.status):
                    if len(reviews) == limit:  # one more exists: the caller goes on from here
                        return reviews, position
                    reviews.append(_review_view(item))
                position = notification.id
            if len(notifications) < batch:
                return reviews, None

    def _review(self, review_id: uuid.UUID) -> ReviewItem | IntakeClaim:
        item = self._maybe(review_id)
        if not isinstance(item, ReviewItem | IntakeClaim):
            raise ReviewNotFound(f"no review {review_id}")
        return item

    def approve_review(self, review_id: uuid.UUID, *, decided_by: str) -> uuid.UUID | None:
        """A pair: merge them (returns the merge id). An intake claim: link its
        identifiers that nobody holds by now to the customer (returns None)."""
        item = self._review(review_id)
        if isinstance(item, IntakeClaim):
            self._approve_claim(item, decided_by)
            return None
        a = self._active_root(self._customer(item.customer_a))
        b = self._active_root(self._customer(item.customer_b))
        if a.id == b.id:
            raise InvalidCustomerData("these customers were merged already")
        survivor, merged = sorted((a, b), key=lambda c: (c.registered_at, c.id.hex))
        evidence = {**item.evidence, "rule": "review", "decided_by": decided_by, "at": _now().isoformat()}
        merge, claims = self._merge_objects(survivor, merged, evidence)
        item.approve(decided_by, merge.id)
        self._save(survivor, merged, merge, item, *claims)
        return merge.id

    def _approve_claim(self, item: IntakeClaim, decided_by: str) -> None:
        customer = self._active_root(self._customer(item.customer_id))
        if customer.status != "active":
            raise CustomerInactive(f"customer {customer.id} is {customer.status}")
        evidence = {
            "rule": "review:public-intake",
            "decided_by": decided_by,
            "at": _now().isoformat(),
            "review_id": item.id.hex,
        }
        idents = [Ident(i["kind"], i["hash"]) for i in item.identifiers]
        claims = self._claims(idents)
        linked, changed = [], []
        for ident in idents:
            claim = claims[ident]
            if (claim is not None and claim.owners) or customer.conflicts_with([(ident.kind, ident.hash)]):
                continue  # someone holds it by now, or it contradicts the customer's own
            customer.link(ident.kind, ident.hash, evidence)
            changed.append(self._claim(claims, ident, customer.id, evidence))
            linked.append(ident.as_dict())
        item.approve(decided_by, linked)
        self._save(customer, item, *changed)

    def reject_review(self, review_id: uuid.UUID, *, decided_by: str, reason: str) -> None:
        item = self._review(review_id)
        item.reject(decided_by, reason)
        self._save(item)

    # -- profile changes ----------------------------------------------------------------

    def update_profile(
        self,
        customer_id: uuid.UUID,
        personal: dict[str, Any],
        attributes: dict[str, Any],
        expected_version: int | None = None,
    ) -> int:
        customer = self._customer(customer_id)
        customer.check_version(expected_version)
        customer.change_profile(personal, attributes)
        self._save(customer)
        return customer.version

    def change_consent(
        self, customer_id: uuid.UUID, channel: str, granted: bool, at: datetime | None = None
    ) -> int:
        customer = self._active_root(self._customer(customer_id))
        customer.change_consent(channel, granted, at or _now())
        self._save(customer)
        return customer.version

    def add_identifier(
        self,
        customer_id: uuid.UUID,
        kind: str,
        value: str,
        *,
        decided_by: str,
        expected_version: int | None = None,
        contact: str | None = None,
    ) -> Ident:
        """``value`` normalised; ``contact`` the address to keep when it differs from it
        (crm_platform.identifiers.contact_value)."""
        customer = self._customer(customer_id)
        customer.check_version(expected_version)
        if customer.status != "active":
            raise CustomerInactive(f"customer {customer_id} is {customer.status}")
        ident = self.hash_identifiers([(kind, value)])[0]
        claims = self._claims([ident])
        claim = claims[ident]
        owner = claim.sole_owner if claim else None
        if owner is not None and owner != customer.id:
            raise IdentifierHeldByOther(kind, owner)
        evidence = {"rule": "staff", "decided_by": decided_by, "at": _now().isoformat()}
        customer.link(ident.kind, ident.hash, evidence)
        contacts = merge_contacts(customer.personal.get("contacts", {}), {kind: [contact or value]})
        customer.change_profile({"contacts": contacts}, {})
        self._save(customer, self._claim(claims, ident, customer.id, evidence))
        return ident

    def remove_identifier(
        self,
        customer_id: uuid.UUID,
        kind: str,
        hash_: str,
        *,
        reason: str,
        expected_version: int | None = None,
    ) -> None:
        customer = self._customer(customer_id)
        customer.check_version(expected_version)
        customer.unlink(kind, hash_, reason)
        claim = self._maybe(claim_id(kind, hash_))
        if claim is not None:
            claim.release(customer.id, reason)
        self._save(customer, claim)

    # -- erasure ------------------------------------------------------------------------

    def erase(self, customer_id: uuid.UUID, *, reason: str) -> list[uuid.UUID]:
        """Erase a person: the customer, everyone merged into it, their keys and claims."""
        root = self._active_root(self._customer(customer_id))
        people = [root, *self._absorbed_tree(root)]
        at = _now()
        to_save: list[Aggregate | None] = []
        for person in people:
            for i in person.erase(reason, at) if person.status != "erased" else []:
                claim = self._maybe(claim_id(i["kind"], i["hash"]))
                if claim is not None:
                    claim.release(person.id, "erased")
                    to_save.append(claim)
            to_save.append(person)
        self._save(*to_save)
        for person in people:
            self.keys.erase(person.id)
        # The erased keys' bytes leave the store's files (WAL checkpoint / VACUUM FULL).
        self.keys.purge()
        return [p.id for p in people]

    def _absorbed_tree(self, customer: Customer) -> list[Customer]:
        out = []
        for merged_hex in customer.absorbed.values():
            merged = self._customer(uuid.UUID(merged_hex))
            out += [merged, *self._absorbed_tree(merged)]
        return out

    # -- queries ------------------------------------------------------------------------

    def version_at(self, aggregate_id: uuid.UUID, as_of: datetime) -> int | None:
        version = None
        for stored in self.recorder.select_events(aggregate_id):
            event: Any = self.mapper.to_domain_event(stored)
            if event.timestamp > as_of:
                break
            version = event.originator_version
        return version

    def _read_customer(self, customer_id: uuid.UUID, as_of: datetime | None = None) -> Customer | None:
        """The customer now or, with ``as_of``, as it was then (None: it did not exist).

        Read-only, straight from the store (never from a cache: another process may have
        written since, and what is read may have its personal data left sealed), in one
        query, each stored event decoded and its personal data opened once: ``version_at``
        then ``_customer(…, version)`` read and opened them twice.
        """
        if as_of is None and self._uow is not None and customer_id in self._uow:
            return cast(Customer, self._uow[customer_id])
        customer: Any = None
        for stored in self.recorder.select_events(customer_id):
            event: Any = self.mapper.to_domain_event(stored)
            if as_of is not None and event.timestamp > as_of:
                break
            # Not eventsourcing's projector: it asserts every event against a runtime
            # Protocol, which walks the protocol's members (a sixth of a profile read).
            customer = event.mutate(customer)
        return cast(Customer | None, customer)

    def get_customer(
        self, customer_id: uuid.UUID, as_of: datetime | None = None, *, personal_data: bool = True
    ) -> dict[str, Any]:
        """The unified profile: the customer with what its merged records contribute.

        ``personal_data=False`` (a reader without ``identity:pii``): ``personal`` is None,
        and none of the sealed personal fields is opened to build it."""
        with nullcontext() if personal_data else personal_data_left_sealed():
            customer = self._read_customer(customer_id, as_of)
            if customer is None:
                raise CustomerNotFound(customer_id)
            absorbed = self._absorbed_as_of(customer, as_of)
        personal = dict(customer.personal)
        attributes = dict(customer.attributes)
        consents = dict(customer.consents)
        for other in absorbed:
            for k, v in other.personal.items():
                if k == "contacts":
                    personal["contacts"] = merge_contacts(personal.get("contacts", {}), v)
                elif not personal.get(k):
                    personal[k] = v
            for k, v in other.attributes.items():
                attributes.setdefault(k, v)
            for ch, consent in other.consents.items():
                if ch not in consents or consent["at"] > consents[ch]["at"]:
                    consents[ch] = consent
        return {
            "customer_id": customer.id,
            "version": customer.version,
            "status": customer.status,
            "merged_into": customer.merged_into,
            "merged_ids": [o.id for o in absorbed],
            "channel": customer.channel,
            "personal": personal if personal_data else None,
            "attributes": attributes,
            "consents": consents,
            "identifiers": sorted(
                ({"kind": i["kind"], "hash": i["hash"]} for i in customer.identifiers.values()),
                key=lambda i: (priority(i["kind"]), i["hash"]),
            ),
            "registered_at": customer.registered_at,
            "as_of": as_of,
        }

    def _absorbed_as_of(self, customer: Customer, as_of: datetime | None) -> list[Customer]:
        out = []
        for merged_hex in customer.absorbed.values():
            merged_id = uuid.UUID(merged_hex)
            merged = self._read_customer(merged_id, as_of)
            if merged is None and as_of is not None:
                # Not there yet at ``as_of`` (clock skew between writers): as it is now,
                # as this has always read it.
                merged = self._read_customer(merged_id)
            if merged is None:
                raise CustomerNotFound(merged_id)
            out += [merged, *self._absorbed_as_of(merged, as_of)]
        return out

    def identifiers_of(self, customer_id: uuid.UUID) -> list[dict[str, Any]]:
        """Each linked identifier with why it is linked (rule, score, fields, who, when)."""
        customer = self._customer(customer_id)
        clear = self._clear_values(customer)
        out = []
        for i in sorted(customer.identifiers.values(), key=lambda i: (priority(i["kind"]), i["hash"])):
            claim = self._maybe(claim_id(i["kind"], i["hash"]))
            out.append(
                {
                    "kind": i["kind"],
                    "hash": i["hash"],
                    "value": clear.get((i["kind"], i["hash"])),
                    "linked_at": i.get("linked_at"),
                    "evidence": i.get("evidence") or {},
                    "via_merge": i.get("via_merge"),
                    "merge_evidence": i.get("merge_evidence"),
                    "shared": bool(claim and (claim.shared or len(claim.owners) > 1)),
                }
            )
        return out

    def _clear_values(self, customer: Customer) -> dict[tuple[str, str], str]:
        contacts: dict[str, list[str]] = {}
        for person in [customer, *self._absorbed_as_of(customer, None)]:
            for kind, values in person.personal.get("contacts", {}).items():
                contacts.setdefault(kind, []).extend(values)
        return {
            (kind, self.indexer.index(kind, value)): value
            for kind, values in contacts.items()
            for value in values
        }

    def resolve(self, idents: Sequence[Ident]) -> uuid.UUID | None:
        """The active customer the strongest unambiguous identifier points at."""
        for ident in sorted(idents, key=lambda i: i.priority):
            claim = self._maybe(claim_id(ident.kind, ident.hash))
            owner = claim.sole_owner if claim else None
            if owner is not None:
                root = self._active_root(self._customer(owner))
                if root.status == "active":
                    return root.id
        return None

    def search_by_identifier(self, kind: str, value: str) -> list[uuid.UUID]:
        ident = self.hash_identifiers([(kind, value)])[0]
        claim = self._maybe(claim_id(ident.kind, ident.hash))
        owners = [uuid.UUID(o) for o in claim.owners] if claim else []
        roots = {self._active_root(self._customer(o)).id for o in owners}
        return sorted(roots)

    def name_search_key(self, query: str) -> tuple[str, str]:
        """The normalised key a name query is searched on: (column, key). Kanji search the
        kanji key; kana and romaji the loose kana key (long vowels, small kana folded)."""
        text = query.strip()
        has_kanji = any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in text)
        if has_kanji:
            return "name_kanji_key", kanji_name_key(text)
        return "loose_kana_key", loose_kana_key(text) if text else ""

    def search_by_name(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Active customers whose normalised name **starts with** the query's key, at
        most ``limit``; more than that raises ``SearchTooBroad`` (nothing answered), so
        a short prefix cannot page through the customer base. The key must be at least
        ``NAME_SEARCH_MIN`` characters (two kanji, three kana) — checked by the caller."""
        column, key = self.name_search_key(query)
        if not key:
            return []
        escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self.index.query_index(
            f"status = 'active' AND {column} LIKE ? ESCAPE '\\'", [f"{escaped}%"], limit + 1
        )
        if len(rows) > limit:
            raise SearchTooBroad(
                f"more than {limit} customers match: give more of the name (or an identifier)"
            )
        return rows

    def rebuild_index(self, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
        """Recompute the match index from the log (after a rule or normaliser change).

        One pass over the store's notification log: every customer event is decoded once
        and applied to its customer, then the index is written in chunks. Returns
        ``(customers, events read)``."""
        prefix = _topic(Customer) + "."
        customers: dict[uuid.UUID, Any] = {}
        events = 0
        start = 1
        while True:
            batch = self.recorder.select_notifications(start=start, limit=5000)
            if not batch:
                break
            for stored in batch:
                events += 1
                if stored.topic.startswith(prefix):
                    event: Any = self.mapper.to_domain_event(stored)
                    originator = cast(uuid.UUID, stored.originator_id)
                    customers[originator] = event.mutate(customers.get(originator))
            start = batch[-1].id + 1
            if progress:
                progress(events)
        self.index.clear_index()
        rows = [self._index_row(c) for c in customers.values() if c is not None]
        for i in range(0, len(rows), 1000):
            self.recorder.insert_events([], index_rows=rows[i : i + 1000])
        return len(rows), events


def _topic(cls: type[Any]) -> str:
    from eventsourcing.utils import get_topic

    return get_topic(cls)


def _review_view(item: ReviewItem | IntakeClaim) -> dict[str, Any]:
    if isinstance(item, IntakeClaim):
        return {
            "review_id": item.id,
            "kind": "intake_claim",
            "customer_a": item.customer_id,
            "customer_b": None,
            "identifiers": item.identifiers,
            "score": None,
            "evidence": item.evidence,
            "status": item.status,
            "decision": item.decision,
            "opened_at": item.created_on,
        }
    return {
        "review_id": item.id,
        "kind": "pair",
        "customer_a": item.customer_a,
        "customer_b": item.customer_b,
        "identifiers": [],
        "score": item.score,
        "evidence": item.evidence,
        "status": item.status,
        "decision": item.decision,
        "opened_at": item.created_on,
    }


__all__ = [
    "ConcurrentUpdate",
    "CustomerNotFound",
    "Ident",
    "IdentifierHeldByOther",
    "IdentityApplication",
    "NoHolder",
    "RegisterCustomer",
    "Resolution",
    "SearchTooBroad",
    "Thresholds",
]
