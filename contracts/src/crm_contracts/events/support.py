"""Inquiry tickets published by the support service (topic ``crm.support.ticket``)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from crm_contracts.envelope import AwareDatetime, ContractModel, Event, SealedValue
from crm_contracts.topics import SUPPORT_TICKET


class TicketChannel(StrEnum):
    PHONE = "phone"
    EMAIL = "email"
    CHAT = "chat"
    STORE = "store"
    FORM = "form"
    LINE = "line"


class TicketPriority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class TicketOpenedPayload(ContractModel):
    ticket_id: uuid.UUID
    channel: TicketChannel
    category: str = Field(min_length=1, max_length=64, description="e.g. complaint, delivery, product")
    priority: TicketPriority = TicketPriority.NORMAL
    owner: str | None = Field(default=None, max_length=128)
    sla_due_at: AwareDatetime | None = None
    store_id: str | None = Field(default=None, max_length=64)
    order_id: str | None = Field(default=None, max_length=128)
    #: Subject and body, sealed: inquiries routinely contain personal data.
    content: SealedValue | None = None
    #: When the first staff response is due under the SLA (``sla_due_at`` is the resolution).
    first_response_due_at: AwareDatetime | None = None
    team: str | None = Field(default=None, max_length=128)


class TicketOpened(Event):
    TOPIC: ClassVar[str] = SUPPORT_TICKET.name
    event_type: Literal["ticket.opened"] = "ticket.opened"
    schema_version: Literal[1] = 1
    payload: TicketOpenedPayload


class TicketResolvedPayload(ContractModel):
    ticket_id: uuid.UUID
    resolution: str = Field(min_length=1, max_length=64, description="e.g. answered, refunded, replaced")
    resolved_by: str | None = Field(default=None, max_length=128)
    first_response_seconds: int | None = Field(default=None, ge=0)
    resolution_seconds: int = Field(ge=0)
    sla_met: bool | None = None
    satisfaction: int | None = Field(default=None, ge=1, le=5, description="CSAT 1..5 when rated")


class TicketResolved(Event):
    TOPIC: ClassVar[str] = SUPPORT_TICKET.name
    event_type: Literal["ticket.resolved"] = "ticket.resolved"
    schema_version: Literal[1] = 1
    payload: TicketResolvedPayload


class TicketAssignedPayload(ContractModel):
    ticket_id: uuid.UUID
    owner: str | None = Field(default=None, max_length=128, description="staff member now responsible")
    team: str | None = Field(default=None, max_length=128)
    previous_owner: str | None = Field(default=None, max_length=128)
    assigned_by: str | None = Field(default=None, max_length=128)


class TicketAssigned(Event):
    TOPIC: ClassVar[str] = SUPPORT_TICKET.name
    event_type: Literal["ticket.assigned"] = "ticket.assigned"
    schema_version: Literal[1] = 1
    payload: TicketAssignedPayload


class TicketRepliedPayload(ContractModel):
    ticket_id: uuid.UUID
    author: Literal["staff", "customer"]
    replied_by: str | None = Field(default=None, max_length=128, description="staff member (staff replies)")
    #: Set on the first staff reply only: seconds from opening to this reply.
    first_response_seconds: int | None = Field(default=None, ge=0)
    first_response_met: bool | None = None
    #: The message, sealed like the ticket's content.
    content: SealedValue | None = None


class TicketReplied(Event):
    TOPIC: ClassVar[str] = SUPPORT_TICKET.name
    event_type: Literal["ticket.replied"] = "ticket.replied"
    schema_version: Literal[1] = 1
    payload: TicketRepliedPayload


class TicketEscalatedPayload(ContractModel):
    ticket_id: uuid.UUID
    escalated_to: str = Field(min_length=1, max_length=128, description="e.g. store-manager:S001, sales")
    reason: str = Field(
        min_length=1, max_length=200, description="a code or short staff note, no personal data"
    )
    rule: str | None = Field(
        default=None, max_length=64, description="the routing rule that chose the target"
    )
    escalated_by: str | None = Field(default=None, max_length=128)


class TicketEscalated(Event):
    TOPIC: ClassVar[str] = SUPPORT_TICKET.name
    event_type: Literal["ticket.escalated"] = "ticket.escalated"
    schema_version: Literal[1] = 1
    payload: TicketEscalatedPayload


class TicketStatus(StrEnum):
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


class TicketStatusChangedPayload(ContractModel):
    ticket_id: uuid.UUID
    previous: TicketStatus
    status: TicketStatus
    reason: str | None = Field(default=None, max_length=200)
    changed_by: str | None = Field(default=None, max_length=128)


class TicketStatusChanged(Event):
    """Every status change other than the resolution itself (``ticket.resolved``):
    waiting on the customer, back to open, reopened, closed."""

    TOPIC: ClassVar[str] = SUPPORT_TICKET.name
    event_type: Literal["ticket.status_changed"] = "ticket.status_changed"
    schema_version: Literal[1] = 1
    payload: TicketStatusChangedPayload


class TicketRatedPayload(ContractModel):
    ticket_id: uuid.UUID
    satisfaction: int = Field(ge=1, le=5, description="CSAT 1..5")
    #: The customer's comment, sealed.
    comment: SealedValue | None = None


class TicketRated(Event):
    TOPIC: ClassVar[str] = SUPPORT_TICKET.name
    event_type: Literal["ticket.rated"] = "ticket.rated"
    schema_version: Literal[1] = 1
    payload: TicketRatedPayload


__all__ = [
    "TicketAssigned",
    "TicketChannel",
    "TicketEscalated",
    "TicketOpened",
    "TicketPriority",
    "TicketRated",
    "TicketReplied",
    "TicketResolved",
    "TicketStatus",
    "TicketStatusChanged",
]
