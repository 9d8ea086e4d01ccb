"""The dispatcher's decisions with fakes at its edges: the campaigns' store in memory
(eventsourcing's POPO recorder), identity and analytics as a fake client, a provider that
records what it is handed, and a clock the test moves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from crm_contracts.events.identity import Consent, ConsentChannel, ProfileSnapshot, ProfileSnapshotPayload
from engagement.campaigns import CampaignApplication
from engagement.dispatch.clients import Contact, ServiceUnavailable
from engagement.dispatch.consent import ConsentView
from engagement.dispatch.dispatcher import Dispatcher
from engagement.dispatch.providers import OutcomeUnknown, Outgoing, TemporaryFailure
from engagement.dispatch.settings import MessagingSettings
from engagement.domain.campaign import Message, OptOut
from engagement.tracking import TrackingSigner

# 20:00 in Tokyo
START = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)


@dataclass
class FakeClients:
    """identity's contact answers: an address per (customer, channel); ``merged`` maps a
    customer to its survivor, whose answer it gets (as identity's API does)."""

    addresses: dict[tuple[uuid.UUID, str], str] = field(default_factory=dict)
    merged: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)

    async def contact(
        self, customer_id: uuid.UUID, channel: str, *, campaign_id: uuid.UUID
    ) -> Contact | None:
        holder = self.merged.get(customer_id, customer_id)
        address = self.addresses.get((holder, channel))
        return Contact(customer_id=holder, status="active", address=address, name="顧客", consent=True)

    async def segment_members(self, segment: str, limit: int) -> list[uuid.UUID]:
        return []

    async def rank(self, customer_id: uuid.UUID) -> str | None:
        return None

    async def withdraw_consent(self, customer_id: uuid.UUID, channel: str, at: datetime) -> bool:
        return True


@dataclass
class FakeProvider:
    sent: list[Outgoing] = field(default_factory=list)
    on_send: Callable[[Outgoing], None] | None = None
    fail_with: list[Exception] = field(default_factory=list)
    calls: int = 0

    async def send(self, message: Outgoing) -> None:
        self.calls += 1
        if self.on_send is not None:
            self.on_send(message)
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.sent.append(message)

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def app() -> Iterator[CampaignApplication]:
    application = CampaignApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    yield application
    application.close()


@pytest.fixture
def view(tmp_path: Path) -> Iterator[ConsentView]:
    consent = ConsentView(tmp_path / "consent-view.sqlite")
    yield consent
    consent.close()


def make(
    app: CampaignApplication,
    view: ConsentView,
    clients: FakeClients,
    providers: dict[str, FakeProvider],
    clock: Clock,
    **settings: Any,
) -> Dispatcher:
    return Dispatcher(
        app,
        clients,  # type: ignore[arg-type]
        view,
        providers,
        MessagingSettings(dispatch_rate_per_s=10_000, dispatch_backoff_s=0, **settings),
        TrackingSigner(b"k" * 32),
        clock=clock,
        sleep=lambda _s: asyncio.sleep(0),
    )


def launch(
    app: CampaignApplication,
    customers: list[uuid.UUID],
    channels: tuple[str, ...] = ("email",),
    quiet_hours: list[int] | None = None,
) -> uuid.UUID:
    campaign = app.create(
        name="テスト",
        channels=list(channels),
        audience={"customer_ids": [str(c) for c in customers]},
        variants=[{"id": "d", "subject": "s", "body": "{{ name }}様"}],
        rules=[],
        default_variant="d",
        send_at=START,
        holdout_pct=0,
        attribution_days=7,
        quiet_hours=quiet_hours,
        link_hosts=[],
        created_at=START,
    )
    app.launch(campaign.id, customers, START)
    return campaign.id


def status_of(
    app: CampaignApplication, campaign_id: uuid.UUID, customer: uuid.UUID
) -> tuple[str, str | None]:
    message = app.maybe_message(campaign_id, customer)
    assert message is not None
    return message.status, message.reason


