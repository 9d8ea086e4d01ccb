"""The inquiry ticket (問い合わせ): one aggregate per customer inquiry. Pure domain.

Life of a ticket::

    open ──► pending ──► open ...            (waiting on the customer, and back)
      │         │
      └─────────┴──► resolved ──► closed     (closed is final: a new inquiry is a new ticket)
                        │
                        └──► open            (reopened: by staff, or by a customer reply)

Assignments, replies and escalations happen while it is open or pending (a customer's
reply to a resolved ticket reopens it). A rating (CSAT 1..5) comes once, after the
resolution. Every change carries the instant it happened (``at``): never before the
ticket's previous change, so imported history keeps its order.

Personal content (subject, body, the contact the customer gave, replies, comments) is
*sealed* before it reaches the aggregate: the domain stores opaque sealed values
(``dict``), never clear text, so the event store holds nothing an erasure could not
shred (see support.keys).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, event

from support.domain.policy import CHANNELS, PRIORITIES, Policy

STATUSES: tuple[str, ...] = ("open", "pending", "resolved", "closed")
#: Status changes ``change_status`` allows (resolving has its own command: it needs a resolution).
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"pending"}),
    "pending": frozenset({"open"}),
    "resolved": frozenset({"open", "closed"}),
    "closed": frozenset(),
}
Sealed = dict[str, str]


class TicketError(Exception):
    """A command the ticket refuses (422 unless a subclass says otherwise)."""


class InvalidTransition(TicketError):
    """The command does not fit the ticket's status (409)."""


class AlreadyRated(InvalidTransition):
    pass


class InvalidTicket(TicketError):
    """A value the domain does not accept (422)."""


