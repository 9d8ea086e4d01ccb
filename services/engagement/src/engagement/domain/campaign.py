"""Campaigns and their messages (メッセージの一斉配信). Pure domain, no infrastructure.

A ``Campaign`` is created as a draft (channels in order of preference, audience,
variants, the rules choosing a variant per customer, schedule, holdout), then launched:
launching *freezes* the audience — every recipient, and whether it is in the holdout
(control) group, is recorded in the campaign's own events — so the campaign can be
re-read and re-reported exactly as it ran. Paused campaigns send nothing until resumed;
cancelled ones never send again; a campaign completes when every recipient has an outcome.

A ``Message`` is one recipient's outcome: its id is derived from (campaign, customer), so
the store itself refuses a second message for the same pair — the dispatcher's
idempotency across crashes, restarts and concurrent dispatchers. A message is *prepared*
(recorded, with its channel and variant) before the provider is called, and never
prepared again: a crash between the two leaves it ``sending``, which is resolved as
failed (outcome unknown) rather than risking a second send.

An ``OptOut`` (customer, channel) records an unsubscribe in engagement's store at once,
whatever identity's availability; the dispatcher honours it before anything else.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

CAMPAIGN_NAMESPACE = uuid.UUID("0b6f6c1e-8a53-4f7e-9d0e-6a1c2f3b4d5e")
CHANNELS = ("email", "sms", "line", "app_push")
#: Conditions a rule may test, with the customer fact each reads.
CONDITIONS = ("rank", "segment", "prefecture", "age_band", "gender", "birthday_month")
AGE_BANDS = ("under20", "20s", "30s", "40s", "50s", "60plus", "unknown")
#: The RFM segments analytics serves (``/v1/segments/{segment}/customers``).
SEGMENTS = ("new", "repeat", "loyal", "dormant")
#: identity's ``Gender`` values (a profile's attribute; ``unknown`` when not given).
GENDERS = ("female", "male", "other", "unknown")
#: ``birthday_month``: the month of the send, or a month number.
BIRTHDAY_MONTHS = ("current", *(str(m) for m in range(1, 13)))


#: A bounce's reason: an RFC 3463 enhanced status code (``5.1.1``), or nothing.
ENHANCED_STATUS = r"^(\d\.\d{1,3}\.\d{1,3})?$"


class CampaignError(Exception):
    pass


class InvalidCampaign(CampaignError):
    pass


class CampaignStateError(CampaignError):
    """The command does not apply to the campaign's current status."""


