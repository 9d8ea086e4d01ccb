"""The ticket aggregate: its life cycle, the SLA rules and escalation routing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from support.domain.policy import Policy, PolicyError, policy_from_dict
from support.domain.ticket import AlreadyRated, InvalidTicket, InvalidTransition, Ticket

T0 = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
H = timedelta(hours=1)
SEALED = {"alg": "A256GCM", "key_id": "ticket-x", "nonce": "n", "ciphertext": "c"}


def opened(
    priority: str = "normal", category: str = "product", store_id: str | None = None, **kw: object
) -> Ticket:
    return Ticket.open(
        uuid.uuid4(),
        channel=str(kw.pop("channel", "email")),
        category=category,
        priority=priority,
        identifiers=[{"kind": "email", "hash": "a" * 64}],
        content=SEALED,
        at=T0,
        policy=Policy(),
        fingerprint="f",
        store_id=store_id,
    )


def test_the_first_staff_reply_is_the_first_response() -> None:
    t = opened("high")  # 4 h to respond, 24 h to resolve
    assert t.sla(T0 + H)["first_response"] == "running"
    t.reply("customer", SEALED, T0 + H)
    assert t.first_response_at is None
    t.reply("staff", SEALED, T0 + 2 * H, by="sato")
    t.reply("staff", SEALED, T0 + 3 * H, by="sato")
    assert t.first_response_at == T0 + 2 * H
    assert not t.first_response_breached(T0 + 100 * H)


def test_a_missing_first_response_breaches_once_its_due_instant_passes() -> None:
    t = opened("urgent")  # 1 h
    assert not t.breached(T0 + 59 * timedelta(minutes=1))
    assert t.breached(T0 + 61 * timedelta(minutes=1))
    assert t.sla(T0 + 2 * H)["first_response"] == "breached"
    t.reply("staff", SEALED, T0 + 2 * H)
    assert t.first_response_breached(T0 + 3 * H)  # answered late stays breached


def test_pending_pauses_the_resolution_clock_only() -> None:
    t = opened("normal")  # 24 h / 72 h
    t.reply("staff", SEALED, T0 + H)
    t.change_status("pending", T0 + 2 * H)
    # 100 h waiting on the customer: not breached, the due instant moves with the wait
    assert not t.resolution_breached(T0 + 102 * H)
    assert t.resolution_due_at(T0 + 102 * H) == T0 + 72 * H + 100 * H
    t.reply("customer", SEALED, T0 + 102 * H)  # the customer answers: back to open
    assert t.status == "open"
    assert t.resolution_due_at(T0 + 200 * H) == T0 + 172 * H
    t.resolve("answered", T0 + 150 * H)
    assert not t.breached(T0 + 1000 * H)
    assert t.sla(T0 + 1000 * H)["resolution"] == "met"


def test_resolving_late_is_breached_for_good_and_reported_in_the_event() -> None:
    t = opened("urgent")  # 1 h / 8 h
    t.reply("staff", SEALED, T0 + H / 2)
    t.resolve("refunded", T0 + 9 * H, by="sato")
    resolved = t.collect_events()[-1]
    assert isinstance(resolved, Ticket.Resolved)
    assert (resolved.sla_met, resolved.resolution_seconds, resolved.first_response_seconds) == (
        False,
        9 * 3600,
        1800,
    )
    assert t.breached(T0 + 9 * H) and t.breached(T0 + 1000 * H)


def test_status_transitions_follow_the_life_cycle() -> None:
    t = opened()
    with pytest.raises(InvalidTransition):
        t.change_status("closed", T0 + H)  # resolve first
    with pytest.raises(InvalidTransition):
        t.change_status("resolved", T0 + H)  # resolving needs a resolution
    with pytest.raises(InvalidTransition):
        t.rate(5, T0 + H)  # not resolved yet
    t.resolve("answered", T0 + H)
    with pytest.raises(InvalidTransition):
        t.resolve("answered", T0 + 2 * H)
    with pytest.raises(InvalidTransition):
        t.reply("staff", SEALED, T0 + 2 * H)
    t.change_status("open", T0 + 2 * H, reason="not_fixed")  # reopened
    assert (t.status, t.reopened, t.resolved_at) == ("open", 1, None)
    t.resolve("replaced", T0 + 3 * H)
    t.rate(4, T0 + 4 * H)
    with pytest.raises(AlreadyRated):
        t.rate(5, T0 + 5 * H)
    t.change_status("closed", T0 + 5 * H)
    for action in (
        lambda: t.change_status("open", T0 + 6 * H),
        lambda: t.reply("customer", SEALED, T0 + 6 * H),
    ):
        with pytest.raises(InvalidTransition):
            action()


def test_a_customer_reply_reopens_a_resolved_ticket() -> None:
    t = opened()
    t.resolve("answered", T0 + H)
    t.reply("customer", SEALED, T0 + 2 * H)
    assert (t.status, t.reopened) == ("open", 1)


def test_a_resolution_that_was_the_first_response_stays_so_after_a_reopen() -> None:
    # normal priority: first response due within 24 h. Solved on the phone in an hour
    # (no staff reply), reopened by the customer two days later, resolved again.
    t = opened()
    t.resolve("answered", T0 + H)
    assert t.sla(T0 + H)["first_response"] == "met"
    t.reply("customer", SEALED, T0 + 48 * H)  # reopens
    assert not t.first_response_breached(T0 + 50 * H)
    assert t.sla(T0 + 50 * H)["first_response"] == "met"
    t.resolve("replaced", T0 + 51 * H)
    assert t.collect_events()[-1].first_response_seconds is None
    assert not t.first_response_breached(T0 + 60 * H)


def test_changes_cannot_go_back_in_time_and_scores_are_1_to_5() -> None:
    t = opened()
    t.reply("staff", SEALED, T0 + 2 * H)
    with pytest.raises(InvalidTicket, match="before the ticket's last change"):
        t.assign("sato", None, T0 + H)
    t.resolve("answered", T0 + 3 * H)
    for bad in (0, 6, True):
        with pytest.raises(InvalidTicket):
            t.rate(bad, T0 + 4 * H)  # type: ignore[arg-type]


def test_a_retried_reply_is_recorded_once() -> None:
    t = opened()
    assert t.reply("customer", SEALED, T0 + H, request_id="r1")
    assert not t.reply("customer", SEALED, T0 + 2 * H, request_id="r1")
    assert len(t.messages) == 1


def test_complaints_are_routed_on_open_to_the_store_manager_or_sales() -> None:
    store = opened(category="complaint", store_id="S001")
    assert [e["to"] for e in store.escalations] == ["store-manager:S001"]
    assert store.escalations[0]["rule"] == "complaint-about-store"
    online = opened(category="complaint")
    assert [e["to"] for e in online.escalations] == ["sales"]
    assert opened(category="delivery").escalations == []
    assert Policy().route("delivery", "urgent", "phone", None) == ("support-lead", "urgent")


def test_a_policy_file_replaces_targets_and_rules_and_bad_ones_are_refused() -> None:
    policy = policy_from_dict(
        {
            "sla": {"normal": {"first_response_hours": 2, "resolution_hours": 10}},
            "routing": [{"name": "vip", "target": "owner-team", "priorities": ["high"], "on_open": True}],
        }
    )
    assert policy.target("normal").resolution == timedelta(hours=10)
    assert policy.on_open("x", "high", "email", None) == ("owner-team", "vip")
    assert policy.route("complaint", "normal", "email", "S1") is None
    with pytest.raises(PolicyError, match="priority"):
        policy_from_dict({"sla": {"asap": {"first_response_hours": 1, "resolution_hours": 2}}})
    with pytest.raises(PolicyError, match="needs_store"):
        policy_from_dict({"routing": [{"name": "s", "target": "store-manager:{store_id}"}]})
    with pytest.raises(PolicyError, match="first response"):
        policy_from_dict({"sla": {"low": {"first_response_hours": 5, "resolution_hours": 2}}})
