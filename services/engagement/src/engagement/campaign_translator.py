"""Stored campaign and message events → published contract events (``crm.engagement.message``).

The campaigns application's counterpart of ``engagement.translator`` (membership): one
mapping per store, kept in its own module. Event ids derive from the store position,
so relay retries are recognised downstream. Message events are keyed by the recipient's
customer_id; a launch by ``campaign:<id>``. Internal facts (a message being prepared,
the campaign book, opt-out bookkeeping, pauses) publish nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from crm_contracts.envelope import Event, deterministic_event_id
from crm_contracts.events.messaging import (
    CampaignLaunched,
    CampaignLaunchedPayload,
    MessageBounced,
    MessageBouncedPayload,
    MessageClicked,
    MessageClickedPayload,
    MessageFailed,
    MessageFailedPayload,
    MessageOpened,
    MessageOptedOut,
    MessagePayload,
    MessageSent,
    MessageSentPayload,
    MessageSkipped,
    MessageSkippedPayload,
)
from crm_platform.relay import StoredFact
from engagement.domain.campaign import ENHANCED_STATUS, Campaign, Message

PRODUCER = "engagement.relay"
#: Anything shaped like an e-mail address, kept out of a published failure reason (the
#: dispatcher records codes only; this guards reasons recorded before it did).
_ADDRESS = re.compile(r"[^\s<>()\[\]:;,\"']+@[^\s<>()\[\]:;,\"']+")


class CampaignTranslator:
    def __init__(
        self, campaign: Callable[[uuid.UUID], Campaign], message: Callable[[uuid.UUID], Message]
    ) -> None:
        self._campaign = campaign
        self._message = message
        #: message id -> (campaign, customer, channel, variant, links): fixed once created
        self._cache: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID, str | None, str | None, list[str]]] = {}

    def _facts(self, mid: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID, str | None, str | None, list[str]]:
        facts = self._cache.get(mid)
        if facts is None:
            m = self._message(mid)
            facts = (m.campaign_id, m.customer_id, m.channel, m.variant, list(m.links))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[mid] = facts
        return facts

    def __call__(self, fact: StoredFact) -> Sequence[Event]:
        event: Any = fact.domain_event
        at = getattr(event, "at", None) or event.timestamp

        def common(key: str) -> dict[str, Any]:
            return {
                "event_id": deterministic_event_id(event.timestamp, fact.source, fact.notification_id),
                "occurred_at": at,
                "recorded_at": event.timestamp,
                "producer": PRODUCER,
                "customer_key": key,
                "trace": fact.trace,
            }

        if isinstance(event, Campaign.Launched):
            c = self._campaign(event.originator_id)
            holdout = sum(r.holdout for r in c.recipients)
            audience = f"segment:{c.audience['segment']}" if "segment" in c.audience else "list"
            return [
                CampaignLaunched(
                    **common(f"campaign:{c.id}"),
                    payload=CampaignLaunchedPayload(
                        campaign_id=c.id,
                        name=c.name[:200],
                        channels=tuple(c.channels),
                        audience=audience[:80],
                        recipients=len(c.recipients),
                        holdout=holdout,
                        holdout_pct=c.holdout_pct,
                        variants=len(c.variants),
                        send_at=c.send_at,
                        attribution_days=c.attribution_days,
                    ),
                )
            ]
        if isinstance(event, Message.Created):
            if event.status != "skipped":
                return []  # prepared: its outcome is what gets published
            self._cache[event.originator_id] = (
                event.campaign_id,
                event.customer_id,
                event.channel,
                event.variant,
                [],
            )
            return [
                MessageSkipped(
                    **common(str(event.customer_id)),
                    payload=MessageSkippedPayload(
                        campaign_id=event.campaign_id,
                        message_id=event.originator_id,
                        customer_id=event.customer_id,
                        channel=event.channel,
                        variant=event.variant,
                        reason=event.reason,
                    ),
                )
            ]
        if not isinstance(
            event,
            Message.Sent
            | Message.Failed
            | Message.Opened
            | Message.Clicked
            | Message.Bounced
            | Message.OptedOut,
        ):
            return []
        campaign_id, customer_id, channel, variant, links = self._facts(event.originator_id)
        base: dict[str, Any] = {
            "campaign_id": campaign_id,
            "message_id": event.originator_id,
            "customer_id": customer_id,
            "channel": channel,
            "variant": variant,
        }
        key = common(str(customer_id))
        if isinstance(event, Message.Sent):
            return [MessageSent(**key, payload=MessageSentPayload(**base, attempts=event.attempts))]
        if isinstance(event, Message.Failed):
            payload = MessageFailedPayload(
                **base,
                reason=_ADDRESS.sub("<address>", event.reason)[:200],
                attempts=event.attempts,
                permanent=event.permanent,
            )
            return [MessageFailed(**key, payload=payload)]
        if isinstance(event, Message.Opened):
            return [MessageOpened(**key, payload=MessagePayload(**base))]
        if isinstance(event, Message.Clicked):
            link = links[event.link_no] if event.link_no < len(links) else ""
            host = (urlsplit(link).hostname or "")[:253]
            return [
                MessageClicked(
                    **key, payload=MessageClickedPayload(**base, link_no=event.link_no, link_host=host)
                )
            ]
        if isinstance(event, Message.Bounced):
            # codes only: a reason recorded before the API refused free text is left out
            reason = event.reason if re.fullmatch(ENHANCED_STATUS, event.reason) else ""
            bounced = MessageBouncedPayload(**base, kind=event.kind, reason=reason)
            return [MessageBounced(**key, payload=bounced)]
        return [MessageOptedOut(**key, payload=MessagePayload(**base))]