def message_id(campaign_id: uuid.UUID, customer_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(CAMPAIGN_NAMESPACE, f"message:{campaign_id}:{customer_id}")


def opt_out_id(customer_id: uuid.UUID, channel: str) -> uuid.UUID:
    return uuid.uuid5(CAMPAIGN_NAMESPACE, f"opt-out:{customer_id}:{channel}")


def in_holdout(campaign_id: uuid.UUID, customer_id: uuid.UUID, pct: float) -> bool:
    """Deterministic assignment to the control group: the same customer of the same
    campaign is always on the same side (a re-launch or a re-read agrees), independent
    of the order the audience arrived in."""
    if pct <= 0:
        return False
    digest = hashlib.sha256(f"{campaign_id}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < pct / 100


def age_band(birth_year: int | None, today_year: int) -> str:
    if birth_year is None:
        return "unknown"
    age = today_year - birth_year
    if age < 20:
        return "under20"
    if age >= 60:
        return "60plus"
    return f"{age // 10 * 10}s"


@dataclass(frozen=True)
class CustomerFacts:
    """What variant rules may look at: non-personal facts about one recipient."""

    rank: str | None = None
    segments: frozenset[str] = frozenset()
    prefecture: str | None = None
    age_band: str = "unknown"
    gender: str = "unknown"
    birth_month: int | None = None


@dataclass(frozen=True)
class Rule:
    """``when`` maps a condition to the values it accepts (any of them); every
    condition of a rule must hold. ``birthday_month: ["current"]`` holds in the
    customer's birthday month (of the send)."""

    variant: str
    when: Mapping[str, tuple[str, ...]]

    def matches(self, facts: CustomerFacts, month: int) -> bool:
        for condition, accepted in self.when.items():
            if condition == "rank":
                ok = facts.rank in accepted or (facts.rank is None and "none" in accepted)
            elif condition == "segment":
                ok = bool(facts.segments & set(accepted))
            elif condition == "prefecture":
                ok = facts.prefecture in accepted
            elif condition == "age_band":
                ok = facts.age_band in accepted
            elif condition == "gender":
                ok = facts.gender in accepted
            elif condition == "birthday_month":
                ok = facts.birth_month is not None and (
                    ("current" in accepted and facts.birth_month == month)
                    or str(facts.birth_month) in accepted
                )
            else:  # validated at creation; an unknown condition never matches
                ok = False
            if not ok:
                return False
        return True


def choose_variant(rules: Sequence[Rule], default: str, facts: CustomerFacts, month: int) -> str:
    """The first rule that matches wins; none matching, the default."""
    for rule in rules:
        if rule.matches(facts, month):
            return rule.variant
    return default


def parse_rules(raw: Iterable[Mapping[str, Any]]) -> tuple[Rule, ...]:
    return tuple(
        Rule(
            variant=str(r["variant"]), when={k: tuple(str(x) for x in v) for k, v in dict(r["when"]).items()}
        )
        for r in raw
    )


def segments_named(rules: Iterable[Rule]) -> set[str]:
    return {s for r in rules for s in r.when.get("segment", ())}


def validate_plan(
    channels: Sequence[str],
    variants: Sequence[Mapping[str, Any]],
    rules: Sequence[Mapping[str, Any]],
    default_variant: str,
    holdout_pct: float,
    ranks: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """Every problem of a campaign's plan as (field, reason); empty when sound.

    ``ranks``: the membership programme's rank names (``none`` is accepted too: not a
    member); None leaves rank values unchecked."""
    problems: list[tuple[str, str]] = []
    accepted: dict[str, Sequence[str]] = {
        "age_band": AGE_BANDS,
        "segment": SEGMENTS,
        "gender": GENDERS,
        "birthday_month": BIRTHDAY_MONTHS,
    }
    if ranks is not None:
        accepted["rank"] = (*ranks, "none")
    if not channels:
        problems.append(("channels", "name at least one channel"))
    for i, ch in enumerate(channels):
        if ch not in CHANNELS:
            problems.append((f"channels.{i}", f"unknown channel {ch!r}; one of {', '.join(CHANNELS)}"))
    if len(set(channels)) != len(channels):
        problems.append(("channels", "a channel is named twice"))
    ids = [str(v.get("id")) for v in variants]
    if len(set(ids)) != len(ids):
        problems.append(("variants", "variant ids must be unique"))
    if default_variant not in ids:
        problems.append(("default_variant", f"{default_variant!r} is not one of the variants"))
    if "email" in channels:
        for i, v in enumerate(variants):
            if not v.get("subject"):
                problems.append((f"variants.{i}.subject", "an e-mail campaign needs a subject per variant"))
    for i, r in enumerate(rules):
        if str(r.get("variant")) not in ids:
            problems.append((f"rules.{i}.variant", f"{r.get('variant')!r} is not one of the variants"))
        when = r.get("when") or {}
        if not when:
            problems.append((f"rules.{i}.when", "a rule needs at least one condition (use default_variant)"))
        for condition, values in dict(when).items():
            if condition not in CONDITIONS:
                problems.append(
                    (f"rules.{i}.when.{condition}", f"unknown condition; one of {', '.join(CONDITIONS)}")
                )
            elif not values:
                problems.append((f"rules.{i}.when.{condition}", "list at least one value"))
            elif condition in accepted and (bad := sorted(set(map(str, values)) - set(accepted[condition]))):
                problems.append(
                    (
                        f"rules.{i}.when.{condition}",
                        f"unknown value {', '.join(map(repr, bad))}; one of {', '.join(accepted[condition])}",
                    )
                )
    if not 0 <= holdout_pct <= 50:
        problems.append(("holdout_pct", "must be between 0 and 50"))
    return problems


@dataclass
class Recipient:
    customer_id: uuid.UUID
    holdout: bool


class Campaign(Aggregate):
    class Created(Aggregate.Created):
        name: str
        channels: list[str]
        audience: dict[str, Any]
        variants: list[dict[str, Any]]
        rules: list[dict[str, Any]]
        default_variant: str
        send_at: datetime
        holdout_pct: float
        attribution_days: int
        quiet_hours: list[int] | None
        link_hosts: list[str]
        created_at: datetime

    @event(Created)
    def __init__(
        self,
        name: str,
        channels: list[str],
        audience: dict[str, Any],
        variants: list[dict[str, Any]],
        rules: list[dict[str, Any]],
        default_variant: str,
        send_at: datetime,
        holdout_pct: float,
        attribution_days: int,
        quiet_hours: list[int] | None,
        link_hosts: list[str],
        created_at: datetime,
    ) -> None:
        self.name = name
        self.channels = list(channels)
        self.audience = dict(audience)
        self.variants = [dict(v) for v in variants]
        self.rules = [dict(r) for r in rules]
        self.default_variant = default_variant
        self.send_at = send_at
        self.holdout_pct = holdout_pct
        self.attribution_days = attribution_days
        self.quiet_hours = quiet_hours
        self.link_hosts = list(link_hosts)
        self.created_at = created_at
        self.status = "draft"
        self.recipients: list[Recipient] = []
        self.launched_at: datetime | None = None
        self.finished_at: datetime | None = None

    @classmethod
    def create(
        cls,
        *,
        name: str,
        channels: list[str],
        audience: dict[str, Any],
        variants: list[dict[str, Any]],
        rules: list[dict[str, Any]],
        default_variant: str,
        send_at: datetime,
        holdout_pct: float,
        attribution_days: int,
        quiet_hours: list[int] | None,
        link_hosts: list[str],
        created_at: datetime,
        campaign_id: uuid.UUID | None = None,
    ) -> Campaign:
        problems = validate_plan(channels, variants, rules, default_variant, holdout_pct)
        if problems:
            raise InvalidCampaign("; ".join(f"{f}: {r}" for f, r in problems))
        return cls._create(
            cls.Created,
            id=campaign_id or uuid.uuid4(),
            name=name,
            channels=channels,
            audience=audience,
            variants=variants,
            rules=rules,
            default_variant=default_variant,
            send_at=send_at,
            holdout_pct=holdout_pct,
            attribution_days=attribution_days,
            quiet_hours=quiet_hours,
            link_hosts=link_hosts,
            created_at=created_at,
        )

    # -- reading ---------------------------------------------------------------------------

    def variant(self, variant_id: str) -> dict[str, Any]:
        for v in self.variants:
            if v["id"] == variant_id:
                return v
        raise CampaignError(f"campaign {self.id} has no variant {variant_id!r}")

    @property
    def parsed_rules(self) -> tuple[Rule, ...]:
        return parse_rules(self.rules)

    def is_due(self, now: datetime) -> bool:
        return self.status == "launched" and self.send_at <= now

    def in_quiet_hours(self, now_local_hour: int) -> bool:
        """Quiet hours ``[start, end)`` in the retailer's local time; may wrap midnight."""
        if not self.quiet_hours:
            return False
        start, end = self.quiet_hours
        if start <= end:
            return start <= now_local_hour < end
        return now_local_hour >= start or now_local_hour < end

    # -- lifecycle -------------------------------------------------------------------------

    class AudienceFrozen(Aggregate.Event):
        recipients: list[list[str]]  # [customer_id, "1" if holdout else "0"]
        at: datetime

    class Launched(Aggregate.Event):
        at: datetime

    def launch(self, customer_ids: Sequence[uuid.UUID], at: datetime) -> None:
        if self.status != "draft":
            raise CampaignStateError(f"only a draft can be launched; this campaign is {self.status}")
        unique = sorted(set(customer_ids), key=str)
        frozen = [[str(c), "1" if in_holdout(self.id, c, self.holdout_pct) else "0"] for c in unique]
        self._frozen(recipients=frozen, at=at)
        self._launched(at=at)

    @event(AudienceFrozen)
    def _frozen(self, recipients: list[list[str]], at: datetime) -> None:
        self.recipients = [Recipient(uuid.UUID(c), h == "1") for c, h in recipients]

    @event(Launched)
    def _launched(self, at: datetime) -> None:
        self.status = "launched"
        self.launched_at = at

    class Paused(Aggregate.Event):
        at: datetime

    class Resumed(Aggregate.Event):
        at: datetime

    class Cancelled(Aggregate.Event):
        at: datetime
        reason: str

    class Completed(Aggregate.Event):
        at: datetime

    def pause(self, at: datetime) -> None:
        if self.status != "launched":
            raise CampaignStateError(f"only a launched campaign can be paused; this one is {self.status}")
        self._paused(at=at)

    @event(Paused)
    def _paused(self, at: datetime) -> None:
        self.status = "paused"

    def resume(self, at: datetime) -> None:
        if self.status != "paused":
            raise CampaignStateError(f"only a paused campaign can be resumed; this one is {self.status}")
        self._resumed(at=at)

    @event(Resumed)
    def _resumed(self, at: datetime) -> None:
        self.status = "launched"

    def cancel(self, at: datetime, reason: str) -> None:
        if self.status in ("cancelled", "completed"):
            raise CampaignStateError(f"the campaign is {self.status} already")
        self._cancelled(at=at, reason=reason)

    @event(Cancelled)
    def _cancelled(self, at: datetime, reason: str) -> None:
        self.status = "cancelled"
        self.finished_at = at

    def complete(self, at: datetime) -> None:
        if self.status != "launched":
            raise CampaignStateError(f"only a launched campaign completes; this one is {self.status}")
        self._completed(at=at)

    @event(Completed)
    def _completed(self, at: datetime) -> None:
        self.status = "completed"
        self.finished_at = at


@dataclass
class Outcome:
    kind: str
    at: datetime
    detail: dict[str, Any] = field(default_factory=dict)


class Message(Aggregate):
    """One recipient's message of one campaign."""

    class Created(Aggregate.Created):
        campaign_id: uuid.UUID
        customer_id: uuid.UUID
        status: str  # sending | skipped
        channel: str | None
        variant: str | None
        reason: str | None
        links: list[str]
        at: datetime

    @event(Created)
    def __init__(
        self,
        campaign_id: uuid.UUID,
        customer_id: uuid.UUID,
        status: str,
        channel: str | None,
        variant: str | None,
        reason: str | None,
        links: list[str],
        at: datetime,
    ) -> None:
        self.campaign_id = campaign_id
        self.customer_id = customer_id
        self.status = status
        self.channel = channel
        self.variant = variant
        self.reason = reason
        #: the rendered message's link targets, what the click tracker redirects to
        self.links = list(links)
        self.created_at = at
        self.attempts = 0
        self.sent_at: datetime | None = None
        self.opened_at: datetime | None = None
        self.clicked: dict[int, datetime] = {}
        self.opted_out_at: datetime | None = None
        self.bounced: str | None = None

    @classmethod
    def prepare(
        cls,
        campaign_id: uuid.UUID,
        customer_id: uuid.UUID,
        channel: str,
        variant: str,
        links: list[str],
        at: datetime,
    ) -> Message:
        if channel not in CHANNELS:
            raise CampaignError(f"unknown channel {channel!r}")
        return cls._create(
            cls.Created,
            id=message_id(campaign_id, customer_id),
            campaign_id=campaign_id,
            customer_id=customer_id,
            status="sending",
            channel=channel,
            variant=variant,
            reason=None,
            links=links,
            at=at,
        )

    @classmethod
    def skip(
        cls,
        campaign_id: uuid.UUID,
        customer_id: uuid.UUID,
        reason: str,
        at: datetime,
        channel: str | None = None,
        variant: str | None = None,
    ) -> Message:
        return cls._create(
            cls.Created,
            id=message_id(campaign_id, customer_id),
            campaign_id=campaign_id,
            customer_id=customer_id,
            status="skipped",
            channel=channel,
            variant=variant,
            reason=reason,
            links=[],
            at=at,
        )

    @property
    def finished(self) -> bool:
        return self.status in ("sent", "skipped", "failed")

    class Sent(Aggregate.Event):
        at: datetime
        attempts: int

    def mark_sent(self, at: datetime, attempts: int) -> None:
        if self.status != "sending":
            raise CampaignStateError(f"message {self.id} is {self.status}, not sending")
        self._sent(at=at, attempts=attempts)

    @event(Sent)
    def _sent(self, at: datetime, attempts: int) -> None:
        self.status = "sent"
        self.sent_at = at
        self.attempts = attempts

    class Failed(Aggregate.Event):
        at: datetime
        reason: str
        attempts: int
        permanent: bool

    def mark_failed(self, at: datetime, reason: str, attempts: int, permanent: bool) -> None:
        if self.status != "sending":
            raise CampaignStateError(f"message {self.id} is {self.status}, not sending")
        self._failed(at=at, reason=reason[:200], attempts=attempts, permanent=permanent)

    @event(Failed)
    def _failed(self, at: datetime, reason: str, attempts: int, permanent: bool) -> None:
        self.status = "failed"
        self.reason = reason
        self.attempts = attempts

    # -- responses: each recorded once (a mail client re-loading the pixel is one open) ----

    class Opened(Aggregate.Event):
        at: datetime

    def open(self, at: datetime) -> bool:
        if self.status != "sent" or self.opened_at is not None:
            return False
        self._opened(at=at)
        return True

    @event(Opened)
    def _opened(self, at: datetime) -> None:
        self.opened_at = at

    class Clicked(Aggregate.Event):
        at: datetime
        link_no: int

    def click(self, link_no: int, at: datetime) -> bool:
        """Record the first click on a link; a click implies an open (images blocked)."""
        if self.status != "sent" or not 0 <= link_no < len(self.links):
            return False
        if self.opened_at is None:
            self._opened(at=at)
        if link_no in self.clicked:
            return False
        self._clicked(at=at, link_no=link_no)
        return True

    @event(Clicked)
    def _clicked(self, at: datetime, link_no: int) -> None:
        self.clicked[link_no] = at

    class Bounced(Aggregate.Event):
        at: datetime
        kind: str
        reason: str

    def bounce(self, kind: str, reason: str, at: datetime) -> bool:
        if self.status != "sent" or self.bounced is not None:
            return False
        self._bounced(at=at, kind=kind, reason=reason[:200])
        return True

    @event(Bounced)
    def _bounced(self, at: datetime, kind: str, reason: str) -> None:
        self.bounced = kind

    class OptedOut(Aggregate.Event):
        at: datetime

    def opt_out(self, at: datetime) -> bool:
        if self.opted_out_at is not None or self.channel is None:
            return False
        self._opted_out(at=at)
        return True

    @event(OptedOut)
    def _opted_out(self, at: datetime) -> None:
        self.opted_out_at = at


class OptOut(Aggregate):
    """An unsubscribe from one channel, and whether identity has been told."""

    class Recorded(Aggregate.Created):
        customer_id: uuid.UUID
        channel: str
        message_id: uuid.UUID | None
        at: datetime

    @event(Recorded)
    def __init__(
        self, customer_id: uuid.UUID, channel: str, message_id: uuid.UUID | None, at: datetime
    ) -> None:
        self.customer_id = customer_id
        self.channel = channel
        self.message_id = message_id
        self.at = at
        self.forwarded_at: datetime | None = None

    @classmethod
    def record(
        cls, customer_id: uuid.UUID, channel: str, message_id: uuid.UUID | None, at: datetime
    ) -> OptOut:
        return cls._create(
            cls.Recorded,
            id=opt_out_id(customer_id, channel),
            customer_id=customer_id,
            channel=channel,
            message_id=message_id,
            at=at,
        )

    class Forwarded(Aggregate.Event):
        at: datetime

    def forwarded(self, at: datetime) -> None:
        if self.forwarded_at is None:
            self._forwarded(at=at)

    @event(Forwarded)
    def _forwarded(self, at: datetime) -> None:
        self.forwarded_at = at
