"""The campaigns application: event-sourced campaigns, messages and opt-outs.

It lives in engagement's store beside membership, as its own eventsourcing application
(``campaigns``): with SQLite its own file (``var/engagement/campaigns.sqlite``), with
PostgreSQL its own tables in engagement's database (``campaigns_events``,
``campaigns_tracking``) — so it has its own notification log, relayed to Kafka by its
own outbox relay (``engagement.campaign-relay``, run by ``engagement relay``).

Commands take and return ids and primitives; infrastructure errors become domain errors
(``AggregateNotFoundError`` → ``CampaignNotFound``; the store's uniqueness on a message id
→ ``MessageExists``, what makes sending idempotent).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from crm_platform.eventstore import project
from engagement.domain.campaign import (
    Campaign,
    CampaignError,
    CampaignStateError,
    Message,
    OptOut,
    message_id,
    opt_out_id,
)

BOOK_ID = uuid.UUID("6a7f0c55-3c1b-4d8e-8f2a-1e9b7c3d5a40")


class CampaignNotFound(CampaignError):
    pass


_PLAN = (
    "name",
    "channels",
    "audience",
    "variants",
    "rules",
    "default_variant",
    "holdout_pct",
    "attribution_days",
    "quiet_hours",
    "link_hosts",
)


def _same_plan(campaign: Campaign, spec: dict[str, Any]) -> bool:
    """What a retried create must repeat (its send_at and created_at may differ)."""
    return all(getattr(campaign, key) == spec[key] for key in _PLAN)


class MessageNotFound(CampaignError):
    pass


class MessageExists(CampaignError):
    """A message for this (campaign, customer) is recorded already: never send twice."""


class ConcurrentCampaignUpdate(CampaignError):
    pass


class CampaignBook(Aggregate):
    """Every campaign's id, in creation order: what lists and the dispatcher scan (the
    store has no query by type). Saved in the same transaction as the new campaign."""

    class Opened(Aggregate.Created):
        pass

    @event(Opened)
    def __init__(self) -> None:
        self.campaigns: list[uuid.UUID] = []

    class Listed(Aggregate.Event):
        campaign_id: uuid.UUID

    @event(Listed)
    def list_campaign(self, campaign_id: uuid.UUID) -> None:
        self.campaigns.append(campaign_id)

    @classmethod
    def open(cls) -> CampaignBook:
        return cls._create(cls.Opened, id=BOOK_ID)


def campaigns_env(base: dict[str, Any]) -> dict[str, Any]:
    """Engagement's store environment, with the campaigns' own SQLite file."""
    env = dict(base)
    if "SQLITE_DBNAME" in env:
        env["SQLITE_DBNAME"] = str(Path(env["SQLITE_DBNAME"]).with_name("campaigns.sqlite"))
    return env


class CampaignApplication(Application[uuid.UUID]):
    name = "campaigns"

    # -- campaigns -------------------------------------------------------------------------

    def create(self, **spec: Any) -> Campaign:
        return self.create_once(**spec)[0]

    def create_once(self, **spec: Any) -> tuple[Campaign, bool]:
        """The campaign, and whether it is new. Given a ``campaign_id`` (derived from the
        client's request id) that exists already, the same campaign again is the one
        there (a retried request); a different one under that id is refused."""
        if spec.get("campaign_id") is not None:
            with contextlib.suppress(CampaignNotFound):
                existing = self.campaign(spec["campaign_id"])
                if _same_plan(existing, spec):
                    return existing, False
                raise CampaignStateError(
                    f"request id already used for campaign {existing.id}, with another plan"
                )
        campaign = Campaign.create(**spec)
        for _ in range(5):
            book = self._book()
            book.list_campaign(campaign.id)
            try:
                self.save(campaign, book)
                return campaign, True
            except IntegrityError:  # another process listed a campaign meanwhile
                if spec.get("campaign_id") is not None:
                    with contextlib.suppress(CampaignNotFound):  # ... or created this one
                        if _same_plan(existing := self.campaign(campaign.id), spec):
                            return existing, False
                        raise CampaignStateError(
                            f"request id already used for campaign {campaign.id}"
                        ) from None
                continue
        raise ConcurrentCampaignUpdate("could not list the campaign; retry")

    def _book(self) -> CampaignBook:
        try:
            book: CampaignBook = self.repository.get(BOOK_ID, projector_func=project)
        except AggregateNotFoundError:
            return CampaignBook.open()
        return book

    def campaign_ids(self) -> list[uuid.UUID]:
        return list(self._book().campaigns)

    def campaign(self, campaign_id: uuid.UUID) -> Campaign:
        try:
            found: Campaign = self.repository.get(campaign_id, projector_func=project)
        except AggregateNotFoundError:
            raise CampaignNotFound(f"no campaign {campaign_id}") from None
        if not isinstance(found, Campaign):
            raise CampaignNotFound(f"no campaign {campaign_id}")
        return found

    def _change(self, campaign: Campaign) -> Campaign:
        try:
            self.save(campaign)
        except IntegrityError:
            raise ConcurrentCampaignUpdate(f"campaign {campaign.id} changed concurrently; retry") from None
        return campaign

    def launch(self, campaign_id: uuid.UUID, customer_ids: Sequence[uuid.UUID], at: datetime) -> Campaign:
        campaign = self.campaign(campaign_id)
        campaign.launch(customer_ids, at)
        return self._change(campaign)

    def pause(self, campaign_id: uuid.UUID, at: datetime) -> Campaign:
        campaign = self.campaign(campaign_id)
        campaign.pause(at)
        return self._change(campaign)

    def resume(self, campaign_id: uuid.UUID, at: datetime) -> Campaign:
        campaign = self.campaign(campaign_id)
        campaign.resume(at)
        return self._change(campaign)

    def cancel(self, campaign_id: uuid.UUID, at: datetime, reason: str) -> Campaign:
        campaign = self.campaign(campaign_id)
        campaign.cancel(at, reason)
        return self._change(campaign)

    def complete(self, campaign_id: uuid.UUID, at: datetime) -> Campaign:
        campaign = self.campaign(campaign_id)
        campaign.complete(at)
        return self._change(campaign)

    # -- messages --------------------------------------------------------------------------

    def message(self, mid: uuid.UUID) -> Message:
        try:
            found: Message = self.repository.get(mid, projector_func=project)
        except AggregateNotFoundError:
            raise MessageNotFound(f"no message {mid}") from None
        if not isinstance(found, Message):
            raise MessageNotFound(f"no message {mid}")
        return found

    def maybe_message(self, campaign_id: uuid.UUID, customer_id: uuid.UUID) -> Message | None:
        try:
            return self.message(message_id(campaign_id, customer_id))
        except MessageNotFound:
            return None

    def messages(self, campaign: Campaign) -> Iterator[tuple[uuid.UUID, bool, Message | None]]:
        """Each frozen recipient, whether in the holdout, and its message so far."""
        for r in campaign.recipients:
            yield r.customer_id, r.holdout, self.maybe_message(campaign.id, r.customer_id)

    def record_new(self, message: Message) -> Message:
        """Record a prepared or skipped message; ``MessageExists`` if one is already."""
        try:
            self.save(message)
        except IntegrityError:
            raise MessageExists(f"message {message.id} is recorded already") from None
        return message

    def update(self, message: Message) -> Message:
        if message.pending_events:
            try:
                self.save(message)
            except IntegrityError:
                raise ConcurrentCampaignUpdate(f"message {message.id} changed concurrently; retry") from None
        return message

    def respond(self, mid: uuid.UUID, kind: str, at: datetime, link_no: int = 0) -> tuple[Message, bool]:
        """Record an open or a click (once each; retried on a concurrent response)."""
        for _ in range(5):
            message = self.message(mid)
            changed = message.open(at) if kind == "open" else message.click(link_no, at)
            try:
                self.update(message)
            except ConcurrentCampaignUpdate:
                continue
            return message, changed
        raise ConcurrentCampaignUpdate(f"message {mid} changed concurrently; retry")

    def bounce(self, mid: uuid.UUID, kind: str, reason: str, at: datetime) -> bool:
        message = self.message(mid)
        changed = message.bounce(kind, reason, at)
        self.update(message)
        return changed

    # -- opt-outs --------------------------------------------------------------------------

    def opt_out(self, mid: uuid.UUID, at: datetime) -> tuple[Message, OptOut]:
        """Unsubscribe the message's recipient from its channel: on the message (the
        published ``message.opted_out``) and as an ``OptOut`` the dispatcher honours."""
        message = self.message(mid)
        if message.channel is None:
            raise CampaignError("this message was never sent on a channel")
        message.opt_out(at)
        existing = self.opt_out_of(message.customer_id, message.channel)
        record = existing or OptOut.record(message.customer_id, message.channel, message.id, at)
        try:
            self.save(message, record)
        except IntegrityError:  # a second click on the link, at the same moment
            return self.message(mid), self.opt_out_of(message.customer_id, message.channel) or record
        return message, record

    def opt_out_of(self, customer_id: uuid.UUID, channel: str) -> OptOut | None:
        try:
            found: OptOut = self.repository.get(opt_out_id(customer_id, channel), projector_func=project)
        except AggregateNotFoundError:
            return None
        return found

    def opt_out_forwarded(self, customer_id: uuid.UUID, channel: str, at: datetime) -> None:
        record = self.opt_out_of(customer_id, channel)
        if record is not None and record.forwarded_at is None:
            record.forwarded(at)
            with contextlib.suppress(IntegrityError):  # another process recorded the same fact
                self.save(record)

    def opt_outs_after(self, position: int, limit: int = 500) -> tuple[list[OptOut], int]:
        """Opt-outs recorded after notification ``position`` (the store's log, filtered by
        the event's topic), and the position reached: a reader that keeps its position
        reads each opt-out once instead of scanning every message of every campaign."""
        notifications = self.recorder.select_notifications(
            start=position, limit=limit, topics=[get_topic(OptOut.Recorded)], inclusive_of_start=False
        )
        found = []
        for n in notifications:
            record = self.opt_out_of(*_opt_out_key(self.mapper.to_domain_event(n)))
            if record is not None:
                found.append(record)
        return found, (notifications[-1].id if notifications else position)


def _opt_out_key(recorded: Any) -> tuple[uuid.UUID, str]:
    return recorded.customer_id, recorded.channel
