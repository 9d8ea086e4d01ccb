"""What the resolver does with one event, independent of the stream framework.

Two tables, both caches of decisions the identity application recorded (the event
store stays the authority):

* ``identifiers``: ``kind:hash`` → customer_id, for the fast path: an order whose
  identifiers all point at one customer needs no decision at all;
* ``profiles``: customer_id → the unified profile (non-personal attributes, consents,
  sealed personal data, identifiers, first/last seen, channels). Writing a profile is
  publishing it: in the Faust app this table's changelog is the unified profile topic.

Identity's own events (``crm.identity.customer``) keep both tables current, whoever made
the decision (this resolver, the API, a staff merge). Any other event with identifiers
goes through the fast path, or to :meth:`IdentityApplication.observe` when something is
new or conflicting. Replaying the same events gives the same customer ids: new ids are
derived from the first identifier, and decisions already recorded are found again.
"""

from __future__ import annotations

import uuid
from collections import Counter, OrderedDict
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from crm_contracts.envelope import Event, Identifier
from crm_contracts.events import identity as ev
from crm_contracts.events.identity import ProfileSnapshot, ProfileSnapshotPayload
from crm_contracts.registry import InvalidEvent, UnknownEventType, decode
from identity.application import ConcurrentUpdate, Ident, Resolution

PRODUCER = "identity.resolver"
IDENTITY_EVENTS = (
    ev.CustomerRegistered,
    ev.CustomerProfileChanged,
    ev.ConsentChanged,
    ev.IdentifiersLinked,
    ev.IdentifiersUnlinked,
    ev.CustomersMerged,
    ev.MergeUndone,
    ev.CustomerErased,
)


class Observer(Protocol):
    def observe(
        self, idents: Sequence[Ident], channel: str = "store", source: str | None = None
    ) -> Resolution: ...


def _key(kind: str, hash_: str) -> str:
    return f"{kind}:{hash_}"


