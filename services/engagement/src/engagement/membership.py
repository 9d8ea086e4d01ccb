"""The membership application, and crediting purchases from any channel to the member.

``MembershipApplication`` is the event-sourced write side (SQLite or PostgreSQL, like
every service store). ``Attribution`` decides *which* member a purchase belongs to. A
store purchase usually shows the member card; an online order usually carries only the
shop account or the e-mail. Engagement never reads identity's store: it follows the
unified profile topic (``crm.identity.profile``), which lists every identifier linked
to a customer, and keeps a local map identifier → customer → member numbers. An order
whose identifiers do not lead to a member yet (the resolver has not linked the e-mail
yet) waits, and is credited as soon as a profile update links it; orders of people who
never become members are dropped after ``pending_days``.

Time changes members too: points expire, purchases leave the rank's rolling window.
``Attribution`` keeps when each member next falls due (``Member.next_due``) and
:meth:`Attribution.sweep` evaluates those members — the worker runs it every
``CRM_MEMBERSHIP_SWEEP_S`` — so nobody is read before something is due.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError

from crm_contracts.envelope import Event, IdentifierKind
from crm_contracts.events.commerce import OnlineOrderCompleted, OrderReturned, StoreOrderCompleted
from crm_contracts.events.identity import ProfileSnapshot
from crm_platform.crypto import BlindIndexer
from crm_platform.eventstore import project
from crm_platform.identifiers import blind_identifier
from engagement.domain.membership import Member, MembershipError, Programme, member_id

T = TypeVar("T")


class MemberNotFound(MembershipError):
    pass


class MemberExists(MembershipError):
    pass


class ConcurrentUpdate(MembershipError):
    pass


class MembershipApplication(Application[uuid.UUID]):
    name = "membership"

    def __init__(
        self, env: dict[str, Any], indexer: BlindIndexer, programme: Programme | None = None
    ) -> None:
        super().__init__(env=env)
        self.indexer = indexer
        self.programme = programme or Programme()

    def member_hash(self, member_no: str) -> str:
        return blind_identifier(self.indexer, IdentifierKind.MEMBER_NO, member_no).hash

    def enrol(self, member_no: str, channel: str, at: datetime, birthday_month: int | None = None) -> Member:
        member = Member.enrol(
            self.member_hash(member_no), channel, at, birthday_month, self.programme.ranks[0].name
        )
        try:
            self.save(member)
        except IntegrityError:
            raise MemberExists(f"member {member_no!r} is enrolled already") from None
        return member

    def enrol_new(self, channel: str, at: datetime, birthday_month: int | None = None) -> tuple[str, Member]:
        """Enrol under a member number the programme issues: 12 random digits and a Luhn
        check digit (a mistyped or misread digit is caught at the till). Random, not a
        sequence, so API processes on any number of machines need nothing shared but
        the store, whose uniqueness makes a collision a retry."""
        for _ in range(8):
            number = issue_member_no()
            try:
                return number, self.enrol(number, channel, at, birthday_month)
            except MemberExists:
                continue
        raise MembershipError("could not issue a free member number; retry")  # pragma: no cover

    def member(self, member_no_hash: str) -> Member:
        try:
            found: Member = self.repository.get(member_id(member_no_hash), projector_func=project)
        except AggregateNotFoundError:
            raise MemberNotFound(member_no_hash) from None
        return found

    def maybe_member(self, member_no_hash: str) -> Member | None:
        try:
            return self.member(member_no_hash)
        except MemberNotFound:
            return None

    def _save(self, member: Member) -> None:
        try:
            self.save(member)
        except IntegrityError:
            raise ConcurrentUpdate(f"member {member.id} changed concurrently; retry") from None

    def credit(self, member: Member, order_key: str, at: datetime, channel: str, amount: int) -> bool:
        done = member.credit_purchase(order_key, at, channel, amount, self.programme)
        if done:
            self._save(member)
        return done

    def reverse(self, member: Member, order_key: str, return_key: str, at: datetime, refunded: int) -> bool:
        done = member.reverse_purchase(order_key, return_key, at, refunded, self.programme)
        if done:
            self._save(member)
        return done

    def redeem(
        self, member_no_hash: str, redemption_id: str, at: datetime, points: int, reason: str
    ) -> Member:
        member = self.member(member_no_hash)
        if member.redeem(redemption_id, at, points, reason):
            self._save(member)
        return member

    def evaluate(self, member_no_hash: str, now: datetime) -> Member:
        """Expire points and re-rank as of ``now`` (a daily job does this for everyone)."""
        member = self.member(member_no_hash)
        member.expire_points(now)
        member.evaluate(now, self.programme)
        if member.pending_events:
            self._save(member)
        return member


def luhn_digit(digits: str) -> str:
    """The Luhn check digit of ``digits`` (the one card numbers end with)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def issue_member_no() -> str:
    body = str(secrets.randbelow(9 * 10**11) + 10**11)  # 12 digits, no leading zero
    return body + luhn_digit(body)