class Ticket(Aggregate):
    class Opened(Aggregate.Created):
        channel: str
        category: str
        priority: str
        identifiers: list[dict[str, str]]
        store_id: str | None
        order_id: str | None
        content: Sealed
        opened_at: datetime
        first_response_due: datetime
        resolution_due: datetime
        fingerprint: str
        owner: str | None
        team: str | None

    @event(Opened)
    def __init__(
        self,
        channel: str,
        category: str,
        priority: str,
        identifiers: list[dict[str, str]],
        store_id: str | None,
        order_id: str | None,
        content: Sealed,
        opened_at: datetime,
        first_response_due: datetime,
        resolution_due: datetime,
        fingerprint: str,
        owner: str | None,
        team: str | None,
    ) -> None:
        self.channel = channel
        self.category = category
        self.priority = priority
        self.identifiers = identifiers
        self.store_id = store_id
        self.order_id = order_id
        self.content = content
        self.opened_at = opened_at
        self.first_response_due = first_response_due
        #: The resolution's due instant before pauses; see ``resolution_due_at``.
        self.resolution_due = resolution_due
        self.fingerprint = fingerprint
        self.owner = owner
        self.team = team
        self.status = "open"
        self.last_at = opened_at
        self.first_response_at: datetime | None = None
        self.resolved_at: datetime | None = None
        #: the first resolution: without a staff reply before it, it was the first
        #: response — and stays so when the ticket is reopened
        self.first_settled_at: datetime | None = None
        self.resolution: str | None = None
        self.resolved_by: str | None = None
        self.satisfaction: int | None = None
        self.rating_comment: Sealed | None = None
        self.paused_since: datetime | None = None
        self.paused_seconds = 0.0
        self.escalations: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        self.reply_requests: set[str] = set()
        self.reopened = 0

    @classmethod
    def open(
        cls,
        ticket_id: uuid.UUID,
        *,
        channel: str,
        category: str,
        priority: str,
        identifiers: list[dict[str, str]],
        content: Sealed,
        at: datetime,
        policy: Policy,
        fingerprint: str,
        store_id: str | None = None,
        order_id: str | None = None,
        owner: str | None = None,
        team: str | None = None,
    ) -> Ticket:
        if channel not in CHANNELS:
            raise InvalidTicket(f"channel: one of {CHANNELS}")
        if priority not in PRIORITIES:
            raise InvalidTicket(f"priority: one of {PRIORITIES}")
        if at.tzinfo is None:
            raise InvalidTicket("at: an instant with a timezone")
        target = policy.target(priority)
        ticket = cls._create(
            cls.Opened,
            id=ticket_id,
            channel=channel,
            category=category,
            priority=priority,
            identifiers=identifiers,
            store_id=store_id,
            order_id=order_id,
            content=content,
            opened_at=at,
            first_response_due=at + target.first_response,
            resolution_due=at + target.resolution,
            fingerprint=fingerprint,
            owner=owner,
            team=team,
        )
        routed = policy.on_open(category, priority, channel, store_id)
        if routed is not None:
            ticket.escalate(routed[0], "routing", at, rule=routed[1], by="routing")
        return ticket

    # -- reading ---------------------------------------------------------------------------

    def resolution_due_at(self, now: datetime) -> datetime:
        """The resolution's due instant as of ``now``: pushed back by time spent pending
        (and, while pending, by the wait so far)."""
        paused = self.paused_seconds
        if self.paused_since is not None:
            paused += max(0.0, (now - self.paused_since).total_seconds())
        return self.resolution_due + timedelta(seconds=paused)

    def first_response_breached(self, now: datetime) -> bool:
        answered = self.first_response_at
        if answered is not None:
            return answered > self.first_response_due
        # Resolved without a staff reply (e.g. solved on the phone and resolved at once):
        # the first resolution counts as the response, even after a reopen.
        return (self.first_settled_at or now) > self.first_response_due

    def resolution_breached(self, now: datetime) -> bool:
        if self.resolved_at is not None and self.status in ("resolved", "closed"):
            return self.resolved_at > self.resolution_due_at(self.resolved_at)
        return now > self.resolution_due_at(now)

    def breached(self, now: datetime) -> bool:
        """Whether the SLA is breached at ``now`` (either target)."""
        return self.first_response_breached(now) or self.resolution_breached(now)

    def sla(self, now: datetime) -> dict[str, Any]:
        def state(breached: bool, done: bool) -> str:
            return "breached" if breached else "met" if done else "running"

        done_first = self.first_response_at is not None or self.first_settled_at is not None
        done_resolution = self.status in ("resolved", "closed")
        return {
            "first_response_due_at": self.first_response_due,
            "resolution_due_at": self.resolution_due_at(now),
            "first_response": state(self.first_response_breached(now), done_first),
            "resolution": state(self.resolution_breached(now), done_resolution),
            "paused": self.paused_since is not None,
            "breached": self.breached(now),
        }

    # -- commands --------------------------------------------------------------------------

    def _check_time(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise InvalidTicket("at: an instant with a timezone")
        if at < self.last_at:
            raise InvalidTicket(
                f"occurred_at: {at.isoformat()} is before the ticket's last change"
                f" ({self.last_at.isoformat()})"
            )

    def _check_active(self, action: str) -> None:
        if self.status not in ("open", "pending"):
            raise InvalidTransition(f"cannot {action} a {self.status} ticket")

    class Assigned(Aggregate.Event):
        at: datetime
        owner: str | None
        team: str | None
        previous_owner: str | None
        by: str | None

    def assign(self, owner: str | None, team: str | None, at: datetime, by: str | None = None) -> bool:
        """Give the ticket to a staff member and/or team; False when nothing changes."""
        self._check_time(at)
        self._check_active("assign")
        if owner is None and team is None:
            raise InvalidTicket("owner or team: name at least one")
        new_team = team if team is not None else self.team
        if owner == self.owner and new_team == self.team:
            return False
        self._assigned(at=at, owner=owner, team=new_team, previous_owner=self.owner, by=by)
        return True

    @event(Assigned)
    def _assigned(
        self, at: datetime, owner: str | None, team: str | None, previous_owner: str | None, by: str | None
    ) -> None:
        self.owner = owner
        self.team = team
        self.last_at = at

    class Replied(Aggregate.Event):
        at: datetime
        author: str
        by: str | None
        content: Sealed
        request_id: str | None
        first_response: bool

    def reply(
        self, author: str, content: Sealed, at: datetime, by: str | None = None, request_id: str | None = None
    ) -> bool:
        """Record a message. The first staff reply is the first response (SLA). A
        customer's message brings a pending ticket back to open, and reopens a resolved
        one; staff cannot reply on a resolved or closed ticket. False when
        ``request_id`` was seen before (a retried request)."""
        if author not in ("staff", "customer"):
            raise InvalidTicket("author: staff or customer")
        if request_id is not None and request_id in self.reply_requests:
            return False
        self._check_time(at)
        if self.status == "closed" or (author == "staff" and self.status == "resolved"):
            raise InvalidTransition(f"cannot reply to a {self.status} ticket as {author}")
        if author == "customer" and self.status in ("pending", "resolved"):
            reason = "customer_replied"
            self._status_changed(at=at, previous=self.status, status="open", reason=reason, by=None)
        first = author == "staff" and self.first_response_at is None
        self._replied(
            at=at, author=author, by=by, content=content, request_id=request_id, first_response=first
        )
        return True

    @event(Replied)
    def _replied(
        self,
        at: datetime,
        author: str,
        by: str | None,
        content: Sealed,
        request_id: str | None,
        first_response: bool,
    ) -> None:
        if first_response:
            self.first_response_at = at
        self.messages.append({"at": at, "author": author, "by": by, "content": content})
        if request_id is not None:
            self.reply_requests.add(request_id)
        self.last_at = at

    class Escalated(Aggregate.Event):
        at: datetime
        to: str
        reason: str
        rule: str | None
        by: str | None

    def escalate(
        self, to: str, reason: str, at: datetime, rule: str | None = None, by: str | None = None
    ) -> None:
        self._check_time(at)
        self._check_active("escalate")
        if not to:
            raise InvalidTicket("to: where the ticket is escalated")
        if self.escalations and self.escalations[-1]["to"] == to:
            raise InvalidTransition(f"the ticket is escalated to {to} already")
        self._escalated(at=at, to=to, reason=reason, rule=rule, by=by)

    @event(Escalated)
    def _escalated(self, at: datetime, to: str, reason: str, rule: str | None, by: str | None) -> None:
        self.escalations.append({"at": at, "to": to, "reason": reason, "rule": rule, "by": by})
        self.last_at = at

    class StatusChanged(Aggregate.Event):
        at: datetime
        previous: str
        status: str
        reason: str | None
        by: str | None

    def change_status(
        self, status: str, at: datetime, reason: str | None = None, by: str | None = None
    ) -> None:
        """open ↔ pending, resolved → open (reopen) or closed. Resolving is ``resolve``."""
        if status not in STATUSES:
            raise InvalidTicket(f"status: one of {STATUSES}")
        self._check_time(at)
        if status == "resolved":
            raise InvalidTransition("resolve a ticket with its resolution (POST .../resolution)")
        if status not in TRANSITIONS[self.status]:
            raise InvalidTransition(f"a {self.status} ticket cannot become {status}")
        self._status_changed(at=at, previous=self.status, status=status, reason=reason, by=by)

    @event(StatusChanged)
    def _status_changed(
        self, at: datetime, previous: str, status: str, reason: str | None, by: str | None
    ) -> None:
        if previous == "pending" and self.paused_since is not None:
            self.paused_seconds += max(0.0, (at - self.paused_since).total_seconds())
            self.paused_since = None
        if status == "pending":
            self.paused_since = at
        if previous in ("resolved", "closed") and status == "open":
            self.reopened += 1
            self.resolved_at = None
        self.status = status
        self.last_at = at

    class Resolved(Aggregate.Event):
        at: datetime
        resolution: str
        by: str | None
        resolution_seconds: int
        first_response_seconds: int | None
        sla_met: bool

    def resolve(self, resolution: str, at: datetime, by: str | None = None) -> None:
        self._check_time(at)
        self._check_active("resolve")
        if not resolution:
            raise InvalidTicket("resolution: say how it was resolved")
        paused = self.paused_seconds
        if self.paused_since is not None:
            paused += max(0.0, (at - self.paused_since).total_seconds())
        working = max(0, int((at - self.opened_at).total_seconds() - paused))
        first = self.first_response_at
        first_seconds = int((first - self.opened_at).total_seconds()) if first else None
        first_met = (first or self.first_settled_at or at) <= self.first_response_due
        met = first_met and at <= self.resolution_due + timedelta(seconds=paused)
        self._resolved(
            at=at,
            resolution=resolution,
            by=by,
            resolution_seconds=working,
            first_response_seconds=first_seconds,
            sla_met=met,
        )

    @event(Resolved)
    def _resolved(
        self,
        at: datetime,
        resolution: str,
        by: str | None,
        resolution_seconds: int,
        first_response_seconds: int | None,
        sla_met: bool,
    ) -> None:
        if self.paused_since is not None:
            self.paused_seconds += max(0.0, (at - self.paused_since).total_seconds())
            self.paused_since = None
        self.status = "resolved"
        self.resolved_at = at
        if self.first_settled_at is None:
            self.first_settled_at = at
        self.resolution = resolution
        self.resolved_by = by
        self.last_at = at

    class Rated(Aggregate.Event):
        at: datetime
        score: int
        comment: Sealed | None

    def rate(self, score: int, at: datetime, comment: Sealed | None = None) -> None:
        """CSAT 1..5 from the customer, once, after the resolution."""
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise InvalidTicket("score: an integer 1..5")
        self._check_time(at)
        if self.satisfaction is not None:
            raise AlreadyRated("the ticket was rated already")
        if self.status not in ("resolved", "closed"):
            raise InvalidTransition(f"a {self.status} ticket cannot be rated before it is resolved")
        self._rated(at=at, score=score, comment=comment)

    @event(Rated)
    def _rated(self, at: datetime, score: int, comment: Sealed | None) -> None:
        self.satisfaction = score
        self.rating_comment = comment
        self.last_at = at
