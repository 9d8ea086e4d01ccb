"""The membership programme's rules, on the aggregate alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engagement.domain.membership import Member, MembershipError, NotEnoughPoints, Programme, Rank

P = Programme()
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC)


def member(birthday_month: int | None = None) -> Member:
    return Member.enrol("a" * 64, "store", T0 - timedelta(days=1), birthday_month)


def test_points_follow_the_rank_and_a_purchase_counts_once() -> None:
    m = member()
    assert m.credit_purchase("store:R1", T0, "store", 10_000, P)
    assert not m.credit_purchase("store:R1", T0, "store", 10_000, P)  # resent order
    assert m.points == 100  # regular: 1 point per ¥100
    m.credit_purchase("online:W1", T0 + timedelta(days=1), "online", 25_000, P)
    assert m.rank == "silver"  # ¥35,000 over 12 months, in store and online together
    changed = [e for e in m.collect_events() if isinstance(e, Member.RankChanged)]
    assert changed[-1].reason == "12-month spend ¥35,000 ≥ ¥30,000"
    m.credit_purchase("store:R2", T0 + timedelta(days=2), "store", 10_000, P)
    assert m.points == 100 + 250 + 150  # silver earns 1.5 per ¥100


def test_a_return_reverses_its_share_of_points_and_spend_and_can_lower_the_rank() -> None:
    m = member()
    m.credit_purchase("store:R1", T0, "store", 40_000, P)
    assert (m.rank, m.points) == ("silver", 400)
    assert m.reverse_purchase("store:R1", "store:RET1", T0 + timedelta(days=3), 20_000, P)
    assert not m.reverse_purchase("store:R1", "store:RET1", T0 + timedelta(days=3), 20_000, P)
    assert m.points == 200
    assert m.window(T0 + timedelta(days=3), P) == (20_000, 1)
    assert m.rank == "regular"


def test_the_rank_falls_when_purchases_age_out_of_the_window() -> None:
    m = member()
    m.credit_purchase("store:R1", T0, "store", 120_000, P)
    assert m.rank == "gold"
    assert not m.evaluate(T0 + timedelta(days=200), P)
    assert m.evaluate(T0 + timedelta(days=366), P)
    assert m.rank == "regular"


def test_visits_alone_can_reach_a_rank() -> None:
    m = member()
    for day in range(6):
        m.credit_purchase(f"store:V{day}", T0 + timedelta(days=day), "store", 1_000, P)
    assert m.rank == "silver"


def test_birthday_month_doubles_points_and_benefits_say_so() -> None:
    m = member(birthday_month=3)
    m.credit_purchase("store:R1", T0, "store", 10_000, P)
    assert m.points == 200
    assert m.benefits(T0, P)["birthday_month"] is True
    assert m.benefits(T0 + timedelta(days=30), P)["birthday_month"] is False


def test_redemption_uses_the_oldest_points_and_expiry_takes_the_rest() -> None:
    m = member()
    m.credit_purchase("store:R1", T0, "store", 10_000, P)  # 100, expire T0 + 12 months
    m.credit_purchase("store:R2", T0 + timedelta(days=100), "store", 10_000, P)  # 100
    assert m.redeem("red-1", T0 + timedelta(days=120), 150, "checkout")
    assert not m.redeem("red-1", T0 + timedelta(days=120), 150, "checkout")  # retried
    assert m.points == 50
    with pytest.raises(NotEnoughPoints):
        m.redeem("red-2", T0 + timedelta(days=120), 60, "checkout")
    assert m.expire_points(T0 + timedelta(days=400)) == 0  # the remaining 50 are the newer lot
    assert m.expire_points(T0 + timedelta(days=500)) == 50
    assert m.points == 0


def test_bad_membership_input() -> None:
    with pytest.raises(MembershipError):
        Member.enrol("b" * 64, "carrier pigeon", T0)
    with pytest.raises(MembershipError):
        Member.enrol("b" * 64, "store", T0, birthday_month=13)
    with pytest.raises(MembershipError):
        member().redeem("r", T0, 0, "checkout")


def test_next_due_is_the_first_expiry_or_the_first_purchase_leaving_the_window() -> None:
    m = member()
    assert m.next_due(T0, P) is None  # nothing held, nothing to lose
    m.credit_purchase("store:R1", T0, "store", 10_000, P)  # regular: only the points expire
    assert m.next_due(T0, P) == datetime(2027, 3, 10, 12, tzinfo=UTC)
    m.credit_purchase("store:R2", T0 + timedelta(days=10), "store", 30_000, P)  # silver now
    assert m.rank == "silver"
    # R1 leaves the 365-day window before any point expires (12 months = 365 days here).
    assert m.next_due(T0 + timedelta(days=10), P) == T0 + timedelta(days=365)
    # Points held past their expiry are due at once, whenever the member was evaluated.
    assert m.next_due(T0 + timedelta(days=366), P) == datetime(2027, 3, 10, 12, tzinfo=UTC)
    # Evaluated after R1 left and its points expired: R2 leaving the window is next.
    m.expire_points(T0 + timedelta(days=366))
    assert m.next_due(T0 + timedelta(days=366), P) == T0 + timedelta(days=375)
    m.evaluate(T0 + timedelta(days=376), P)
    assert m.rank == "regular"
    # Back at the entry rank nothing can fall further: only R2's points are left to expire.
    assert m.next_due(T0 + timedelta(days=376), P) == datetime(2027, 3, 20, 12, tzinfo=UTC)
    m.expire_points(T0 + timedelta(days=376))
    assert m.next_due(T0 + timedelta(days=376), P) is None


def test_members_enrolled_before_programmes_were_configurable_still_load() -> None:
    [enrolled] = member().collect_events()
    stored = dict(enrolled.__dict__)
    del stored["entry_rank"]  # as events stored by the earlier version
    old = object.__new__(type(enrolled))
    old.__dict__.update(stored)
    assert old.mutate(None).rank == "regular"


def test_a_rank_the_programme_dropped_counts_as_the_entry_rank_until_re_ranked() -> None:
    m = member()
    m.credit_purchase("store:R1", T0, "store", 40_000, P)
    assert m.rank == "silver"
    renamed = Programme(ranks=(P.ranks[0], Rank("argent", 30_000, 6, 1.5, 0.03), *P.ranks[2:]))
    assert renamed.rank(m.rank) == renamed.ranks[0]
    assert m.evaluate(T0 + timedelta(days=1), renamed)
    assert m.rank == "argent"
