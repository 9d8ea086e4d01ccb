"""Crediting purchases from every channel to one member, following identity's profiles."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm_contracts.envelope import Identifier, IdentifierKind
from crm_contracts.events.commerce import (
    OnlineOrderCompleted,
    OnlineOrderCompletedPayload,
    OrderLine,
    OrderReturned,
    OrderReturnedPayload,
    ReturnedLine,
    StoreOrderCompleted,
    StoreOrderCompletedPayload,
)
from crm_contracts.events.identity import ProfileSnapshot, ProfileSnapshotPayload
from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import blind_identifier
from crm_platform.settings import Settings
from engagement.domain.membership import Member
from engagement.membership import Attribution, MemberExists, MembershipApplication

T0 = datetime(2026, 6, 1, 10, tzinfo=UTC)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[MembershipApplication]:
    settings = Settings(var_dir=tmp_path)
    a = MembershipApplication(
        settings.eventsourcing_env("engagement"), BlindIndexer(settings.blind_index_key_bytes)
    )
    yield a
    a.close()


def ident(app: MembershipApplication, kind: IdentifierKind, value: str) -> Identifier:
    return blind_identifier(app.indexer, kind, value)


def store_order(
    order_id: str, total: int, *identifiers: Identifier, at: datetime = T0
) -> StoreOrderCompleted:
    line = OrderLine(line_no=1, sku="TS-1", category="tops", quantity=1, unit_price=total)
    return StoreOrderCompleted(
        occurred_at=at,
        producer="test",
        customer_key=identifiers[0].hash if identifiers else f"anonymous:{order_id}",
        identifiers=identifiers,
        payload=StoreOrderCompletedPayload(order_id=order_id, store_id="S001", lines=(line,), total=total),
    )


def online_order(order_id: str, total: int, *identifiers: Identifier) -> OnlineOrderCompleted:
    line = OrderLine(line_no=1, sku="CT-1", category="outer", quantity=1, unit_price=total)
    return OnlineOrderCompleted(
        occurred_at=T0 + timedelta(days=1),
        producer="test",
        customer_key=identifiers[0].hash,
        identifiers=identifiers,
        payload=OnlineOrderCompletedPayload(order_id=order_id, lines=(line,), total=total),
    )


def profile(customer: uuid.UUID, *identifiers: Identifier) -> ProfileSnapshot:
    return ProfileSnapshot(
        occurred_at=T0,
        producer="identity.resolver",
        customer_key=str(customer),
        identifiers=identifiers,
        payload=ProfileSnapshotPayload(customer_id=customer, identifiers=identifiers),
    )


def a_return(order_id: str, refund: int, channel: str = "store") -> OrderReturned:
    return OrderReturned(
        occurred_at=T0 + timedelta(days=3),
        producer="test",
        customer_key="k",
        payload=OrderReturnedPayload(
            return_id=f"RET-{order_id}",
            original_order_id=order_id,
            channel=channel,  # type: ignore[arg-type]
            store_id="S001" if channel == "store" else None,  # a store return names its store
            lines=(ReturnedLine(line_no=1, sku="TS-1", category="tops", quantity=1, amount=refund),),
            refund_total=refund,
        ),
    )


def test_a_store_card_purchase_and_an_online_email_order_count_for_one_member(
    app: MembershipApplication, tmp_path: Path
) -> None:
    attribution = Attribution(app, tmp_path / "attribution.sqlite")
    app.enrol("M0001", "store", T0 - timedelta(days=30))
    card = ident(app, IdentifierKind.MEMBER_NO, "M0001")
    email = ident(app, IdentifierKind.EMAIL, "hanako@example.jp")

    [credit] = attribution.apply(store_order("S001-1", 20_000, card))
    assert credit.kind == "credited"
    [waiting] = attribution.apply(online_order("W-1", 15_000, email))
    assert waiting.kind == "pending"  # identity has not linked the e-mail yet
    assert attribution.pending_orders() == 1

    customer = uuid.uuid4()
    [late] = attribution.apply(profile(customer, card, email))  # the resolver linked them
    assert (late.kind, late.order_key) == ("credited", "online:W-1")
    member = app.member(card.hash)
    assert member.window(T0 + timedelta(days=2), app.programme) == (35_000, 2)
    assert member.rank == "silver"
    assert member.points == 200 + 150  # both earned at the regular rate; silver applies from now on
    assert attribution.pending_orders() == 0

    # A resent order changes nothing; a return reverses its share.
    [again] = attribution.apply(store_order("S001-1", 20_000, card))
    assert app.member(card.hash).points == 350 and again.kind == "credited"
    [reversed_] = attribution.apply(a_return("S001-1", 20_000))
    assert reversed_.kind == "reversed"
    member = app.member(card.hash)
    assert member.points == 150
    assert member.window(T0 + timedelta(days=4), app.programme) == (15_000, 1)
    assert member.rank == "regular"


def test_the_same_receipt_id_at_two_stores_is_two_purchases_each_returned_on_its_own(
    app: MembershipApplication, tmp_path: Path
) -> None:
    """Order ids are per store (the ingestion ledger's namespaces); a purchase credited
    under the key used before (``store:<order id>``) is still found by its return."""
    attribution = Attribution(app, tmp_path / "attribution.sqlite")
    app.enrol("M0001", "store", T0 - timedelta(days=30))
    card = ident(app, IdentifierKind.MEMBER_NO, "M0001")
    at_s2 = store_order("R1-1", 5_000, card)
    at_s2 = at_s2.model_copy(update={"payload": at_s2.payload.model_copy(update={"store_id": "S002"})})
    assert [c.kind for c in attribution.apply(store_order("R1-1", 10_000, card))] == ["credited"]
    assert [c.kind for c in attribution.apply(at_s2)] == ["credited"]
    assert app.member(card.hash).points == 100 + 50
    back = a_return("R1-1", 5_000)
    back = back.model_copy(update={"payload": back.payload.model_copy(update={"store_id": "S002"})})
    [reversed_] = attribution.apply(back)
    assert (reversed_.kind, reversed_.order_key) == ("reversed", "store@4:S002:R1-1")
    assert app.member(card.hash).points == 100  # S001's purchase stays
    # Credited before ids were per store: the return finds it under its old key.
    member = app.member(card.hash)
    app.credit(member, "store:OLD-1", T0, "store", 20_000)
    with attribution._lock:
        attribution._db.execute("INSERT INTO credited VALUES (?, ?)", ("store:OLD-1", card.hash))
    [old] = attribution.apply(a_return("OLD-1", 20_000))
    assert (old.kind, old.order_key) == ("reversed", "store:OLD-1")
    assert app.member(card.hash).points == 100


def test_anonymous_sales_and_non_members_are_not_credited(app: MembershipApplication, tmp_path: Path) -> None:
    attribution = Attribution(app, tmp_path / "attribution.sqlite")
    assert attribution.apply(store_order("S001-9", 5_000))[0].kind == "ignored"
    stranger = ident(app, IdentifierKind.EMAIL, "nobody@example.jp")
    assert attribution.apply(online_order("W-9", 5_000, stranger))[0].kind == "pending"
    assert attribution.drop_stale(T0 + timedelta(days=32)) == 1


def test_enrolling_twice_is_refused(app: MembershipApplication) -> None:
    app.enrol("M0002", "online", T0)
    with pytest.raises(MemberExists):
        app.enrol("m-0002", "store", T0)  # the same number written another way


def test_the_sweep_expires_points_and_lowers_ranks_when_members_fall_due(
    app: MembershipApplication, tmp_path: Path
) -> None:
    attribution = Attribution(app, tmp_path / "attribution.sqlite")
    app.enrol("M0003", "store", T0 - timedelta(days=30))
    card = ident(app, IdentifierKind.MEMBER_NO, "M0003")
    attribution.apply(store_order("S001-G", 120_000, card))  # gold at once
    assert app.member(card.hash).rank == "gold"
    assert attribution.due(T0 + timedelta(days=364)) == []  # nothing due inside the year
    assert attribution.sweep(T0 + timedelta(days=364)) == 0

    # A year on the purchase leaves the window: the rank falls, with its reason.
    year = T0 + timedelta(days=366)
    assert attribution.due(year) == [card.hash]
    assert attribution.sweep(year) == 1
    member = app.member(card.hash)
    assert member.rank == "regular"
    assert member.points == 0  # its 1,200 points expired the same day (12 months)
    stored = list(app.events.get(member.id))
    expired = [e for e in stored if isinstance(e, Member.PointsExpired)]
    fell = [e for e in stored if isinstance(e, Member.RankChanged) and e.rank == "regular"]
    assert [(e.at, e.points) for e in expired] == [(year, 1_200)]
    assert [(e.at, e.previous) for e in fell] == [(year, "gold")]
    assert "below every threshold" in fell[0].reason
    assert attribution.due(year + timedelta(days=3650)) == []  # nothing left to happen
    assert attribution.sweep(year + timedelta(days=3650)) == 0


def test_members_credited_before_due_dates_were_kept_are_swept_once(
    app: MembershipApplication, tmp_path: Path
) -> None:
    path = tmp_path / "attribution.sqlite"
    attribution = Attribution(app, path)
    app.enrol("M0004", "store", T0 - timedelta(days=30))
    card = ident(app, IdentifierKind.MEMBER_NO, "M0004")
    attribution.apply(store_order("S001-H", 40_000, card))
    attribution.close()
    import sqlite3

    with sqlite3.connect(path) as db:  # as a store written by the previous version
        db.execute("DROP TABLE member_due")
    attribution = Attribution(app, path)
    assert attribution.due(T0) == [card.hash]  # due at once
    assert attribution.sweep(T0) == 1
    assert attribution.due(T0) == []
    assert attribution.due(T0 + timedelta(days=366)) == [card.hash]


def test_issued_member_numbers_carry_a_luhn_check_digit() -> None:
    from engagement.membership import issue_member_no, luhn_digit

    assert luhn_digit("7992739871") == "3"  # the textbook example
    assert luhn_digit("453914880343646") == "7"
    numbers = {issue_member_no() for _ in range(200)}
    assert len(numbers) == 200
    assert all(len(n) == 13 and n[0] != "0" and luhn_digit(n[:-1]) == n[-1] for n in numbers)


def test_orders_waiting_from_before_the_identifier_index_are_still_found(
    app: MembershipApplication, tmp_path: Path
) -> None:
    path = tmp_path / "attribution.sqlite"
    attribution = Attribution(app, path)
    app.enrol("M0005", "store", T0 - timedelta(days=30))
    card = ident(app, IdentifierKind.MEMBER_NO, "M0005")
    email = ident(app, IdentifierKind.EMAIL, "old@example.jp")
    other = ident(app, IdentifierKind.EMAIL, "someone-else@example.jp")
    assert attribution.apply(online_order("W-OLD", 8_000, email))[0].kind == "pending"
    assert attribution.apply(online_order("W-OTHER", 3_000, other))[0].kind == "pending"
    attribution.close()
    import sqlite3

    with sqlite3.connect(path) as db:  # as a store written by the previous version
        db.execute("DROP TABLE pending_ident")
    attribution = Attribution(app, path)
    [credit] = attribution.apply(profile(uuid.uuid4(), card, email))
    assert (credit.kind, credit.order_key) == ("credited", "online:W-OLD")
    assert attribution.pending_orders() == 1  # the other person's order still waits
    assert app.member(card.hash).window(T0 + timedelta(days=2), app.programme) == (8_000, 1)
    assert attribution.drop_stale(T0 + timedelta(days=40)) == 1
    assert attribution.pending_orders() == 0


def test_no_statement_of_the_attribution_reads_a_whole_table(
    app: MembershipApplication, tmp_path: Path
) -> None:
    """Every statement a profile, an order, a return and a sweep run is an index lookup
    (SQLite's plan says SEARCH, not SCAN): one scan per profile made the worker fall
    hours behind at 20,000 customers (a lag of 154,725 records)."""
    import sqlite3

    attribution = Attribution(app, tmp_path / "attribution.sqlite")
    db: sqlite3.Connection = attribution._db
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    app.enrol("M0001", "store", T0 - timedelta(days=30))
    card = ident(app, IdentifierKind.MEMBER_NO, "M0001")
    email = ident(app, IdentifierKind.EMAIL, "hanako@example.jp")
    attribution.apply(online_order("W-1", 5000, email))  # waits: nobody owns the e-mail yet
    attribution.apply(profile(uuid.uuid4(), card, email))  # explains it
    attribution.apply(store_order("S-1", 3000, card))
    attribution.apply(a_return("S-1", 3000))
    attribution.sweep(T0 + timedelta(days=400))
    db.set_trace_callback(None)
    tables = ("identifier_owner", "customer_members", "credited", "pending", "pending_ident", "member_due")
    checked = 0
    for sql in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "DELETE", "UPDATE", "INSERT")):
            continue
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql))
        checked += 1
        assert not any(f"SCAN {t}" in plan.replace("SCAN TABLE ", "SCAN ") for t in tables), (sql, plan)
    assert checked >= 10


def test_a_member_changed_by_another_writer_meanwhile_is_read_again_and_credited(
    app: MembershipApplication, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker credits the member it has just read; if another process (the API, the
    other writer of the same store) saved that member in between, the save is refused
    and the worker reads the member again: both changes stay, neither is lost."""
    attribution = Attribution(app, tmp_path / "attribution.sqlite")
    app.enrol("M0001", "store", T0 - timedelta(days=30))
    card = ident(app, IdentifierKind.MEMBER_NO, "M0001")
    settings = Settings(var_dir=tmp_path)
    other = MembershipApplication(
        settings.eventsourcing_env("engagement"), BlindIndexer(settings.blind_index_key_bytes)
    )
    original = MembershipApplication.credit
    raced: list[str] = []

    def credit_after_a_race(self: MembershipApplication, member: Member, *args: object) -> bool:
        if not raced:  # the other writer gets in between the read and the save, once
            raced.append(member.member_no_hash)
            other.credit(other.member(member.member_no_hash), "online:API-1", T0, "online", 10_000)
        return original(self, member, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(MembershipApplication, "credit", credit_after_a_race)
    [credit] = attribution.apply(store_order("S001-9", 20_000, card))
    assert credit.kind == "credited" and raced == [card.hash]
    member = app.member(card.hash)
    assert set(member.purchases) == {"online:API-1", "store@4:S001:S001-9"}
    assert member.points == 100 + 200
    other.close()
