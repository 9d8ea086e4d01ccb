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


__all__ = ["TicketChannel", "TicketOpened", "TicketPriority", "TicketResolved"]
