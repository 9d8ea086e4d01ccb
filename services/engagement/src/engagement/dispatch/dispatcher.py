"""The dispatcher (``python -m engagement dispatcher``): sends the messages that are due.

Every ``CRM_DISPATCH_POLL_S`` it reads the launched campaigns whose send time has come
and, per frozen recipient without a message yet:

1. holdout → recorded as skipped (``holdout``), never contacted;
2. for each of the campaign's channels in order, decides whether it may be used (a local
   opt-out, the consent view, then identity's answer with the address — see
   ``consent.decide``); none may → skipped with the reason;
3. chooses the variant (rules over the customer's facts), renders it, and records the
   message as *prepared* — the store refuses a second message for the same (campaign,
   customer), so from here on nothing can send it twice;
4. hands it to the channel's provider, rate-limited per channel, retrying temporary
   failures with exponential backoff, and records sent or failed.

A crash between 3 and 4 leaves a prepared message; once it is older than the lease
(``CRM_DISPATCH_LEASE_S``, longer than any send can take) the dispatcher records it as
failed (``interrupted: outcome unknown``) rather than risk a second mail — at start and
every lease period after. A message a live dispatcher is still sending is younger than
the lease, so it is left alone; should two dispatchers still race on one message, the
loser's update is refused (``ConcurrentCampaignUpdate``) and only that recipient is
given up, not the round. Quiet hours defer a campaign (nothing is recorded; it resumes
when they end); they are checked again before every slice of recipients, so a long send
stops when they begin.

A recipient merged into another customer since launch is skipped as ``customer_inactive``
(identity answers for the survivor, whose own message — if it is a recipient too — is
the one that counts; the survivor is never messaged twice, nor on behalf of a customer
it absorbed). A local opt-out counts for the customer and for every customer merged
into it (the consent view knows the merges). A paused or cancelled campaign
stops between recipients; a cancelled one's unsent recipients are recorded as skipped.
When every recipient has an outcome the campaign completes. Another service being down
(identity, analytics) leaves the recipient for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from engagement.campaigns import CampaignApplication, ConcurrentCampaignUpdate, MessageExists
from engagement.dispatch.clients import ServiceClients, ServiceUnavailable
from engagement.dispatch.consent import ConsentView, decide
from engagement.dispatch.providers import (
    OutcomeUnknown,
    Outgoing,
    PermanentFailure,
    Provider,
    RateLimiter,
    TemporaryFailure,
)
from engagement.dispatch.render import TemplateLimitError, TemplateWorkers, track
from engagement.dispatch.settings import MessagingSettings
from engagement.domain.campaign import (
    Campaign,
    CampaignError,
    CustomerFacts,
    Message,
    age_band,
    choose_variant,
    message_id,
    segments_named,
)
from engagement.tracking import TrackingSigner

log = logging.getLogger(__name__)
#: Skip reasons from the most to the least telling, when channels disagree.
_REASON_ORDER = ("opted_out", "no_consent", "customer_inactive", "no_address", "unknown_customer")
_FACT_FIELDS = {"rank", "prefecture", "age_band", "gender", "birth_month"}


@dataclass
class RoundReport:
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    deferred: int = 0
    completed: list[uuid.UUID] = field(default_factory=list)


class Dispatcher:
    def __init__(
        self,
        app: CampaignApplication,
        clients: ServiceClients,
        view: ConsentView,
        providers: Mapping[str, Provider],
        settings: MessagingSettings,
        signer: TrackingSigner,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Any] = asyncio.sleep,
        templates: TemplateWorkers | None = None,
    ) -> None:
        self.app = app
        #: renders every message in worker processes, within the templates' bounds
        self.templates = templates or TemplateWorkers(
            settings.template_workers, settings.template_time_limit_s
        )
        self.clients = clients
        self.view = view
        self.providers = dict(providers)
        self.settings = settings
        self.signer = signer
        self.clock = clock
        self._sleep = sleep
        self._limits = {ch: RateLimiter(settings.dispatch_rate_per_s) for ch in providers}
        self._tz = ZoneInfo(settings.dispatch_timezone)
        self._base = settings.tracking_base_url.rstrip("/")
        #: per campaign, the recipients known to have a message: they are never read
        #: again, so a round over a large campaign reads only what is left. A cache of
        #: the store (which refuses a second message per campaign and customer), kept
        #: for campaigns still sending only: released when one is over.
        self._recorded: dict[uuid.UUID, set[uuid.UUID]] = {}
        #: campaigns that are over (completed, or cancelled and their rest skipped)
        self._finished: set[uuid.UUID] = set()
        #: the store position up to which opt-outs were passed on to identity
        self._opt_out_position = 0
        #: when abandoned prepared messages were last looked for
        self._recovered_at: datetime | None = None

    # -- the loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if self._recovered_at is None or (
                    (self.clock() - self._recovered_at).total_seconds() >= self.settings.dispatch_lease_s
                ):
                    await asyncio.to_thread(self.recover)
                await self.run_once(stop)
                await self.forward_opt_outs()
            except Exception:  # a store or a service briefly away: the next round retries
                log.exception("dispatch round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.dispatch_poll_s)

    def recover(self) -> int:
        """Prepared messages a crash left without an outcome become failed, not resent.

        Only those prepared longer than the lease ago: a younger one may be in the hands
        of a live dispatcher (another process, or this one before a restart)."""
        now = self.clock()
        self._recovered_at = now
        resolved = 0
        for cid in self.app.campaign_ids():
            campaign = self.app.campaign(cid)
            if campaign.status not in ("launched", "paused", "cancelled"):
                continue
            for _, _, message in self.app.messages(campaign):
                if message is None or message.status != "sending":
                    continue
                if (now - message.created_at).total_seconds() < self.settings.dispatch_lease_s:
                    continue
                message.mark_failed(now, "interrupted: outcome unknown", message.attempts, False)
                try:
                    self.app.update(message)
                except ConcurrentCampaignUpdate:  # its dispatcher recorded the outcome meanwhile
                    continue
                resolved += 1
        if resolved:
            log.warning(
                "%d messages were being sent when the dispatcher stopped: recorded as failed", resolved
            )
        return resolved

    async def run_once(self, stop: asyncio.Event | None = None) -> RoundReport:
        report = RoundReport()
        now = self.clock()
        for cid in await asyncio.to_thread(self.app.campaign_ids):
            if cid in self._finished:
                continue
            campaign = await asyncio.to_thread(self.app.campaign, cid)
            if campaign.status == "completed":
                self._finish(cid)  # never changes again: not read again
                continue
            if campaign.status == "cancelled":
                await self._skip_rest(campaign, report)
                self._finish(cid)
                continue
            if not campaign.is_due(now):
                continue
            if self._quiet(campaign):
                report.deferred += 1
                continue
            await self.dispatch(campaign, report, stop)
        return report

    def _finish(self, campaign_id: uuid.UUID) -> None:
        self._finished.add(campaign_id)
        self._recorded.pop(campaign_id, None)

    def recorded(self, campaign_id: uuid.UUID) -> int:
        """How many recipients of a campaign this dispatcher keeps in memory as handled."""
        return len(self._recorded.get(campaign_id, ()))

    def _quiet(self, campaign: Campaign) -> bool:
        return campaign.in_quiet_hours(self.clock().astimezone(self._tz).hour)

    async def dispatch(self, campaign: Campaign, report: RoundReport, stop: asyncio.Event | None) -> None:
        try:
            segments = await self._segments(campaign)
        except ServiceUnavailable as exc:
            log.warning("campaign %s waits: %s", campaign.id, exc)
            return
        recorded = self._recorded.setdefault(campaign.id, set())

        def unrecorded() -> list[tuple[uuid.UUID, bool]]:
            out = []
            for r in campaign.recipients:
                if r.customer_id in recorded:
                    continue
                if self.app.maybe_message(campaign.id, r.customer_id) is not None:
                    recorded.add(r.customer_id)
                else:
                    out.append((r.customer_id, r.holdout))
            return out

        pending = await asyncio.to_thread(unrecorded)
        gate = asyncio.Semaphore(self.settings.dispatch_concurrency)
        interrupted = False

        async def one(cid: uuid.UUID, holdout: bool) -> None:
            nonlocal interrupted
            async with gate:
                if interrupted or (stop is not None and stop.is_set()):
                    return
                try:
                    outcome = await self.deliver(campaign, cid, holdout, segments)
                except ServiceUnavailable as exc:
                    log.warning("recipient of campaign %s waits: %s", campaign.id, exc)
                    return
                except ConcurrentCampaignUpdate as exc:
                    # another dispatcher recorded this message's outcome first (it took
                    # it for abandoned): that outcome stands; the others go on
                    log.warning("recipient of campaign %s: %s", campaign.id, exc)
                    recorded.add(cid)
                    return
                recorded.add(cid)
                if outcome == "sent":
                    report.sent += 1
                elif outcome == "skipped":
                    report.skipped += 1
                elif outcome == "failed":
                    report.failed += 1

        # In slices, re-reading the campaign between them: a pause or a cancellation
        # stops the send within a slice, and quiet hours that begin defer the rest.
        step = max(50, self.settings.dispatch_concurrency * 4)
        for start in range(0, len(pending), step):
            current = await asyncio.to_thread(self.app.campaign, campaign.id)
            if current.status != "launched":
                return
            if self._quiet(current):
                report.deferred += 1
                return
            await asyncio.gather(*(one(c, h) for c, h in pending[start : start + step]))
            if stop is not None and stop.is_set():
                return
        await self._maybe_complete(campaign.id, report)

    async def _maybe_complete(self, campaign_id: uuid.UUID, report: RoundReport) -> None:
        def check() -> bool:
            campaign = self.app.campaign(campaign_id)
            if campaign.status != "launched":
                return False
            if len(self._recorded.get(campaign_id, ())) < len(campaign.recipients):
                return False  # some recipient has no message yet: not done
            if all(m is not None and m.finished for _, _, m in self.app.messages(campaign)):
                try:
                    self.app.complete(campaign_id, self.clock())
                except ConcurrentCampaignUpdate:
                    return False
                return True
            return False

        if await asyncio.to_thread(check):
            report.completed.append(campaign_id)

    async def _skip_rest(self, campaign: Campaign, report: RoundReport) -> None:
        def skip_all() -> int:
            skipped = 0
            for cid, _, message in self.app.messages(campaign):
                if message is None:
                    try:
                        self.app.record_new(
                            Message.skip(campaign.id, cid, "campaign_cancelled", self.clock())
                        )
                        skipped += 1
                    except MessageExists:
                        pass
            return skipped

        report.skipped += await asyncio.to_thread(skip_all)

    async def _segments(self, campaign: Campaign) -> dict[str, set[uuid.UUID]]:
        """Members of the segments the rules name (once per round)."""
        out: dict[str, set[uuid.UUID]] = {}
        for name in sorted(segments_named(campaign.parsed_rules)):
            if campaign.audience.get("segment") == name:
                out[name] = {r.customer_id for r in campaign.recipients}
            else:
                members = await self.clients.segment_members(name, self.settings.campaign_max_recipients)
                out[name] = set(members)
        return out

    # -- one recipient -------------------------------------------------------------------

    def _record(self, message: Message) -> bool:
        try:
            self.app.record_new(message)
        except MessageExists:
            return False
        return True

    async def deliver(
        self,
        campaign: Campaign,
        customer_id: uuid.UUID,
        holdout: bool,
        segments: Mapping[str, set[uuid.UUID]],
    ) -> str:
        """Decide, record and send one recipient's message; returns its outcome
        (``sent``/``skipped``/``failed``, or ``exists`` if it was handled already)."""
        now = self.clock()
        if holdout:
            recorded = await asyncio.to_thread(
                self._record, Message.skip(campaign.id, customer_id, "holdout", now)
            )
            return "skipped" if recorded else "exists"
        view = await asyncio.to_thread(self.view.lookup, customer_id)
        # an unsubscribe recorded under a customer since merged into this one counts too
        holders = [customer_id, *await asyncio.to_thread(self.view.absorbed, customer_id)]
        reasons: list[str] = []
        chosen: tuple[str, Any] | None = None
        for channel in campaign.channels:
            opted_out = await asyncio.to_thread(self._opted_out, holders, channel)
            pre = decide(
                channel,
                opted_out=opted_out,
                view=view,
                identity_status="active",
                identity_consent=True,
                address="-",
            )
            if not pre.allowed:  # no need to ask identity
                reasons.append(pre.reason or "no_consent")
                continue
            contact = await self.clients.contact(customer_id, channel, campaign_id=campaign.id)
            if contact is not None and contact.customer_id != customer_id:
                # merged since launch: identity answers for the survivor, who is not this
                # recipient — never message it on the merged customer's behalf
                reasons = ["customer_inactive"]
                break
            verdict = decide(
                channel,
                opted_out=False,
                view=view,
                identity_status=contact.status if contact else None,
                identity_consent=contact.consent if contact else None,
                address=contact.address if contact else None,
            )
            if verdict.allowed:
                chosen = (channel, contact)
                break
            reasons.append(verdict.reason or "no_consent")
        if chosen is None:
            reason = min(reasons, key=lambda r: _REASON_ORDER.index(r) if r in _REASON_ORDER else 99)
            skipped = Message.skip(campaign.id, customer_id, reason, now)
            return "skipped" if await asyncio.to_thread(self._record, skipped) else "exists"
        channel, contact = chosen
        facts = await self._facts(campaign, customer_id, segments, now)
        variant_id = choose_variant(
            campaign.parsed_rules, campaign.default_variant, facts, now.astimezone(self._tz).month
        )
        mid = message_id(campaign.id, customer_id)
        unsubscribe = f"{self._base}/t/u/{self.signer.token('u', mid)}"
        context = {
            "name": contact.name or "",
            "rank": facts.rank or "",
            "prefecture": facts.prefecture or "",
            "age_band": facts.age_band,
            "gender": facts.gender,
            "birth_month": facts.birth_month,
            "segments": sorted(facts.segments),
            "campaign": campaign.name,
            "unsubscribe_url": unsubscribe,
        }
        try:
            parts = await self.templates.render_parts(campaign.variant(variant_id), context)
            rendered = track(
                parts,
                link_hosts=campaign.link_hosts,
                click_url=lambda n: f"{self._base}/t/c/{self.signer.token('c', mid, n)}",
                open_url=f"{self._base}/t/o/{self.signer.token('o', mid)}.gif"
                if channel == "email"
                else None,
            )
        except TemplateLimitError as exc:  # this recipient's message only; the round goes on
            message = Message.prepare(campaign.id, customer_id, channel, variant_id, [], now)
            if not await asyncio.to_thread(self._record, message):
                return "exists"
            message.mark_failed(self.clock(), f"template: {exc}"[:200], 0, True)
            await asyncio.to_thread(self.app.update, message)
            return "failed"
        # prepared at this instant (not the round's): the lease counts from here
        message = Message.prepare(campaign.id, customer_id, channel, variant_id, rendered.links, self.clock())
        if not await asyncio.to_thread(self._record, message):
            return "exists"
        outgoing = Outgoing(
            message_id=mid,
            channel=channel,
            to=contact.address,
            to_name=contact.name,
            subject=rendered.subject,
            body=rendered.body,
            html=rendered.html,
            unsubscribe_url=unsubscribe,
            metadata={"Campaign": str(campaign.id), "Variant": variant_id},
        )
        attempts, error, permanent = await self._send(outgoing)
        if error is None:
            message.mark_sent(self.clock(), attempts)
            outcome = "sent"
        else:
            message.mark_failed(self.clock(), error, attempts, permanent)
            outcome = "failed"
        await asyncio.to_thread(self.app.update, message)
        return outcome

    def _opted_out(self, customer_ids: list[uuid.UUID], channel: str) -> bool:
        return any(self.app.opt_out_of(c, channel) is not None for c in customer_ids)

    async def _facts(
        self,
        campaign: Campaign,
        customer_id: uuid.UUID,
        segments: Mapping[str, set[uuid.UUID]],
        now: datetime,
    ) -> CustomerFacts:
        attributes = await asyncio.to_thread(self.view.attributes, customer_id)
        rank = None
        if self._uses_rank(campaign):
            rank = await self.clients.rank(customer_id)
        member_of = {name for name, ids in segments.items() if customer_id in ids}
        if "segment" in campaign.audience:
            member_of.add(str(campaign.audience["segment"]))
        return CustomerFacts(
            rank=rank,
            segments=frozenset(member_of),
            prefecture=attributes.get("prefecture"),
            age_band=age_band(attributes.get("birth_year"), now.astimezone(self._tz).year),
            gender=attributes.get("gender") or "unknown",
            birth_month=attributes.get("birth_month"),
        )

    @staticmethod
    def _uses_rank(campaign: Campaign) -> bool:
        if any("rank" in r.when for r in campaign.parsed_rules):
            return True
        return any(
            "rank" in str(v.get(part) or "")
            for v in campaign.variants
            for part in ("subject", "body", "html")
        )

    async def _send(self, outgoing: Outgoing) -> tuple[int, str | None, bool]:
        """(attempts, error or None, whether the error is permanent)."""
        provider = self.providers.get(outgoing.channel)
        if provider is None:
            return 0, f"no provider configured for {outgoing.channel}", True
        delay = self.settings.dispatch_backoff_s
        error = ""
        for attempt in range(1, self.settings.dispatch_max_attempts + 1):
            await self._limits[outgoing.channel].acquire()
            try:
                await provider.send(outgoing)
            except OutcomeUnknown as exc:  # it may have gone out: never sent again
                return attempt, str(exc), False
            except PermanentFailure as exc:
                return attempt, str(exc), True
            except TemporaryFailure as exc:
                error = str(exc)
                if attempt < self.settings.dispatch_max_attempts:
                    log.info("message %s: %s; retrying in %.1fs", outgoing.message_id, error, delay)
                    await self._sleep(delay)
                    delay *= 2
                continue
            return attempt, None, False
        return self.settings.dispatch_max_attempts, f"gave up: {error}", False

    # -- opt-outs identity has not heard of --------------------------------------------

    async def forward_opt_outs(self) -> int:
        """Pass on to identity the opt-outs the API could not (identity was away). Reads
        the opt-outs recorded since the last call; stops at the first that identity
        does not take, to try it again next round."""
        forwarded = 0
        while True:
            records, reached = await asyncio.to_thread(self.app.opt_outs_after, self._opt_out_position)
            for record in records:
                if record.forwarded_at is None:
                    if not await self.clients.withdraw_consent(record.customer_id, record.channel, record.at):
                        return forwarded
                    await asyncio.to_thread(
                        self.app.opt_out_forwarded, record.customer_id, record.channel, self.clock()
                    )
                    forwarded += 1
            if reached == self._opt_out_position:
                return forwarded
            self._opt_out_position = reached


__all__ = ["CampaignError", "Dispatcher", "RoundReport"]