def merged_profile(customer: uuid.UUID, survivor: uuid.UUID) -> ProfileSnapshot:
    return ProfileSnapshot(
        occurred_at=START,
        producer="identity.resolver",
        customer_key=str(customer),
        payload=ProfileSnapshotPayload(
            customer_id=customer,
            status="merged",
            merged_into=survivor,
            consents=(Consent(channel=ConsentChannel.EMAIL, granted=True, at=START),),
        ),
    )


# -- 1. merges since launch -----------------------------------------------------------------


def test_a_recipient_merged_into_another_is_skipped_and_the_survivor_gets_one_message(
    app: CampaignApplication, view: ConsentView
) -> None:
    merged, survivor = uuid.uuid4(), uuid.uuid4()
    clients = FakeClients(addresses={(survivor, "email"): "s@example.jp"}, merged={merged: survivor})
    mail = FakeProvider()
    campaign_id = launch(app, [merged, survivor])
    report = asyncio.run(make(app, view, clients, {"email": mail}, Clock(START)).run_once())
    assert [m.to for m in mail.sent] == ["s@example.jp"]
    assert (report.sent, report.skipped) == (1, 1)
    assert status_of(app, campaign_id, merged) == ("skipped", "customer_inactive")
    assert status_of(app, campaign_id, survivor)[0] == "sent"


def test_the_consent_view_saying_merged_skips_without_asking_identity(
    app: CampaignApplication, view: ConsentView
) -> None:
    merged, survivor = uuid.uuid4(), uuid.uuid4()
    view.apply(merged_profile(merged, survivor))
    clients = FakeClients(addresses={(merged, "email"): "old@example.jp"})  # identity lagging
    mail = FakeProvider()
    campaign_id = launch(app, [merged])
    asyncio.run(make(app, view, clients, {"email": mail}, Clock(START)).run_once())
    assert mail.sent == []
    assert status_of(app, campaign_id, merged) == ("skipped", "customer_inactive")


def test_an_opt_out_recorded_before_a_merge_holds_for_the_survivor(
    app: CampaignApplication, view: ConsentView
) -> None:
    merged, survivor = uuid.uuid4(), uuid.uuid4()
    view.apply(merged_profile(merged, survivor))
    app.save(OptOut.record(merged, "email", uuid.uuid4(), START))  # unsubscribed before the merge
    clients = FakeClients(addresses={(survivor, "email"): "s@example.jp", (survivor, "sms"): "+819012345678"})
    mail, sms = FakeProvider(), FakeProvider()
    campaign_id = launch(app, [survivor], channels=("email", "sms"))
    asyncio.run(make(app, view, clients, {"email": mail, "sms": sms}, Clock(START)).run_once())
    assert mail.sent == []
    assert [m.to for m in sms.sent] == ["+819012345678"]
    message = app.maybe_message(campaign_id, survivor)
    assert message is not None and message.channel == "sms"


# -- 3. an unknown outcome is never retried -------------------------------------------------


def test_an_unknown_outcome_is_recorded_failed_after_one_attempt(
    app: CampaignApplication, view: ConsentView
) -> None:
    customer = uuid.uuid4()
    clients = FakeClients(addresses={(customer, "email"): "c@example.jp"})
    mail = FakeProvider(fail_with=[OutcomeUnknown("SMTP outcome unknown: SMTPReadTimeoutError during DATA")])
    campaign_id = launch(app, [customer])
    report = asyncio.run(make(app, view, clients, {"email": mail}, Clock(START)).run_once())
    assert (mail.calls, report.failed) == (1, 1)
    message = app.maybe_message(campaign_id, customer)
    assert message is not None and (message.status, message.attempts) == ("failed", 1)
    assert message.reason is not None and "outcome unknown" in message.reason


