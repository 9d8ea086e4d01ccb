"""Stored ticket events → published contract events on ``crm.support.ticket`` (the only
such mapping in support).

Every event of a ticket carries the ticket's identifiers (blind indexes) and is keyed by
the strongest one — the customer key engagement and identity compute the same way — so
one customer's tickets, orders and decisions share a partition and stay in order. A
ticket nobody could be identified on is keyed by itself (``anonymous:ticket:<id>``).
Event ids derive from the store position: a relay retry re-sends the same ids.
Content travels as the store holds it: sealed with the ticket's key, never clear.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from crm_contracts.envelope import Event, Identifier, IdentifierKind, SealedValue, deterministic_event_id
from crm_contracts.events.support import (
    TicketAssigned,
    TicketAssignedPayload,
    TicketEscalated,
    TicketEscalatedPayload,
    TicketOpened,
    TicketOpenedPayload,
    TicketRated,
    TicketRatedPayload,
    TicketReplied,
    TicketRepliedPayload,
    TicketResolved,
    TicketResolvedPayload,
    TicketStatus,
    TicketStatusChanged,
    TicketStatusChangedPayload,
)
from crm_platform.relay import StoredFact
from support.domain.ticket import Ticket

PRODUCER = "support.relay"


def customer_key(ticket_id: uuid.UUID, identifiers: Sequence[dict[str, str]]) -> str:
    return identifiers[0]["hash"] if identifiers else f"anonymous:ticket:{ticket_id}"


def _sealed(value: dict[str, str] | None) -> SealedValue | None:
    return None if value is None else SealedValue.model_validate(value)


class TicketTranslator:
    def __init__(self, load: Callable[[uuid.UUID], Ticket]) -> None:
        self._load = load
        #: ticket id -> (identifiers, opened_at, first_response_due): they never change
        self._tickets: dict[uuid.UUID, tuple[tuple[Identifier, ...], Any, Any]] = {}

    def _ticket(self, event: Any) -> tuple[tuple[Identifier, ...], Any, Any]:
        known = self._tickets.get(event.originator_id)
        if known is None:
            source = event if isinstance(event, Ticket.Opened) else self._load(event.originator_id)
            ids = tuple(
                Identifier(kind=IdentifierKind(i["kind"]), hash=i["hash"]) for i in source.identifiers
            )
            known = (ids, source.opened_at, source.first_response_due)
            if len(self._tickets) > 100_000:
                self._tickets.clear()
            self._tickets[event.originator_id] = known
        return known

    def __call__(self, fact: StoredFact) -> Sequence[Event]:
        event: Any = fact.domain_event
        if not isinstance(event, Ticket.Event):
            return []
        identifiers, opened_at, first_due = self._ticket(event)
        ticket_id = event.originator_id
        at = getattr(event, "at", None) or getattr(event, "opened_at", None) or event.timestamp
        common: dict[str, Any] = {
            "event_id": deterministic_event_id(event.timestamp, fact.source, fact.notification_id),
            "occurred_at": at,
            "recorded_at": event.timestamp,
            "producer": PRODUCER,
            "customer_key": customer_key(ticket_id, [{"hash": i.hash} for i in identifiers]),
            "identifiers": identifiers,
            "trace": fact.trace,
        }
        if isinstance(event, Ticket.Opened):
            return [
                TicketOpened(
                    **common,
                    payload=TicketOpenedPayload(
                        ticket_id=ticket_id,
                        channel=event.channel,
                        category=event.category,
                        priority=event.priority,
                        owner=event.owner,
                        team=event.team,
                        sla_due_at=event.resolution_due,
                        first_response_due_at=event.first_response_due,
                        store_id=event.store_id,
                        order_id=event.order_id,
                        content=_sealed(event.content),
                    ),
                )
            ]
        if isinstance(event, Ticket.Assigned):
            payload_a = TicketAssignedPayload(
                ticket_id=ticket_id,
                owner=event.owner,
                team=event.team,
                previous_owner=event.previous_owner,
                assigned_by=event.by,
            )
            return [TicketAssigned(**common, payload=payload_a)]
        if isinstance(event, Ticket.Replied):
            first = int((event.at - opened_at).total_seconds()) if event.first_response else None
            payload_r = TicketRepliedPayload(
                ticket_id=ticket_id,
                author=event.author,
                replied_by=event.by,
                first_response_seconds=first,
                first_response_met=(event.at <= first_due) if event.first_response else None,
                content=_sealed(event.content),
            )
            return [TicketReplied(**common, payload=payload_r)]
        if isinstance(event, Ticket.Escalated):
            payload_e = TicketEscalatedPayload(
                ticket_id=ticket_id,
                escalated_to=event.to,
                reason=event.reason[:200],
                rule=event.rule,
                escalated_by=event.by,
            )
            return [TicketEscalated(**common, payload=payload_e)]
        if isinstance(event, Ticket.StatusChanged):
            payload_s = TicketStatusChangedPayload(
                ticket_id=ticket_id,
                previous=TicketStatus(event.previous),
                status=TicketStatus(event.status),
                reason=event.reason[:200] if event.reason else None,
                changed_by=event.by,
            )
            return [TicketStatusChanged(**common, payload=payload_s)]
        if isinstance(event, Ticket.Resolved):
            payload_v = TicketResolvedPayload(
                ticket_id=ticket_id,
                resolution=event.resolution,
                resolved_by=event.by,
                first_response_seconds=event.first_response_seconds,
                resolution_seconds=event.resolution_seconds,
                sla_met=event.sla_met,
            )
            return [TicketResolved(**common, payload=payload_v)]
        if isinstance(event, Ticket.Rated):
            payload_t = TicketRatedPayload(
                ticket_id=ticket_id, satisfaction=event.score, comment=_sealed(event.comment)
            )
            return [TicketRated(**common, payload=payload_t)]
        return []