@dataclass(frozen=True)
class Credit:
    member_no_hash: str
    order_key: str
    amount: int
    kind: str  # credited | reversed | pending | ignored


class Attribution:
    """Credits orders and returns to members, following identity's profile topic."""

    def __init__(self, app: MembershipApplication, path: Path, pending_days: int = 30) -> None:
        self.app = app
        self.pending_days = pending_days
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA secure_delete=ON")  # blind indexes: deleted rows are zeroed
        had = {
            row[0]
            for row in self._db.execute(
                "SELECT name FROM sqlite_master"
                " WHERE type = 'table' AND name IN ('member_due', 'pending_ident')"
            )
        }
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS identifier_owner (ident TEXT PRIMARY KEY, customer_id TEXT NOT NULL);
            -- a profile replaces its customer's identifiers: without this, a scan of all
            CREATE INDEX IF NOT EXISTS identifier_owner_customer ON identifier_owner (customer_id);
            CREATE TABLE IF NOT EXISTS customer_members (customer_id TEXT PRIMARY KEY, members BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS credited (order_key TEXT PRIMARY KEY, member_hash TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS pending (
                order_key TEXT PRIMARY KEY, idents BLOB NOT NULL, at TEXT NOT NULL,
                channel TEXT NOT NULL, amount INTEGER NOT NULL);
            -- the waiting orders by identifier: a profile finds the orders it explains
            -- without reading every waiting order
            CREATE TABLE IF NOT EXISTS pending_ident (
                ident TEXT NOT NULL, order_key TEXT NOT NULL, PRIMARY KEY (ident, order_key)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS pending_ident_order ON pending_ident (order_key);
            -- when each member next needs evaluating (epoch seconds, UTC)
            CREATE TABLE IF NOT EXISTS member_due (member_hash TEXT PRIMARY KEY, due_at REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS member_due_at ON member_due (due_at);
            """
        )
        if "member_due" not in had:
            # Members credited before due dates were kept: due at once, the first sweep
            # evaluates them and files their real due dates.
            self._db.execute("INSERT OR IGNORE INTO member_due SELECT DISTINCT member_hash, 0 FROM credited")
        if "pending_ident" not in had:  # orders waiting since before the index was kept
            self._db.execute(
                "INSERT OR IGNORE INTO pending_ident"
                " SELECT value, order_key FROM pending, json_each(CAST(pending.idents AS TEXT))"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- what identity says ----------------------------------------------------------------

    def apply_profile(self, snapshot: ProfileSnapshot) -> list[Credit]:
        """Learn a customer's identifiers; credit the waiting orders they now explain."""
        payload = snapshot.payload
        customer = str(payload.customer_id)
        idents = [f"{i.kind.value}:{i.hash}" for i in payload.identifiers]
        members = sorted(i.hash for i in payload.identifiers if i.kind is IdentifierKind.MEMBER_NO)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM identifier_owner WHERE customer_id = ?", (customer,))
            if payload.status == "active":
                self._db.executemany(
                    "INSERT OR REPLACE INTO identifier_owner VALUES (?, ?)", [(i, customer) for i in idents]
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO customer_members VALUES (?, ?)", (customer, orjson.dumps(members))
                )
            else:
                self._db.execute("DELETE FROM customer_members WHERE customer_id = ?", (customer,))
            self._db.execute("COMMIT")
            waiting = self._db.execute(
                "SELECT order_key, idents, at, channel, amount FROM pending WHERE order_key IN"
                " (SELECT order_key FROM pending_ident WHERE ident IN (SELECT value FROM json_each(?)))",
                (orjson.dumps(idents).decode(),),
            ).fetchall()
        credits = []
        for order_key, raw_idents, at, channel, amount in waiting:
            order_idents = orjson.loads(raw_idents)
            credit = self._credit(order_key, order_idents, datetime.fromisoformat(at), channel, amount)
            if credit.kind == "credited":
                with self._lock:
                    self._db.execute("BEGIN")
                    self._db.execute("DELETE FROM pending WHERE order_key = ?", (order_key,))
                    self._db.execute("DELETE FROM pending_ident WHERE order_key = ?", (order_key,))
                    self._db.execute("COMMIT")
                credits.append(credit)
        return credits

    # -- commerce facts --------------------------------------------------------------------

    def apply(self, event: Event) -> list[Credit]:
        if isinstance(event, ProfileSnapshot):
            return self.apply_profile(event)
        if isinstance(event, StoreOrderCompleted | OnlineOrderCompleted):
            if isinstance(event, StoreOrderCompleted):
                channel, space = "store", _store_space(event.payload.store_id)
            else:
                channel, space = event.payload.channel, "online"
            idents = [f"{i.kind.value}:{i.hash}" for i in event.identifiers]
            credit = self._credit(
                f"{space}:{event.payload.order_id}", idents, event.occurred_at, channel, event.payload.total
            )
            if credit.kind == "pending":
                with self._lock:
                    self._db.execute("BEGIN")
                    self._db.execute(
                        "INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?, ?)",
                        (
                            credit.order_key,
                            orjson.dumps(idents),
                            event.occurred_at.isoformat(),
                            channel,
                            credit.amount,
                        ),
                    )
                    self._db.executemany(
                        "INSERT OR IGNORE INTO pending_ident VALUES (?, ?)",
                        [(i, credit.order_key) for i in idents],
                    )
                    self._db.execute("COMMIT")
            return [credit]
        if isinstance(event, OrderReturned):
            return [self._reverse(event)]
        return []

    def _member_for(self, idents: Sequence[str]) -> Member | None:
        """The member a purchase belongs to: a member card shown wins; else the member
        numbers of the customer the identifiers resolve to (the oldest enrolment)."""
        cards = [i.split(":", 1)[1] for i in idents if i.startswith("member_no:")]
        for card in cards:
            if (member := self.app.maybe_member(card)) is not None:
                return member
        with self._lock:
            customers = {
                row[0]
                for i in idents
                for row in self._db.execute("SELECT customer_id FROM identifier_owner WHERE ident = ?", (i,))
            }
            numbers: list[str] = []
            for customer in sorted(customers):
                row = self._db.execute(
                    "SELECT members FROM customer_members WHERE customer_id = ?", (customer,)
                ).fetchone()
                if row:
                    numbers += orjson.loads(row[0])
        enrolled = [m for m in (self.app.maybe_member(n) for n in numbers) if m is not None]
        if not enrolled:
            return None
        return min(enrolled, key=lambda m: (m.enrolled_at, m.member_no_hash))

    def _credit(
        self, order_key: str, idents: Sequence[str], at: datetime, channel: str, amount: int
    ) -> Credit:
        found = self._member_for(idents)
        if found is None:
            kind = "pending" if idents else "ignored"
            return Credit("", order_key, amount, kind)
        member_hash = found.member_no_hash
        # The member just read is credited; only a retry (another writer won the race)
        # reads it again. Reading each member twice per order was a third of the worker.
        fresh = [found]

        def change() -> Member:
            member = fresh.pop() if fresh else self.app.member(member_hash)
            self.app.credit(member, order_key, at, channel, amount)
            return member

        self._file_due(self._retrying(change), at, credited=order_key)
        return Credit(member_hash, order_key, amount, "credited")

    def _reverse(self, event: OrderReturned) -> Credit:
        payload = event.payload
        if payload.channel != "store":
            space = "online"
        elif payload.store_id is not None:
            space = _store_space(payload.store_id)
        else:  # a store return from before a store return named its store
            space = "store"
        # Order ids are per store: a store's order, else one credited under the key used
        # before (``store:<order id>``, from before ids were per store).
        keys = [f"{space}:{payload.original_order_id}"]
        if space.startswith("store@"):
            keys.append(f"store:{payload.original_order_id}")
        return_key = f"{space}:return:{payload.return_id}"
        with self._lock:
            for order_key in keys:
                row = self._db.execute(
                    "SELECT member_hash FROM credited WHERE order_key = ?", (order_key,)
                ).fetchone()
                if row is not None:
                    break
            if row is None:
                # Not credited (yet): a waiting order shrinks by what was refunded.
                for order_key in keys:
                    waiting = self._db.execute(
                        "UPDATE pending SET amount = max(0, amount - ?) WHERE order_key = ?",
                        (payload.refund_total, order_key),
                    )
                    if waiting.rowcount:
                        break
                return Credit("", keys[0], payload.refund_total, "ignored")
        member_hash, at, refunded = row[0], event.occurred_at, payload.refund_total

        def change() -> Member:
            member = self.app.member(member_hash)
            self.app.reverse(member, order_key, return_key, at, refunded)
            return member

        self._file_due(self._retrying(change), at)
        return Credit(member_hash, order_key, refunded, "reversed")

    @staticmethod
    def _retrying(change: Callable[[], T], attempts: int = 5) -> T:
        """Redo a change that lost a race with another writer (the API redeeming points)."""
        for attempt in range(attempts):
            try:
                return change()
            except ConcurrentUpdate:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    # -- time: expiry and rank decay -------------------------------------------------------

    def _file_due(self, member: Member, evaluated_at: datetime, credited: str | None = None) -> None:
        """Keep when ``member`` next falls due; with ``credited``, also that this order
        was credited to it — in one transaction (one commit per order, not two)."""
        due = member.next_due(evaluated_at, self.app.programme)
        with self._lock:
            self._db.execute("BEGIN")
            if credited is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO credited VALUES (?, ?)", (credited, member.member_no_hash)
                )
            if due is None:
                self._db.execute("DELETE FROM member_due WHERE member_hash = ?", (member.member_no_hash,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO member_due VALUES (?, ?)",
                    (member.member_no_hash, due.timestamp()),
                )
            self._db.execute("COMMIT")

    def due(self, now: datetime, limit: int = 1000) -> list[str]:
        """Members (blind indexes of their numbers) due for evaluation at ``now``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT member_hash FROM member_due WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                (now.timestamp(), limit),
            ).fetchall()
        return [row[0] for row in rows]

    def sweep(self, now: datetime | None = None, batch: int = 1000) -> int:
        """Expire points and re-rank every member due at ``now`` (events for each change,
        published by the relay like any other); returns the members evaluated."""
        now = now or datetime.now(UTC)
        done: set[str] = set()
        # Evaluated members fall due again only after ``now``; ``done`` guards the loop.
        while hashes := [h for h in self.due(now, batch) if h not in done]:
            for member_hash in hashes:
                done.add(member_hash)
                try:
                    member = self._retrying(partial(self.app.evaluate, member_hash, now))
                except MemberNotFound:  # its store was reset under it: nothing left to evaluate
                    with self._lock:
                        self._db.execute("DELETE FROM member_due WHERE member_hash = ?", (member_hash,))
                    continue
                self._file_due(member, now)
        return len(done)

    def drop_stale(self, now: datetime) -> int:
        """Forget waiting orders older than ``pending_days`` (never members)."""
        cutoff = (now - timedelta(days=self.pending_days)).isoformat()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "DELETE FROM pending_ident WHERE order_key IN (SELECT order_key FROM pending WHERE at < ?)",
                (cutoff,),
            )
            dropped = self._db.execute("DELETE FROM pending WHERE at < ?", (cutoff,)).rowcount
            self._db.execute("COMMIT")
            return int(dropped)

    def pending_orders(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM pending").fetchone()
        return int(count)


def _store_space(store_id: str) -> str:
    """A store's order keys (``store@<length>:<store id>:<order id>``): order ids are per
    store, and the length keeps a store id holding ``:`` apart from the order id."""
    return f"store@{len(store_id)}:{store_id}"