def test_a_temporary_failure_is_still_retried(app: CampaignApplication, view: ConsentView) -> None:
    customer = uuid.uuid4()
    clients = FakeClients(addresses={(customer, "email"): "c@example.jp"})
    mail = FakeProvider(fail_with=[TemporaryFailure("SMTP 451 4.3.0")])
    launch(app, [customer])
    report = asyncio.run(make(app, view, clients, {"email": mail}, Clock(START)).run_once())
    assert (mail.calls, report.sent) == (2, 1)


# -- 4. recovery leaves live sends alone ----------------------------------------------------


def test_recovery_takes_only_messages_older_than_the_lease(
    app: CampaignApplication, view: ConsentView
) -> None:
    old, young = uuid.uuid4(), uuid.uuid4()
    campaign_id = launch(app, [old, young])
    app.record_new(Message.prepare(campaign_id, old, "email", "d", [], START))
    app.record_new(Message.prepare(campaign_id, young, "email", "d", [], START + timedelta(minutes=14)))
    clock = Clock(START + timedelta(minutes=15, seconds=1))
    dispatcher = make(app, view, FakeClients(), {"email": FakeProvider()}, clock, dispatch_lease_s=900)
    assert dispatcher.recover() == 1
    assert status_of(app, campaign_id, old) == ("failed", "interrupted: outcome unknown")
    assert status_of(app, campaign_id, young) == ("sending", None)  # a live dispatcher's
    clock.at += timedelta(minutes=14)
    assert dispatcher.recover() == 1
    assert status_of(app, campaign_id, young)[0] == "failed"


def test_a_message_another_dispatcher_resolved_costs_only_that_recipient(
    app: CampaignApplication, view: ConsentView
) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    clients = FakeClients(addresses={(first, "email"): "1@example.jp", (second, "email"): "2@example.jp"})
    campaign_id = launch(app, [first, second])

    def another_dispatcher_gives_up(message: Outgoing) -> None:
        if message.to == "1@example.jp":  # while it is being sent, another process resolves it
            taken = app.message(message.message_id)
            taken.mark_failed(START, "interrupted: outcome unknown", 0, False)
            app.update(taken)

    mail = FakeProvider(on_send=another_dispatcher_gives_up)
    dispatcher = make(app, view, clients, {"email": mail}, Clock(START), dispatch_concurrency=1)
    report = asyncio.run(dispatcher.run_once())
    assert report.sent == 1  # the round went on
    assert status_of(app, campaign_id, first) == ("failed", "interrupted: outcome unknown")
    assert status_of(app, campaign_id, second)[0] == "sent"


def test_lease_must_outlast_a_send() -> None:
    with pytest.raises(ValueError, match="dispatch_lease_s"):
        MessagingSettings(dispatch_lease_s=60, smtp_timeout_s=30)


# -- 5. quiet hours that begin during a send ------------------------------------------------


def test_quiet_hours_beginning_mid_send_defer_the_rest(app: CampaignApplication, view: ConsentView) -> None:
    customers = [uuid.uuid4() for _ in range(60)]
    clients = FakeClients(addresses={(c, "email"): f"{i}@example.jp" for i, c in enumerate(customers)})
    clock = Clock(START + timedelta(minutes=59))  # 20:59 in Tokyo, quiet from 21:00

    def time_passes(_: Outgoing) -> None:
        clock.at = START + timedelta(hours=1)

    mail = FakeProvider(on_send=time_passes)
    campaign_id = launch(app, customers, quiet_hours=[21, 8])
    dispatcher = make(app, view, clients, {"email": mail}, clock, dispatch_concurrency=8)
    report = asyncio.run(dispatcher.run_once())
    step = 50  # one slice went out before the clock reached 21:00
    assert (report.sent, report.deferred) == (step, 1)
    assert sum(app.maybe_message(campaign_id, c) is None for c in customers) == len(customers) - step
    assert asyncio.run(dispatcher.run_once()).deferred == 1  # still quiet: nothing more
    assert len(mail.sent) == step


# -- what the dispatcher keeps ----------------------------------------------------------------


