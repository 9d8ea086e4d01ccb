"""Campaign messages, published on ``crm.engagement.message``.

Engagement's campaigns send one message per (campaign, customer) on one channel; every
decision about that message is an event: sent, skipped (and why), failed, then the
responses — bounced, opened, clicked, opted out. Events are keyed by the recipient's
``customer_id`` (pseudonymous; analytics attributes it to the customer it belongs to
*now* through identity_map, so a later merge moves the message with the customer).
No personal data: never an address, a name or the rendered text — the variant id says
which text it was, and the campaign (in engagement's store) how it was rendered.
``campaign.launched`` is keyed by ``campaign:<id>``: it belongs to no customer.
"""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field

from crm_contracts.envelope import AwareDatetime, ContractModel, Event
from crm_contracts.topics import ENGAGEMENT_MESSAGE

MessageChannel = Literal["email", "sms", "line", "app_push"]

#: Why a recipient got no message. ``holdout``: the control group, kept out on purpose
#: to measure uplift; the others name what was missing.
SkipReason = Literal[
    "holdout",
    "no_consent",
    "opted_out",
    "no_address",
    "unknown_customer",
    "customer_inactive",
    "campaign_cancelled",
]


class CampaignLaunchedPayload(ContractModel):
    campaign_id: uuid.UUID
    name: str = Field(min_length=1, max_length=200)
    channels: tuple[MessageChannel, ...] = Field(min_length=1, max_length=4)
    audience: str = Field(max_length=80, description="segment:<name> or list")
    recipients: int = Field(ge=0, description="audience size frozen at launch, holdout included")
    holdout: int = Field(ge=0, description="recipients kept out as the control group")
    holdout_pct: float = Field(ge=0, le=50)
    variants: int = Field(ge=1)
    send_at: AwareDatetime
    attribution_days: int = Field(ge=1, le=90, description="conversion window the report uses")


class CampaignLaunched(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["campaign.launched"] = "campaign.launched"
    schema_version: Literal[1] = 1
    payload: CampaignLaunchedPayload


class MessagePayload(ContractModel):
    """What every message event names."""

    campaign_id: uuid.UUID
    message_id: uuid.UUID = Field(description="uuid5 of (campaign, customer): one message per pair")
    customer_id: uuid.UUID
    channel: MessageChannel | None = Field(default=None, description="None when skipped before a channel")
    variant: str | None = Field(default=None, max_length=64)


class MessageSentPayload(MessagePayload):
    attempts: int = Field(ge=1, description="tries until the provider accepted it")


class MessageSent(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["message.sent"] = "message.sent"
    schema_version: Literal[1] = 1
    payload: MessageSentPayload


class MessageSkippedPayload(MessagePayload):
    reason: SkipReason


class MessageSkipped(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["message.skipped"] = "message.skipped"
    schema_version: Literal[1] = 1
    payload: MessageSkippedPayload


class MessageFailedPayload(MessagePayload):
    reason: str = Field(
        max_length=200,
        description="why, as codes only: e.g. 'SMTP 550 5.1.1', 'webhook answered 429', "
        "'SMTP outcome unknown: …' (never retried), 'interrupted: outcome unknown'; "
        "never the provider's text, which may quote an address",
    )
    attempts: int = Field(ge=0)
    permanent: bool = Field(description="False: given up after retries on temporary errors")


class MessageFailed(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["message.failed"] = "message.failed"
    schema_version: Literal[1] = 1
    payload: MessageFailedPayload


class MessageBouncedPayload(MessagePayload):
    kind: Literal["hard", "soft"]
    reason: str = Field(
        default="",
        max_length=200,
        description="the RFC 3463 enhanced status code (e.g. '5.1.1'), or empty; never the bounce's "
        "text, which may quote an address",
    )


class MessageBounced(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["message.bounced"] = "message.bounced"
    schema_version: Literal[1] = 1
    payload: MessageBouncedPayload


class MessageOpened(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["message.opened"] = "message.opened"
    schema_version: Literal[1] = 1
    payload: MessagePayload


class MessageClickedPayload(MessagePayload):
    link_no: int = Field(ge=0, le=999, description="which link of the message (0-based)")
    link_host: str = Field(max_length=253, description="the target's host (the path may be personal)")


class MessageClicked(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["message.clicked"] = "message.clicked"
    schema_version: Literal[1] = 1
    payload: MessageClickedPayload


class MessageOptedOut(Event):
    """The recipient unsubscribed from the message's channel (through its link)."""

    TOPIC: ClassVar[str] = ENGAGEMENT_MESSAGE.name
    event_type: Literal["message.opted_out"] = "message.opted_out"
    schema_version: Literal[1] = 1
    payload: MessagePayload


__all__ = [
    "CampaignLaunched",
    "MessageBounced",
    "MessageClicked",
    "MessageFailed",
    "MessageOpened",
    "MessageOptedOut",
    "MessageSent",
    "MessageSkipped",
]
