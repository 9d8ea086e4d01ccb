"""What sources send to the ingestion API: one fact, with the identifiers observed in clear.

The payloads *are* the published contracts' payloads, so an event is validated exactly
as consumers will read it. Identifiers arrive as raw values (a member card read at the
register, the e-mail typed in the web shop) and never leave this service in clear: the
edge normalises them and keeps only their blind index (``crm_platform.identifiers``).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from crm_contracts.envelope import AwareDatetime
from crm_contracts.events.commerce import (
    InteractionPayload,
    OnlineOrderCompletedPayload,
    OrderReturnedPayload,
    StoreOrderCompletedPayload,
)

#: A single event's JSON beyond this is refused (413 alone, ``rejected`` in a batch).
MAX_EVENT_BYTES = 64 * 1024
#: Events per batch request (each batch is also bounded by the request body limit).
MAX_BATCH_EVENTS = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObservedIdentifiers(_Strict):
    """Identifiers seen with the fact, as the source knows them (normalised here)."""

    member_no: str | None = Field(default=None, max_length=128)
    pos_card: str | None = Field(default=None, max_length=128)
    ec_account: str | None = Field(default=None, max_length=128)
    line_id: str | None = Field(default=None, max_length=128)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, max_length=128)


class _Incoming(_Strict):
    event_id: uuid.UUID | None = Field(
        default=None,
        description="set it to make retries harmless; without it an order's id is derived from its "
        "source and order id, an interaction gets a fresh one",
    )
    occurred_at: AwareDatetime = Field(description="when it happened, with a UTC offset")
    identifiers: ObservedIdentifiers = Field(default_factory=ObservedIdentifiers)


class StoreOrderIn(_Incoming):
    type: Literal["store_order"]
    payload: StoreOrderCompletedPayload


class OnlineOrderIn(_Incoming):
    type: Literal["online_order"]
    payload: OnlineOrderCompletedPayload


class ReturnIn(_Incoming):
    type: Literal["return"]
    payload: OrderReturnedPayload


class InteractionIn(_Incoming):
    type: Literal["interaction"]
    payload: InteractionPayload


Incoming = Annotated[
    StoreOrderIn | OnlineOrderIn | ReturnIn | InteractionIn,
    Field(discriminator="type"),
]
incoming = TypeAdapter[StoreOrderIn | OnlineOrderIn | ReturnIn | InteractionIn](Incoming)


class EventResult(BaseModel):
    index: int
    status: Literal["accepted", "duplicate", "rejected", "unavailable"]
    event_id: uuid.UUID | None = None
    errors: list[dict[str, str]] = Field(default_factory=list)


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    results: list[EventResult]
