"""The resolver's per-event logic with in-memory tables and a fake identity application."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from crm_contracts.envelope import Identifier, IdentifierKind
from crm_contracts.events.commerce import OrderLine, StoreOrderCompleted, StoreOrderCompletedPayload
from crm_contracts.events.identity import (
    CustomersMerged,
    CustomersMergedPayload,
    LinkEvidence,
    MergeUndone,
    MergeUndonePayload,
)
from crm_contracts.registry import encode
from identity.application import Ident, Resolution
from identity.resolver.app import LocalState
from identity.resolver.core import ResolverCore

T0 = datetime(2026, 5, 1, 10, tzinfo=UTC)
MEMBER = Identifier(kind=IdentifierKind.MEMBER_NO, hash="1" * 64)
EMAIL = Identifier(kind=IdentifierKind.EMAIL, hash="2" * 64)


class FakeIdentity:
    def __init__(self) -> None:
        self.calls: list[list[Ident]] = []
        self.customer = uuid.uuid4()

    def observe(
        self, idents: Sequence[Ident], channel: str = "store", source: str | None = None
    ) -> Resolution:
        self.calls.append(list(idents))
        return Resolution(self.customer, "created", linked=tuple(idents))


def order(*identifiers: Identifier, at: datetime = T0) -> StoreOrderCompleted:
    line = OrderLine(line_no=1, sku="S", category="c", quantity=1, unit_price=100)
    return StoreOrderCompleted(
        occurred_at=at,
        producer="engagement.api",
        customer_key=identifiers[0].hash,
        identifiers=identifiers,
        payload=StoreOrderCompletedPayload(
            order_id=str(uuid.uuid4()), store_id="S1", lines=(line,), total=100
        ),
    )


def test_unknown_identifiers_go_to_identity_known_ones_take_the_fast_path() -> None:
    fake = FakeIdentity()
    core = ResolverCore(fake, {}, {})
    first = core.handle(order(MEMBER, EMAIL))
    assert first.path == "decided"
    assert first.customer_id == str(fake.customer)
    assert first.published == [first.customer_id]
    assert core.snapshot(str(fake.customer)).payload.channels == ("store",)
    again = core.handle(order(MEMBER, at=T0 + timedelta(hours=1)))
    assert again.path == "fast"
    assert again.published == []  # same day, same channel: nothing new to publish
    next_day = core.handle(order(EMAIL, at=T0 + timedelta(days=1)))
    assert next_day.path == "fast"
    assert next_day.published == [first.customer_id]
    snapshot = core.snapshot(str(fake.customer))
    assert snapshot.payload.last_seen == T0 + timedelta(days=1)
    assert snapshot.payload.events_seen == 3
    assert len(fake.calls) == 1


def test_merges_and_undo_move_identifiers_between_customers() -> None:
    fake = FakeIdentity()
    core = ResolverCore(fake, {}, {})
    core.handle(order(MEMBER))
    survivor = str(fake.customer)
    other = uuid.uuid4()
    core.identifiers[f"email:{EMAIL.hash}"] = str(other)
    merged = CustomersMerged(
        occurred_at=T0,
        producer="identity.relay",
        customer_key=survivor,
        payload=CustomersMergedPayload(
            merge_id=uuid.uuid4(),
            survivor_id=uuid.UUID(survivor),
            merged_id=other,
            moved=(EMAIL,),
            evidence=LinkEvidence(rule="staff"),
        ),
    )
    outcome = core.handle(merged)
    assert outcome.path == "identity"
    assert core.identifiers[f"email:{EMAIL.hash}"] == survivor
    assert core.profiles[str(other)]["status"] == "merged"
    assert core.handle(order(EMAIL)).customer_id == survivor  # later events follow the identifier
    undone = MergeUndone(
        occurred_at=T0,
        producer="identity.relay",
        customer_key=survivor,
        payload=MergeUndonePayload(
            merge_id=merged.payload.merge_id,
            survivor_id=uuid.UUID(survivor),
            restored_id=other,
            restored=(EMAIL,),
            reason="wrong",
        ),
    )
    core.handle(undone)
    assert core.identifiers[f"email:{EMAIL.hash}"] == str(other)
    assert core.profiles[str(other)]["status"] == "active"
    assert core.handle(order(EMAIL)).customer_id == str(other)


def test_raw_records_take_the_same_paths() -> None:
    from crm_contracts.registry import encode

    fake = FakeIdentity()
    core = ResolverCore(fake, {}, {})
    assert core.handle_raw(encode(order(MEMBER, EMAIL))).path == "decided"
    fast = core.handle_raw(encode(order(EMAIL, at=T0 + timedelta(days=2))))
    assert fast.path == "fast"
    assert fast.customer_id == str(fake.customer)
    assert core.profiles[str(fake.customer)]["events_seen"] == 2


def test_bad_records_are_reported_not_raised() -> None:
    core = ResolverCore(FakeIdentity(), {}, {})
    assert core.handle_raw(b"{nope").path == "invalid"
    bad = core.handle_raw(
        b'{"event_type": "order.store_completed", "identifiers": [{"kind": "email", "hash": "x"}]}'
    )
    assert bad.path == "invalid"
    assert bad.error


def test_a_batch_stages_identifier_writes_until_its_decisions_are_saved() -> None:
    from contextlib import contextmanager

    from crm_contracts.registry import encode
    from identity.application import ConcurrentUpdate

    class RacingIdentity(FakeIdentity):
        def __init__(self) -> None:
            super().__init__()
            self.units = 0

        @contextmanager
        def unit_of_work(self):  # type: ignore[no-untyped-def]
            self.units += 1
            yield
            if self.units == 1:
                raise ConcurrentUpdate("lost the race")

    fake = RacingIdentity()
    table: dict[str, str] = {}
    core = ResolverCore(fake, table, {})
    outcomes = core.handle_batch([encode(order(MEMBER)), encode(order(MEMBER))])
    # The unit failed: nothing staged leaked; the batch was redone record by record.
    assert [o.path for o in outcomes] == ["decided", "fast"]
    assert table == {f"member_no:{MEMBER.hash}": str(fake.customer)}


def test_a_profile_survives_the_round_trip_through_its_published_snapshot() -> None:
    import orjson

    from crm_contracts.registry import encode
    from identity.resolver.core import profile_from_snapshot, profile_snapshot

    fake = FakeIdentity()
    core = ResolverCore(fake, {}, {})
    core.handle(order(MEMBER, EMAIL, at=T0.replace(microsecond=250_000)))
    core.handle(order(MEMBER, at=T0 + timedelta(days=2)))
    cid = str(fake.customer)
    profile = core.profiles[cid]
    back = profile_from_snapshot(orjson.loads(encode(profile_snapshot(cid, profile))))
    # times come back in the spelling the resolver compares as strings
    assert back == {**profile, "attributes": back["attributes"]}
    assert back["first_seen"] == T0.replace(microsecond=250_000).isoformat()


def test_table_keys_are_partitioned_like_kafka_partitions_them() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from identity.resolver.tables import key_partition

    for n in range(200):
        key = f"member_no:{n:064x}".encode()
        assert key_partition(key, 6) == DefaultPartitioner()(key, list(range(6)), list(range(6)))


def test_a_profile_lost_in_a_crash_heals_on_the_next_sighting() -> None:
    """The identifier table knows the owner but the profile write was lost: the fast
    path puts the event's identifiers back on the profile and republishes it."""
    fake = FakeIdentity()
    cid = str(uuid.uuid4())
    core = ResolverCore(fake, {f"member_no:{MEMBER.hash}": cid, f"email:{EMAIL.hash}": cid}, {})
    outcome = core.handle_raw(encode(order(MEMBER, EMAIL)))
    assert outcome.path == "fast" and outcome.published == [cid]
    assert {(i["kind"], i["hash"]) for i in core.profiles[cid]["identifiers"]} == {
        ("member_no", MEMBER.hash),
        ("email", EMAIL.hash),
    }
    assert fake.calls == []  # no decision needed for that