def _parse(value: bytes) -> bytes | dict[str, Any]:
    """A record's JSON, or the record itself if it is not JSON (reported later)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    return data if isinstance(data, dict) else value


def _channel(event_type: str, payload_channel: object) -> str:
    if event_type == "order.store_completed":
        return "store"
    if isinstance(payload_channel, str) and payload_channel in ("online", "app", "store"):
        return payload_channel
    if event_type.startswith("ticket."):
        return "call_center"
    if event_type.startswith("form."):
        return "form"
    return "online"


def channel_of(event: Event) -> str:
    payload: Any = getattr(event, "payload", None)
    return _channel(event.event_type, getattr(payload, "channel", None))


@dataclass
class Sighting:
    first: str | None
    last: str | None
    channels: set[str]
    unsaved: int = 0


@dataclass
class Outcome:
    customer_id: str | None
    path: str  # fast | decided | identity | skipped | invalid
    #: customers whose profile this event rewrote (and so republished)
    published: list[str] = field(default_factory=list)
    #: why an ``invalid`` record could not be handled (it goes to the dead-letter topic)
    error: str | None = None


class ResolverCore:
    def __init__(
        self,
        observer: Observer,
        identifiers: MutableMapping[str, str],
        profiles: MutableMapping[str, dict[str, Any]],
        *,
        republish_on_first_sighting: bool = True,
    ) -> None:
        self.observer = observer
        #: whether the local tables may hold writes the changelog never got (the last
        #: process did not stop cleanly): see ``_touch``
        self.republish_on_first_sighting = republish_on_first_sighting
        self.identifiers = identifiers
        self.profiles = profiles
        #: events handled per path (fast / decided / identity / skipped)
        self.stats: Counter[str] = Counter()
        #: sightings since the profile was last written, per customer (bounded, oldest out)
        self._sightings: OrderedDict[str, Sighting] = OrderedDict()
        self._staged: dict[str, str | None] | None = None
        self._profile_buffer: dict[str, dict[str, Any]] | None = None
        self.max_cached = 200_000

    # -- entry points -------------------------------------------------------------------

    # -- the identifier table, with writes staged while a batch is undecided ------------

    def _owner(self, key: str) -> str | None:
        if self._staged is not None and key in self._staged:
            return self._staged[key]
        return self.identifiers.get(key)

    def _set_owner(self, key: str, customer_id: str | None) -> None:
        if self._staged is not None:
            self._staged[key] = customer_id
        elif customer_id is None:
            self.identifiers.pop(key, None)
        else:
            self.identifiers[key] = customer_id

    def handle_batch(self, values: Sequence[bytes]) -> list[Outcome]:
        """Handle records in order, with every decision of the batch saved in one
        transaction. Identifier-table writes wait for that commit; if it loses a race,
        nothing was saved and the batch is redone one decision at a time."""
        unit = getattr(self.observer, "unit_of_work", None)
        if unit is None or len(values) < 2:
            return [self.handle_raw(v) for v in values]
        self._staged, self._profile_buffer = {}, {}
        records = [_parse(v) for v in values]
        # One owner lookup per record: the hot path's customer, or None for a record that
        # needs more (a decision, an identity event, a full decode).
        owners = [self._fast_owner(r) for r in records]
        try:
            with unit():
                self._prefetch([r for r, owner in zip(records, owners, strict=True) if owner is None])
                outcomes = []
                for record, owner in zip(records, owners, strict=True):
                    if owner is not None and not self._staged and isinstance(record, dict):
                        # Nothing decided earlier in this batch, so the owner still holds.
                        outcome = self._fast(record, owner)
                        self.stats[outcome.path] += 1
                    else:
                        outcome = self.handle_raw(record)
                    outcomes.append(outcome)
            staged, self._staged = self._staged, None
            profiles, self._profile_buffer = self._profile_buffer, None
        except ConcurrentUpdate:
            self._staged = self._profile_buffer = None
            self._sightings.clear()
            return [self.handle_raw(v) for v in values]
        finally:
            self._staged = self._profile_buffer = None
        # Each changed profile is written (and each table changelog record sent) once per
        # batch, however many of the batch's events touched it. Profiles first: a process
        # killed in between leaves identifiers unknown to the table, and the redelivered
        # events take the decision path again, rather than a known owner with a stale
        # local profile.
        for customer_id, profile in profiles.items():
            self.profiles[customer_id] = profile
        for key, owner in staged.items():
            self._set_owner(key, owner)
        return outcomes

    def _prefetch(self, records: Sequence[bytes | dict[str, Any]]) -> None:
        """Tell the identity application, in one go, about the observations of a batch
        that will need a decision (some identifier not in the table)."""
        prefetch = getattr(self.observer, "prefetch_observations", None)
        if prefetch is None:
            return
        pending: list[list[Ident]] = []
        for data in records:
            try:
                if not isinstance(data, dict) or str(data.get("event_type", "")).startswith("customer."):
                    continue
                idents = [Ident(i["kind"], i["hash"]) for i in data.get("identifiers") or ()]
                if any(self._owner(_key(i.kind, i.hash)) is None for i in idents):
                    pending.append(idents)
            except (KeyError, TypeError, AttributeError):
                continue  # not a valid event: handle_raw reports it
        if pending:
            prefetch(pending)

    def handle_raw(self, value: bytes | dict[str, Any]) -> Outcome:
        try:
            outcome = self._handle_raw(value)
        except (InvalidEvent, UnknownEventType, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Not a valid contract event (pydantic errors are ValueErrors): report it,
            # never let one bad record stop the stream.
            outcome = Outcome(None, "invalid", error=f"{type(exc).__name__}: {exc}"[:2000])
        self.stats[outcome.path] += 1
        return outcome

    def _handle_raw(self, value: bytes | dict[str, Any]) -> Outcome:
        """Handle a Kafka record value (or its parsed JSON). The hot path (every
        identifier already known and pointing at one customer) reads only the fields it
        needs; anything else is decoded and validated in full against its contract."""
        data = value if isinstance(value, dict) else orjson.loads(value)
        if not isinstance(data, dict):
            raise InvalidEvent("an event must be a JSON object")
        customer_id = self._fast_owner(data)
        if customer_id is not None:
            return self._fast(data, customer_id)
        return self.handle(decode(data))

    def _fast_owner(self, data: bytes | dict[str, Any]) -> str | None:
        """The one customer owning every identifier of an observation, if the table
        knows them all; None when the record needs the full path (or is not valid)."""
        try:
            if str(data.get("event_type", "")).startswith("customer."):  # type: ignore[union-attr]
                return None
            identifiers = data.get("identifiers")  # type: ignore[union-attr]
            if not identifiers:
                return None
            owners = {self._owner(f"{i['kind']}:{i['hash']}") for i in identifiers}
        except (AttributeError, KeyError, TypeError):
            return None
        return owners.pop() if len(owners) == 1 and None not in owners else None

    def _fast(self, data: dict[str, Any], customer_id: str) -> Outcome:
        """The hot path reads only the fields it needs."""
        try:
            payload = data.get("payload") or {}
            channel = _channel(data["event_type"], payload.get("channel"))
            changed = self._touch(
                customer_id, datetime.fromisoformat(data["occurred_at"]), channel, data["identifiers"]
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return Outcome(None, "invalid", error=f"{type(exc).__name__}: {exc}"[:2000])
        return Outcome(customer_id, "fast", [customer_id] if changed else [])

    def handle(self, event: Event) -> Outcome:
        if isinstance(event, IDENTITY_EVENTS):
            return self._identity_event(event)
        if isinstance(event, ProfileSnapshot) or not event.identifiers:
            return Outcome(None, "skipped")
        return self._observation(event)

    # -- observations -------------------------------------------------------------------

    def _observation(self, event: Event) -> Outcome:
        channel = channel_of(event)
        owners = {self._owner(_key(i.kind.value, i.hash)) for i in event.identifiers}
        if len(owners) == 1 and None not in owners:
            customer_id = owners.pop()
            assert customer_id is not None
            changed = self._touch(
                customer_id,
                event.occurred_at,
                channel,
                [i.model_dump(mode="json") for i in event.identifiers],
            )
            return Outcome(customer_id, "fast", [customer_id] if changed else [])
        idents = [Ident(i.kind.value, i.hash) for i in event.identifiers]
        result = self.observer.observe(idents, channel=channel, source=str(event.event_id))
        if result.customer_id is None:
            return Outcome(None, "decided")  # ambiguous: only shared identifiers
        customer_id = str(result.customer_id)
        # Everything the customer holds of this observation, not only what was linked
        # now: a redelivered event (after a crash) finds its decision already recorded
        # and must still bring the tables up to date with it.
        held = result.held or result.linked
        profile = self._profile(customer_id)
        known = {(i["kind"], i["hash"]) for i in profile["identifiers"]}
        missing = [i.as_dict() for i in held if (i.kind, i.hash) not in known]
        if missing:
            profile["identifiers"] += missing
            self._put_profile(customer_id, profile)
        # The profile before the identifiers (see handle_batch).
        for ident in held:
            self._set_owner(_key(ident.kind, ident.hash), customer_id)
        self._touch(customer_id, event.occurred_at, channel, force=True)
        return Outcome(customer_id, "decided", [customer_id])

    def _put_profile(self, customer_id: str, profile: dict[str, Any]) -> None:
        if self._profile_buffer is not None:
            self._profile_buffer[customer_id] = profile  # written once, when the batch is saved
        else:
            self.profiles[customer_id] = profile

    def _profile(self, customer_id: str) -> dict[str, Any]:
        if self._profile_buffer is not None and customer_id in self._profile_buffer:
            return dict(self._profile_buffer[customer_id])
        return dict(
            self.profiles.get(customer_id)
            or {
                "status": "active",
                "merged_into": None,
                "attributes": {},
                "consents": {},
                "personal": None,
                "identifiers": [],
                "first_seen": None,
                "last_seen": None,
                "channels": [],
                "events_seen": 0,
            }
        )

    def _touch(
        self,
        customer_id: str,
        at: datetime,
        channel: str,
        identifiers: Sequence[dict[str, str]] = (),
        force: bool = False,
    ) -> bool:
        """Record a sighting. The profile table is written (a snapshot published) only
        when the profile visibly changes: an earlier first sighting, a sighting on
        a new day, a new channel. Sightings in between stay in memory (the hot path does
        no table write); ``events_seen`` is therefore approximate after a crash.

        The first sighting of a customer in this process checks that the profile lists
        the event's identifiers (all owned by the customer, or this would not be the
        fast path) and writes it if not. After an unclean stop it writes the profile in
        any case (``republish_on_first_sighting``): the local table survives a SIGKILL
        with writes whose changelog records were never produced, so the profile read
        here may be one the topic never got. Its events were not acknowledged, so they
        are redelivered, and their first sighting republishes it."""
        iso = at.isoformat()
        seen = self._sightings.get(customer_id)
        missing: list[dict[str, str]] = []
        if seen is None:
            profile = self._profile(customer_id)
            seen = Sighting(profile["first_seen"], profile["last_seen"], set(profile["channels"]))
            self._remember(customer_id, seen)
            known = {(i["kind"], i["hash"]) for i in profile["identifiers"]}
            missing = [{"kind": i["kind"], "hash": i["hash"]} for i in identifiers]
            missing = [i for i in missing if (i["kind"], i["hash"]) not in known]
            force = force or self.republish_on_first_sighting or bool(missing)
        changed = force or seen.first is None or iso < seen.first or channel not in seen.channels
        if seen.last is None or iso > seen.last:
            changed = changed or seen.last is None or iso[:10] != seen.last[:10]
            seen.last = iso
        if seen.first is None or iso < seen.first:
            seen.first = iso
        seen.channels.add(channel)
        seen.unsaved += 1
        if not changed:
            return False
        profile = self._profile(customer_id)
        if missing:
            profile["identifiers"] = [*profile["identifiers"], *missing]
        profile.update(
            first_seen=seen.first,
            last_seen=seen.last,
            channels=sorted(seen.channels),
            events_seen=profile["events_seen"] + seen.unsaved,
        )
        seen.unsaved = 0
        self._put_profile(customer_id, profile)
        return True

    def _remember(self, customer_id: str, seen: Sighting) -> None:
        self._sightings[customer_id] = seen
        if len(self._sightings) > self.max_cached:
            self._sightings.popitem(last=False)

    # -- identity's own decisions ---------------------------------------------------------

    def _identity_event(self, event: Event) -> Outcome:
        payload: Any = event.payload  # type: ignore[attr-defined]
        touched: list[str] = []
        if isinstance(event, ev.CustomerRegistered):
            cid = str(payload.customer_id)
            profile = self._profile(cid)
            profile.update(
                attributes=payload.attributes.model_dump(mode="json"),
                consents={c.channel.value: c.model_dump(mode="json") for c in payload.consents},
                personal=payload.personal.model_dump(mode="json") if payload.personal else None,
            )
            self._set_identifiers(profile, cid, event.identifiers)
            self._put_profile(cid, profile)
            touched.append(cid)
        elif isinstance(event, ev.CustomerProfileChanged):
            cid = str(payload.customer_id)
            profile = self._profile(cid)
            profile["attributes"] = payload.attributes.model_dump(mode="json")
            if payload.personal is not None:
                profile["personal"] = payload.personal.model_dump(mode="json")
            self._put_profile(cid, profile)
            touched.append(cid)
        elif isinstance(event, ev.ConsentChanged):
            cid = str(payload.customer_id)
            profile = self._profile(cid)
            profile["consents"] = {
                **profile["consents"],
                payload.consent.channel.value: payload.consent.model_dump(mode="json"),
            }
            self._put_profile(cid, profile)
            touched.append(cid)
        elif isinstance(event, ev.IdentifiersLinked):
            cid = str(payload.customer_id)
            profile = self._profile(cid)
            self._set_identifiers(profile, cid, payload.linked)
            self._put_profile(cid, profile)
            touched.append(cid)
        elif isinstance(event, ev.IdentifiersUnlinked):
            cid = str(payload.customer_id)
            profile = self._profile(cid)
            self._drop_identifiers(profile, cid, payload.unlinked)
            self._put_profile(cid, profile)
            touched.append(cid)
        elif isinstance(event, ev.CustomersMerged):
            survivor, merged = str(payload.survivor_id), str(payload.merged_id)
            gone = self._profile(merged)
            profile = self._profile(survivor)
            self._set_identifiers(profile, survivor, [*payload.moved, *_identifiers(gone["identifiers"])])
            # ISO timestamps in UTC compare as strings; None means never seen.
            firsts = [t for t in (profile["first_seen"], gone["first_seen"]) if t]
            lasts = [t for t in (profile["last_seen"], gone["last_seen"]) if t]
            profile["first_seen"] = min(firsts, default=None)
            profile["last_seen"] = max(lasts, default=None)
            profile["channels"] = sorted(set(profile["channels"]) | set(gone["channels"]))
            profile["events_seen"] += gone["events_seen"]
            gone.update(status="merged", merged_into=survivor)
            self._put_profile(survivor, profile)
            self._put_profile(merged, gone)
            touched += [survivor, merged]
        elif isinstance(event, ev.MergeUndone):
            survivor, restored = str(payload.survivor_id), str(payload.restored_id)
            profile = self._profile(survivor)
            back = self._profile(restored)
            self._drop_identifiers(profile, survivor, payload.restored)
            back.update(status="active", merged_into=None)
            self._set_identifiers(back, restored, payload.restored)
            self._put_profile(survivor, profile)
            self._put_profile(restored, back)
            touched += [survivor, restored]
        elif isinstance(event, ev.CustomerErased):
            cid = str(payload.customer_id)
            profile = self._profile(cid)
            self._drop_identifiers(profile, cid, payload.tombstoned)
            profile.update(status="erased", personal=None, identifiers=[], attributes={}, consents={})
            self._put_profile(cid, profile)
            touched.append(cid)
        for customer_id in touched:
            self._sightings.pop(customer_id, None)  # the profile changed under the cache
        return Outcome(touched[0] if touched else None, "identity", touched)

    def _set_identifiers(self, profile: dict[str, Any], cid: str, identifiers: Sequence[Identifier]) -> None:
        known = {(i["kind"], i["hash"]) for i in profile["identifiers"]}
        for ident in identifiers:
            self._set_owner(_key(ident.kind.value, ident.hash), cid)
            if (ident.kind.value, ident.hash) not in known:
                profile["identifiers"].append({"kind": ident.kind.value, "hash": ident.hash})
                known.add((ident.kind.value, ident.hash))

    def _drop_identifiers(self, profile: dict[str, Any], cid: str, identifiers: Sequence[Identifier]) -> None:
        dropped = {(i.kind.value, i.hash) for i in identifiers}
        for kind, hash_ in dropped:
            key = _key(kind, hash_)
            if self._owner(key) == cid:
                self._set_owner(key, None)
        profile["identifiers"] = [i for i in profile["identifiers"] if (i["kind"], i["hash"]) not in dropped]

    # -- output ---------------------------------------------------------------------------

    def snapshot(self, customer_id: str) -> ProfileSnapshot:
        return profile_snapshot(customer_id, self._profile(customer_id))


def _identifiers(items: Sequence[dict[str, str]]) -> list[Identifier]:
    return [Identifier.model_validate(i) for i in items]


def profile_snapshot(customer_id: str, profile: dict[str, Any]) -> ProfileSnapshot:
    """The unified-profile event for a profile as the resolver keeps it."""
    now = datetime.fromisoformat(profile["last_seen"]) if profile["last_seen"] else None
    identifiers = _identifiers(profile["identifiers"])
    return ProfileSnapshot(
        occurred_at=now or datetime.now().astimezone(),
        producer=PRODUCER,
        customer_key=customer_id,
        identifiers=tuple(identifiers[:64]),
        payload=ProfileSnapshotPayload(
            customer_id=uuid.UUID(customer_id),
            status=profile["status"],
            merged_into=uuid.UUID(profile["merged_into"]) if profile["merged_into"] else None,
            attributes=ev.CustomerAttributes.model_validate(profile["attributes"] or {}),
            consents=tuple(ev.Consent.model_validate(c) for c in profile["consents"].values()),
            personal=profile["personal"],
            identifiers=tuple(identifiers),
            first_seen=profile["first_seen"],
            last_seen=profile["last_seen"],
            channels=tuple(profile["channels"]),
            events_seen=profile["events_seen"],
        ),
    )


def profile_from_snapshot(data: dict[str, Any]) -> dict[str, Any]:
    """The resolver's profile back from a decoded (JSON) profile snapshot."""
    p = data["payload"]

    def iso(value: str | None) -> str | None:  # one spelling, so that strings compare as times
        return datetime.fromisoformat(value).isoformat() if value else None

    return {
        "status": p["status"],
        "merged_into": p["merged_into"],
        "attributes": p["attributes"],
        "consents": {c["channel"]: c for c in p["consents"]},
        "personal": p["personal"],
        "identifiers": p["identifiers"],
        "first_seen": iso(p["first_seen"]),
        "last_seen": iso(p["last_seen"]),
        "channels": p["channels"],
        "events_seen": p["events_seen"],
    }
