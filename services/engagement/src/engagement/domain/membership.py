"""The membership programme: members, ranks, points. Pure domain, no infrastructure.

One ``Member`` aggregate per member number (its id derives from the number's blind
index, so anything that saw the card — a POS transaction — finds the member without the
number in clear). Purchases from any channel are credited once per order; a return
reverses the share of points and spend it refunds. The rank follows rolling 12-month
spend and visits against the programme's thresholds, and every change is an event with
its reason. Points are kept in lots that expire a fixed number of months after they were
earned; redemptions and expiry use the oldest lots first.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from eventsourcing.domain import Aggregate, event

MEMBER_NAMESPACE = uuid.UUID("5c0b7e2a-55e1-4f57-9a0e-3b8f2d9c4e61")


def member_id(member_no_hash: str) -> uuid.UUID:
    return uuid.uuid5(MEMBER_NAMESPACE, f"member_no:{member_no_hash}")


class MembershipError(Exception):
    pass


class NotEnoughPoints(MembershipError):
    pass


class UnknownPurchase(MembershipError):
    pass


@dataclass(frozen=True)
class Rank:
    name: str
    #: Reached with at least this spend (yen, tax included) over the window...
    min_spend: int
    #: ...or at least this many purchase days over the window (0: spend only).
    min_visits: int
    #: Points per 100 yen spent.
    points_per_100: float
    #: Discount the member gets at this rank (e.g. 0.05 = 5 %), in store and online alike.
    discount_rate: float


@dataclass(frozen=True)
class Programme:
    ranks: tuple[Rank, ...] = (
        Rank("regular", 0, 0, 1.0, 0.0),
        Rank("silver", 30_000, 6, 1.5, 0.03),
        Rank("gold", 100_000, 12, 2.0, 0.05),
        Rank("platinum", 300_000, 24, 3.0, 0.10),
    )
    window_days: int = 365
    points_valid_months: int = 12
    #: Points multiplier on purchases made in the member's birthday month.
    birthday_multiplier: float = 2.0

    def rank(self, name: str) -> Rank:
        """The rank called ``name``; a rank the programme no longer has (the retailer
        renamed or dropped it) counts as the entry rank until the member is re-ranked."""
        for rank in self.ranks:
            if rank.name == name:
                return rank
        return self.ranks[0]

    def rank_for(self, spend: int, visits: int) -> tuple[Rank, str]:
        """The highest rank whose spend or visits threshold is met, and why."""
        chosen, reason = self.ranks[0], "entry rank"
        for rank in self.ranks[1:]:
            if spend >= rank.min_spend:
                chosen, reason = rank, f"12-month spend ¥{spend:,} ≥ ¥{rank.min_spend:,}"
            elif rank.min_visits and visits >= rank.min_visits:
                chosen, reason = rank, f"12-month visits {visits} ≥ {rank.min_visits}"
        return chosen, reason


@dataclass
class PointLot:
    earned_at: datetime
    expires_at: datetime
    remaining: int
    source: str


@dataclass
class Purchase:
    order_key: str
    at: datetime
    channel: str
    amount: int
    points: int
    refunded: int = 0
    points_reversed: int = 0
    returns: list[str] = field(default_factory=list)


def _add_months(at: datetime, months: int) -> datetime:
    month = at.month - 1 + months
    year = at.year + month // 12
    month = month % 12 + 1
    day = min(at.day, 28)
    return at.replace(year=year, month=month, day=day)


class Member(Aggregate):
    class Enrolled(Aggregate.Created):
        member_no_hash: str
        channel: str
        enrolled_at: datetime
        birthday_month: int | None
        entry_rank: str

    @event(Enrolled)
    def __init__(
        self,
        member_no_hash: str,
        channel: str,
        enrolled_at: datetime,
        birthday_month: int | None,
        entry_rank: str = "regular",  # events stored before programmes were configurable
    ) -> None:
        self.member_no_hash = member_no_hash
        self.channel = channel
        self.enrolled_at = enrolled_at
        self.birthday_month = birthday_month
        self.rank = entry_rank
        self.purchases: dict[str, Purchase] = {}
        self.lots: list[PointLot] = []
        self.redeemed: dict[str, int] = {}

    @classmethod
    def enrol(
        cls,
        member_no_hash: str,
        channel: str,
        enrolled_at: datetime,
        birthday_month: int | None = None,
        entry_rank: str = "regular",
    ) -> Member:
        if channel not in ("store", "online", "app", "form", "import"):
            raise MembershipError(f"unknown enrolment channel {channel!r}")
        if birthday_month is not None and not 1 <= birthday_month <= 12:
            raise MembershipError("birthday_month must be 1..12")
        return cls._create(
            cls.Enrolled,
            id=member_id(member_no_hash),
            member_no_hash=member_no_hash,
            channel=channel,
            enrolled_at=enrolled_at,
            birthday_month=birthday_month,
            entry_rank=entry_rank,
        )

    # -- reading ---------------------------------------------------------------------------

    @property
    def points(self) -> int:
        return sum(lot.remaining for lot in self.lots)

    def window(self, now: datetime, programme: Programme) -> tuple[int, int]:
        """(spend, visits) over the programme's rolling window ending at ``now``."""
        since = now - timedelta(days=programme.window_days)
        inside = [p for p in self.purchases.values() if since < p.at <= now]
        spend = sum(p.amount - p.refunded for p in inside)
        visits = len({p.at.date() for p in inside if p.amount > p.refunded})
        return spend, visits

    def next_due(self, evaluated_at: datetime, programme: Programme) -> datetime | None:
        """When time alone next changes this member, given it was last evaluated at
        ``evaluated_at``: the earliest expiry of points still held, or (above the entry
        rank, which nothing can lower) the first moment after ``evaluated_at`` that a
        purchase leaves the rolling window. None when nothing is pending. It may lie in
        the past — a purchase credited late, an expiry not applied yet — and is then due
        at once. The sweep evaluates members as they fall due instead of every member
        every day."""
        instants = [lot.expires_at for lot in self.lots if lot.remaining > 0]
        if self.rank != programme.ranks[0].name:
            window = timedelta(days=programme.window_days)
            instants += [p.at + window for p in self.purchases.values() if p.at + window > evaluated_at]
        return min(instants, default=None)

    def benefits(self, now: datetime, programme: Programme) -> dict[str, Any]:
        rank = programme.rank(self.rank)
        birthday = self.birthday_month == now.month
        return {
            "rank": rank.name,
            "discount_rate": rank.discount_rate,
            "points_per_100": rank.points_per_100 * (programme.birthday_multiplier if birthday else 1.0),
            "birthday_month": birthday,
        }

    # -- purchases and returns -----------------------------------------------------------

    class PurchaseCredited(Aggregate.Event):
        order_key: str
        at: datetime
        channel: str
        amount: int
        points: int
        expires_at: datetime

    def credit_purchase(
        self, order_key: str, at: datetime, channel: str, amount: int, programme: Programme
    ) -> bool:
        """Credit an order once (False if it was credited before), then re-rank."""
        if order_key in self.purchases:
            return False
        if amount < 0:
            raise MembershipError("a purchase amount cannot be negative")
        rate = programme.rank(self.rank).points_per_100
        if self.birthday_month == at.month:
            rate *= programme.birthday_multiplier
        points = int(amount * rate / 100)
        self._credited(
            order_key=order_key,
            at=at,
            channel=channel,
            amount=amount,
            points=points,
            expires_at=_add_months(at, programme.points_valid_months),
        )
        self.evaluate(at, programme)
        return True

    @event(PurchaseCredited)
    def _credited(
        self, order_key: str, at: datetime, channel: str, amount: int, points: int, expires_at: datetime
    ) -> None:
        self.purchases[order_key] = Purchase(order_key, at, channel, amount, points)
        if points:
            self.lots.append(PointLot(at, expires_at, points, order_key))

    class PurchaseReversed(Aggregate.Event):
        order_key: str
        return_key: str
        at: datetime
        refunded: int
        points: int

    def reverse_purchase(
        self, order_key: str, return_key: str, at: datetime, refunded: int, programme: Programme
    ) -> bool:
        """Take back the refunded share of spend and of the points earned on the order."""
        purchase = self.purchases.get(order_key)
        if purchase is None:
            raise UnknownPurchase(order_key)
        if return_key in purchase.returns:
            return False
        refunded = min(refunded, purchase.amount - purchase.refunded)
        share = refunded / purchase.amount if purchase.amount else 0.0
        points = min(round(purchase.points * share), purchase.points - purchase.points_reversed)
        self._reversed(order_key=order_key, return_key=return_key, at=at, refunded=refunded, points=points)
        self.evaluate(at, programme)
        return True

    @event(PurchaseReversed)
    def _reversed(self, order_key: str, return_key: str, at: datetime, refunded: int, points: int) -> None:
        purchase = self.purchases[order_key]
        purchase.refunded += refunded
        purchase.points_reversed += points
        purchase.returns.append(return_key)
        # From the order's own lot first; points already spent elsewhere go negative on
        # the newest lot (the balance owes them), as retailers' programmes do.
        left = points
        for lot in self.lots:
            if lot.source == order_key and left:
                taken = min(lot.remaining, left)
                lot.remaining -= taken
                left -= taken
        if left:
            if self.lots:
                self.lots[-1].remaining -= left
            else:
                self.lots.append(PointLot(at, at, -left, return_key))

    # -- points --------------------------------------------------------------------------

    class PointsRedeemed(Aggregate.Event):
        redemption_id: str
        at: datetime
        points: int
        reason: str

    def redeem(self, redemption_id: str, at: datetime, points: int, reason: str) -> bool:
        if redemption_id in self.redeemed:
            return False
        if points <= 0:
            raise MembershipError("redeem a positive number of points")
        if points > self.usable_points(at):
            raise NotEnoughPoints(f"{points} requested, {self.usable_points(at)} available")
        self._redeemed(redemption_id=redemption_id, at=at, points=points, reason=reason)
        return True

    def usable_points(self, at: datetime) -> int:
        return sum(lot.remaining for lot in self.lots if lot.expires_at > at)

    @event(PointsRedeemed)
    def _redeemed(self, redemption_id: str, at: datetime, points: int, reason: str) -> None:
        self.redeemed[redemption_id] = points
        left = points
        for lot in sorted(self.lots, key=lambda lot: lot.expires_at):  # oldest first
            if lot.expires_at <= at or lot.remaining <= 0:
                continue
            taken = min(lot.remaining, left)
            lot.remaining -= taken
            left -= taken
            if not left:
                break

    class PointsExpired(Aggregate.Event):
        at: datetime
        points: int

    def expire_points(self, now: datetime) -> int:
        due = sum(lot.remaining for lot in self.lots if lot.expires_at <= now and lot.remaining > 0)
        if due:
            self._expired(at=now, points=due)
        return due

    @event(PointsExpired)
    def _expired(self, at: datetime, points: int) -> None:
        for lot in self.lots:
            if lot.expires_at <= at and lot.remaining > 0:
                lot.remaining = 0

    # -- rank ----------------------------------------------------------------------------

    class RankChanged(Aggregate.Event):
        at: datetime
        previous: str
        rank: str
        reason: str
        spend: int
        visits: int

    def evaluate(self, now: datetime, programme: Programme) -> bool:
        """Re-rank on the rolling window (purchases ageing out can lower the rank)."""
        spend, visits = self.window(now, programme)
        rank, reason = programme.rank_for(spend, visits)
        if rank.name == self.rank:
            return False
        if rank.name == programme.ranks[0].name:
            reason = f"12-month spend ¥{spend:,} and {visits} visits are below every threshold"
        self._rank_changed(
            at=now, previous=self.rank, rank=rank.name, reason=reason, spend=spend, visits=visits
        )
        return True

    @event(RankChanged)
    def _rank_changed(
        self, at: datetime, previous: str, rank: str, reason: str, spend: int, visits: int
    ) -> None:
        self.rank = rank