@dataclass
class FlakyClients(FakeClients):
    """identity away for some customers (their recipients wait for a later round)."""

    away: set[uuid.UUID] = field(default_factory=set)

    async def contact(
        self, customer_id: uuid.UUID, channel: str, *, campaign_id: uuid.UUID
    ) -> Contact | None:
        if customer_id in self.away:
            raise ServiceUnavailable("identity away")
        return await super().contact(customer_id, channel, campaign_id=campaign_id)


def test_a_finished_campaigns_recipients_are_forgotten_and_nothing_is_sent_again(
    app: CampaignApplication, view: ConsentView
) -> None:
    """The in-memory record of handled recipients lasts while a campaign sends; once it is
    over it is released. Never sending twice rests on the store (one message per campaign
    and customer): a dispatcher that remembers nothing sends only what is left."""
    customers = [uuid.uuid4() for _ in range(60)]
    clients = FlakyClients(
        addresses={(c, "email"): f"{c.hex[:8]}@example.jp" for c in customers}, away={customers[0]}
    )
    mail = FakeProvider()
    done = launch(app, customers[:40])
    cancelled = launch(app, customers[40:])
    app.pause(cancelled, START)
    dispatcher = make(app, view, clients, {"email": mail}, Clock(START))
    first = asyncio.run(dispatcher.run_once())
    assert (first.sent, first.completed) == (39, [])  # one recipient waits for identity
    assert dispatcher.recorded(done) == 39

    clients.away.clear()
    forgetful = make(app, view, clients, {"email": mail}, Clock(START))  # a restart: no memory
    second = asyncio.run(forgetful.run_once())
    assert (second.sent, second.completed) == (1, [done])
    assert mail.calls == 40 and len({m.to for m in mail.sent}) == 40  # none twice

    app.cancel(cancelled, START, "wrong price")
    third = asyncio.run(dispatcher.run_once())
    assert (third.sent, third.skipped) == (0, 20)
    assert (dispatcher.recorded(done), dispatcher.recorded(cancelled)) == (0, 0)  # released
    assert asyncio.run(dispatcher.run_once()).sent == 0
    assert mail.calls == 40


# -- templates past a bound at send time ------------------------------------------------------


@dataclass
class NamedClients(FakeClients):
    names: dict[uuid.UUID, str] = field(default_factory=dict)

    async def contact(
        self, customer_id: uuid.UUID, channel: str, *, campaign_id: uuid.UUID
    ) -> Contact | None:
        found = await super().contact(customer_id, channel, campaign_id=campaign_id)
        assert found is not None
        return Contact(found.customer_id, found.status, found.address, self.names[customer_id], found.consent)


def test_a_template_past_a_bound_for_one_recipient_fails_only_that_message(
    app: CampaignApplication, view: ConsentView
) -> None:
    short, long = uuid.uuid4(), uuid.uuid4()
    clients = NamedClients(
        addresses={(short, "email"): "s@example.jp", (long, "email"): "l@example.jp"},
        names={short: "A", long: "A much longer name"},
    )
    mail = FakeProvider()
    campaign = app.create(  # as stored: the creation check passed with the sample fields
        name="テスト",
        channels=["email"],
        audience={"customer_ids": [str(short), str(long)]},
        variants=[{"id": "d", "subject": "s", "body": "{{ name * 100000 }}"}],
        rules=[],
        default_variant="d",
        send_at=START,
        holdout_pct=0,
        attribution_days=7,
        quiet_hours=None,
        link_hosts=[],
        created_at=START,
    )
    app.launch(campaign.id, [short, long], START)
    dispatcher = make(app, view, clients, {"email": mail}, Clock(START))
    report = asyncio.run(dispatcher.run_once())
    assert (report.sent, report.failed) == (1, 1)
    assert [m.to for m in mail.sent] == ["s@example.jp"]
    status, reason = status_of(app, campaign.id, long)
    assert status == "failed"
    assert reason == "template: string or list too long (more than 262144 items)"