def test_a_complete_local_profile_is_republished_on_its_first_sighting() -> None:
    """After a SIGKILL the local table can hold a profile whose changelog record (the
    published snapshot) was never produced: the first sighting in a process republishes
    it even though nothing changed; later sightings of the same day do not."""
    fake = FakeIdentity()
    writer = ResolverCore(fake, {}, {})
    cid = writer.handle(order(MEMBER, EMAIL)).customer_id
    assert cid is not None
    restarted = ResolverCore(fake, dict(writer.identifiers), dict(writer.profiles))
    first = restarted.handle_raw(encode(order(MEMBER, EMAIL, at=T0 + timedelta(minutes=1))))
    assert first.path == "fast" and first.published == [cid]
    again = restarted.handle_raw(encode(order(MEMBER, at=T0 + timedelta(minutes=2))))
    assert again.path == "fast" and again.published == []


def test_after_a_clean_stop_a_first_sighting_writes_nothing_new() -> None:
    """Local tables that match their changelogs (the last process stopped cleanly) are
    trusted: a first sighting that changes nothing publishes nothing."""
    fake = FakeIdentity()
    writer = ResolverCore(fake, {}, {})
    cid = writer.handle(order(MEMBER, EMAIL)).customer_id
    restarted = ResolverCore(
        fake, dict(writer.identifiers), dict(writer.profiles), republish_on_first_sighting=False
    )
    same_day = restarted.handle_raw(encode(order(MEMBER, EMAIL, at=T0 + timedelta(minutes=1))))
    assert same_day.path == "fast" and same_day.published == []
    # A profile that lacks an identifier the event shows is still repaired.
    del restarted.profiles[cid]["identifiers"][1:]
    restarted._sightings.clear()
    healed = restarted.handle_raw(encode(order(MEMBER, EMAIL, at=T0 + timedelta(minutes=2))))
    assert healed.published == [cid] and len(restarted.profiles[cid]["identifiers"]) == 2


def test_local_tables_are_trusted_after_a_clean_stop_or_when_new(tmp_path: Path) -> None:
    tables = tmp_path / "tables"
    assert LocalState(tables).trusted  # nothing local: restored from the changelogs
    tables.mkdir()
    (tables / "identifier-owner-0.db").mkdir()
    assert not LocalState(tables).trusted  # tables, and no word of a clean stop
    stopping = LocalState(tables)
    stopping.stopped()
    assert LocalState(tables).trusted  # the marker is read once...
    assert not LocalState(tables).trusted  # ...and removed, so a crash after it counts
    cut_short = LocalState(tables)
    cut_short.in_flight = True
    cut_short.stopped()
    assert not LocalState(tables).trusted
