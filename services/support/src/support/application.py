"""The support application: tickets in, tickets out, as IDs and primitives.

The write side is event-sourced (``eventsourcing``; SQLite by default, PostgreSQL in
production); its store is the outbox the relay publishes. This layer

* blind-indexes the identifiers a customer gave (``crm_platform.identifiers``) and
  seals everything personal with the ticket's data key (``support.adapters.keys``)
  before the domain sees it;
* makes opening idempotent: the ticket id is the client's, or derived from the
  client's ``request_id``; a retry with the same request answers with the ticket
  already opened, a different request under the same id is a conflict;
* keeps the ticket list (``support.adapters.index``) caught up before each search;
* translates infrastructure errors into its own (``TicketNotFound``, ``ConcurrentUpdate``).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError

from crm_contracts.envelope import IdentifierKind
from crm_platform.crypto import BlindIndexer
from crm_platform.eventstore import project
from crm_platform.identifiers import blind_identifier
from support.adapters.index import Filters, TicketIndex
from support.adapters.keys import ContentErased, TicketKeys
from support.domain.policy import Policy
from support.domain.ticket import InvalidTransition, Ticket, TicketError

TICKET_NAMESPACE = uuid.UUID("0e7c6a53-2f4b-4c8e-9a51-6d3b8e2f1c47")
#: Identifier kinds a ticket may carry, strongest first (the customer key is the first).
KINDS: tuple[str, ...] = tuple(k.value for k in IdentifierKind)


class TicketNotFound(TicketError):
    pass


class TicketConflict(InvalidTransition):
    """The ticket id (or request id) belongs to a different ticket."""


class ConcurrentUpdate(InvalidTransition):
    pass


@dataclass(frozen=True)
class OpenTicket:
    channel: str
    category: str
    priority: str
    subject: str
    body: str
    at: datetime
    #: Identifiers as the customer gave them: {"email": "...", "phone": "..."}.
    identifiers: dict[str, str] = field(default_factory=dict)
    #: Anything else personal the customer told (name, callback time...): sealed.
    contact: dict[str, str] = field(default_factory=dict)
    store_id: str | None = None
    order_id: str | None = None
    owner: str | None = None
    team: str | None = None
    ticket_id: uuid.UUID | None = None
    request_id: str | None = None


def ticket_id_for(request_id: str) -> uuid.UUID:
    return uuid.uuid5(TICKET_NAMESPACE, f"request:{request_id}")


class SupportApplication(Application[uuid.UUID]):
    name = "support"

    def __init__(
        self,
        env: dict[str, Any],
        indexer: BlindIndexer,
        key_store: Callable[[SupportApplication], TicketKeys] | None,
        policy: Policy,
        index: TicketIndex | None = None,
    ) -> None:
        super().__init__(env=env)
        self.indexer = indexer
        #: built from the application: on PostgreSQL the keys live in the store's database
        self._keys = key_store(self) if key_store is not None else None
        self.policy = policy
        self.index = index

    @property
    def keys(self) -> TicketKeys:
        if self._keys is None:
            raise RuntimeError("this process has no key store")
        return self._keys

    # -- identifiers -----------------------------------------------------------------------

    def blind(self, identifiers: dict[str, str]) -> list[dict[str, str]]:
        """Blind indexes of the identifiers, strongest kind first; raises
        InvalidIdentifier naming the kind."""
        out = []
        for kind in KINDS:
            raw = identifiers.get(kind)
            if raw is not None:
                out.append({"kind": kind, "hash": blind_identifier(self.indexer, kind, raw).hash})
        return out

    def _fingerprint(self, cmd: OpenTicket) -> str:
        """A keyed digest of the request (not reversible: it covers personal content)."""
        doc = {
            "channel": cmd.channel,
            "category": cmd.category,
            "priority": cmd.priority,
            "subject": cmd.subject,
            "body": cmd.body,
            "identifiers": cmd.identifiers,
            "store_id": cmd.store_id,
            "order_id": cmd.order_id,
        }
        return hmac.new(
            self.indexer.key, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), hashlib.sha256
        ).hexdigest()

    # -- commands --------------------------------------------------------------------------

    def open(self, cmd: OpenTicket) -> tuple[Ticket, bool]:
        """(the ticket, True) when opened now; (the ticket, False) for a retry of the
        request that opened it. TicketConflict when the id names another ticket."""
        if cmd.ticket_id is not None:
            ticket_id = cmd.ticket_id
        elif cmd.request_id is not None:
            ticket_id = ticket_id_for(cmd.request_id)
        else:
            ticket_id = uuid.uuid4()
        fingerprint = self._fingerprint(cmd)
        existing = self._maybe(ticket_id)
        if existing is not None:
            return self._replayed(existing, fingerprint)
        identifiers = self.blind(cmd.identifiers)
        content = self.keys.seal(
            ticket_id,
            {
                "subject": cmd.subject,
                "body": cmd.body,
                "identifiers": cmd.identifiers,
                "contact": cmd.contact,
            },
            _context(ticket_id, "content"),
        )
        ticket = Ticket.open(
            ticket_id,
            channel=cmd.channel,
            category=cmd.category,
            priority=cmd.priority,
            identifiers=identifiers,
            content=content,
            at=cmd.at,
            policy=self.policy,
            fingerprint=fingerprint,
            store_id=cmd.store_id,
            order_id=cmd.order_id,
            owner=cmd.owner,
            team=cmd.team,
        )
        try:
            self.save(ticket)
        except IntegrityError:  # the same request, retried concurrently
            return self._replayed(self.ticket(ticket_id), fingerprint)
        return ticket, True

    @staticmethod
    def _replayed(existing: Ticket, fingerprint: str) -> tuple[Ticket, bool]:
        if not hmac.compare_digest(existing.fingerprint, fingerprint):
            raise TicketConflict(f"ticket {existing.id} exists with different content; use another id")
        return existing, False

    def _maybe(self, ticket_id: uuid.UUID) -> Ticket | None:
        try:
            return self.ticket(ticket_id)
        except TicketNotFound:
            return None

    def ticket(self, ticket_id: uuid.UUID) -> Ticket:
        try:
            found: Ticket = self.repository.get(ticket_id, projector_func=project)
        except AggregateNotFoundError:
            raise TicketNotFound(f"no ticket {ticket_id}") from None
        return found

    def _save(self, ticket: Ticket) -> Ticket:
        if ticket.pending_events:
            try:
                self.save(ticket)
            except IntegrityError:
                raise ConcurrentUpdate(f"ticket {ticket.id} changed concurrently; retry") from None
        return ticket

    def assign(
        self, ticket_id: uuid.UUID, owner: str | None, team: str | None, at: datetime, by: str | None
    ) -> Ticket:
        ticket = self.ticket(ticket_id)
        ticket.assign(owner, team, at, by)
        return self._save(ticket)

    def reply(
        self,
        ticket_id: uuid.UUID,
        author: str,
        body: str,
        at: datetime,
        by: str | None = None,
        request_id: str | None = None,
    ) -> Ticket:
        ticket = self.ticket(ticket_id)
        if request_id is not None and request_id in ticket.reply_requests:
            return ticket
        sealed = self.keys.seal(ticket_id, {"body": body}, _context(ticket_id, "reply"))
        ticket.reply(author, sealed, at, by, request_id)
        return self._save(ticket)

    def escalate(
        self, ticket_id: uuid.UUID, reason: str, at: datetime, to: str | None = None, by: str | None = None
    ) -> Ticket:
        """Escalate to ``to``, or where the routing rules send this ticket."""
        ticket = self.ticket(ticket_id)
        rule = None
        if to is None:
            routed = self.policy.route(ticket.category, ticket.priority, ticket.channel, ticket.store_id)
            if routed is None:
                raise TicketError("to: no routing rule matches this ticket; name where it goes")
            to, rule = routed
        ticket.escalate(to, reason, at, rule=rule, by=by)
        return self._save(ticket)

    def change_status(
        self, ticket_id: uuid.UUID, status: str, at: datetime, reason: str | None, by: str | None
    ) -> Ticket:
        ticket = self.ticket(ticket_id)
        ticket.change_status(status, at, reason, by)
        return self._save(ticket)

    def resolve(self, ticket_id: uuid.UUID, resolution: str, at: datetime, by: str | None) -> Ticket:
        ticket = self.ticket(ticket_id)
        ticket.resolve(resolution, at, by)
        return self._save(ticket)

    def rate(self, ticket_id: uuid.UUID, score: int, at: datetime, comment: str | None) -> Ticket:
        ticket = self.ticket(ticket_id)
        sealed = None
        if comment:
            sealed = self.keys.seal(ticket_id, {"comment": comment}, _context(ticket_id, "rating"))
        ticket.rate(score, at, sealed)
        return self._save(ticket)

    # -- reading ---------------------------------------------------------------------------

    def content(self, ticket: Ticket) -> dict[str, Any] | None:
        """The clear subject, body, contact, messages and comment; None once erased."""
        try:
            opened = self.keys.open(ticket.id, ticket.content, _context(ticket.id, "content"))
            messages = [
                {
                    "at": m["at"],
                    "author": m["author"],
                    "by": m["by"],
                    "body": self.keys.open(ticket.id, m["content"], _context(ticket.id, "reply"))["body"],
                }
                for m in ticket.messages
            ]
            comment = None
            if ticket.rating_comment is not None:
                comment = self.keys.open(ticket.id, ticket.rating_comment, _context(ticket.id, "rating"))[
                    "comment"
                ]
        except ContentErased:
            return None
        return {**opened, "messages": messages, "rating_comment": comment}

    def catch_up(self) -> int:
        """Bring the ticket list up to date with the store."""
        if self.index is None:
            raise RuntimeError("this process has no ticket index")

        def read(after: int, limit: int) -> list[tuple[int, uuid.UUID]]:
            notes = self.recorder.select_notifications(start=after, limit=limit, inclusive_of_start=False)
            return [(n.id, uuid.UUID(str(n.originator_id))) for n in notes]

        return self.index.catch_up(read, self.ticket, shredded=self.keys.is_erased)

    def search(self, filters: Filters, now: datetime, limit: int, offset: int) -> tuple[int, list[Ticket]]:
        assert self.index is not None
        self.catch_up()
        total, ids = self.index.search(filters, now, limit, offset)
        return total, [self.ticket(i) for i in ids]

    def erase_identifiers(self, hashes: list[str]) -> int:
        """Shred the content of every ticket that carried one of these identifiers."""
        assert self.index is not None
        self.catch_up()
        tickets = self.index.tickets_with(hashes)
        if not tickets:
            return 0
        erased = self.keys.erase(tickets)
        # The erased keys' bytes leave the store's files (WAL checkpoint / VACUUM FULL),
        # and the index forgets which identifiers the shredded tickets carried.
        self.keys.purge()
        self.index.forget_identifiers(tickets)
        return erased


def _context(ticket_id: uuid.UUID, part: str) -> str:
    """Associated data of a sealed value: it opens only as this part of this ticket."""
    return f"support.ticket:{ticket_id}:{part}"
