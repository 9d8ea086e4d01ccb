"""The resolver worker against the real broker: resolution, and a SIGKILL mid-stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm_contracts.envelope import Identifier, IdentifierKind
from crm_contracts.events.commerce import OrderLine, StoreOrderCompleted, StoreOrderCompletedPayload
from crm_contracts.topics import IDENTITY_PROFILE
from crm_platform.crypto import BlindIndexer
from crm_platform.kafka import EventProducer
from crm_platform.settings import Settings
from identity.bootstrap import build
from identity.domain.claim import IdentifierClaim, claim_id

pytestmark = pytest.mark.integration
PEOPLE = 800


def _ident(indexer: BlindIndexer, kind: IdentifierKind, value: str) -> Identifier:
    return indexer.identifier(kind, value)


def orders_for(
    indexer: BlindIndexer, run: str
) -> tuple[list[StoreOrderCompleted], list[tuple[Identifier, Identifier]]]:
    """Per person: an order with only the member card, then one with card and e-mail."""
    line = OrderLine(line_no=1, sku="SKU", category="c", quantity=1, unit_price=1000)
    people, first, second = [], [], []
    for i in range(PEOPLE):
        member = _ident(indexer, IdentifierKind.MEMBER_NO, f"{run}-{i}")
        email = _ident(indexer, IdentifierKind.EMAIL, f"p{i}.{run}@example.jp")
        people.append((member, email))
        for bucket, identifiers in ((first, (member,)), (second, (member, email))):
            bucket.append(
                StoreOrderCompleted(
                    occurred_at=datetime.now(UTC),
                    producer="test",
                    customer_key=member.hash,
                    identifiers=identifiers,
                    payload=StoreOrderCompletedPayload(
                        order_id=f"{run}-{i}-{len(bucket)}", store_id="S1", lines=(line,), total=1000
                    ),
                )
            )
    return first + second, people


@pytest.fixture
def resolver_env(tmp_path: Path, kafka_bootstrap: str) -> dict[str, str]:
    env = {
        **os.environ,
        "CRM_VAR_DIR": str(tmp_path / "var"),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_RESOLVER_APP_ID": f"resolver-test-{uuid.uuid4().hex[:8]}",
        "CRM_LOG_LEVEL": "INFO",
        # A topic namespace of its own: nothing earlier runs left on the broker.
        "CRM_KAFKA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}.",
    }
    return env


def _start(env: dict[str, str], log: Path, ready_mark: int = 1) -> subprocess.Popen[bytes]:
    """Start a worker and wait until it has its partitions (its ``ready_mark``-th Ready)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "identity", "resolver"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("[^Worker]: Ready") < ready_mark:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "resolver did not become ready"
        time.sleep(0.2)
    time.sleep(1.0)  # partition assignment settles right after Ready
    return proc


def _linked(settings: Settings, people: list[tuple[Identifier, Identifier]]) -> tuple[int, set[str]]:
    """How many e-mails are linked, and the owners of every member card."""
    identity = build(settings)
    try:
        linked, owners = 0, set()
        for member, email in people:
            m = identity.app._maybe(claim_id("member_no", member.hash))
            e = identity.app._maybe(claim_id("email", email.hash))
            if isinstance(m, IdentifierClaim):
                assert len(m.owners) == 1, "a member card must belong to one customer"
                owners.add(m.owners[0])
                if isinstance(e, IdentifierClaim):
                    assert e.owners == m.owners, "the e-mail links to the card's customer"
                    linked += 1
        return linked, owners
    finally:
        identity.close()


def _claims_created(settings: Settings) -> int:
    """Cheap progress probe: identifier claims recorded so far (two per person)."""
    import sqlite3

    path = settings.var_dir / "identity" / "events.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=10)
    try:
        (count,) = db.execute(
            "SELECT count(*) FROM stored_events WHERE topic LIKE '%IdentifierClaim.Created'"
        ).fetchone()
        return int(count)
    except sqlite3.OperationalError:
        return 0  # the table is not created yet
    finally:
        db.close()


def test_sigkill_mid_stream_creates_no_customer_twice_and_leaves_nothing_unresolved(
    resolver_env: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(var_dir=Path(resolver_env["CRM_VAR_DIR"]), kafka_bootstrap=kafka_bootstrap)
    indexer = BlindIndexer(settings.blind_index_key_bytes)
    run = uuid.uuid4().hex[:8]
    events, people = orders_for(indexer, run)
    log = tmp_path / "resolver.log"
    worker = _start(resolver_env, log)

    async def produce() -> None:
        async with EventProducer(
            kafka_bootstrap, client_id="resolver-test", topic_prefix=resolver_env["CRM_KAFKA_TOPIC_PREFIX"]
        ) as producer:
            await producer.publish_many(events)

    asyncio.run(produce())
    # Kill the worker hard once it is part-way through the decisions.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _claims_created(settings) >= PEOPLE // 2:
            break
        assert worker.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    linked_at_kill, owners_at_kill = _linked(settings, people)
    assert len(owners_at_kill) < PEOPLE or linked_at_kill < PEOPLE, "killed too late to test anything"

    restarted = _start(resolver_env, log, ready_mark=2)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if _claims_created(settings) >= 2 * PEOPLE:
                break
            assert restarted.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(30)
    linked, owners = _linked(settings, people)
    assert linked == PEOPLE, log.read_text()[-4000:]  # nothing left unresolved
    assert len(owners) == PEOPLE  # one customer per person: nobody created twice
    identity = build(settings)
    try:
        for owner in owners:
            customer = identity.app.get_customer(uuid.UUID(owner))
            assert customer["status"] == "active"
            assert sorted(i["kind"] for i in customer["identifiers"]) == ["email", "member_no"]
    finally:
        identity.close()
    _check_profile_topic(kafka_bootstrap, resolver_env["CRM_KAFKA_TOPIC_PREFIX"], owners)


def _check_profile_topic(bootstrap: str, prefix: str, owners: set[str]) -> None:
    """The unified profile topic (the profile table's changelog) holds, for every
    customer, a snapshot with both identifiers, on the partition Kafka's partitioner
    gives its key, so that compaction keeps exactly the latest one."""
    from aiokafka.partitioner import DefaultPartitioner

    from crm_contracts.events.identity import ProfileSnapshot
    from crm_contracts.registry import decode
    from crm_platform.testing import read_topic

    topic = prefix + IDENTITY_PROFILE.name
    partitions = list(range(IDENTITY_PROFILE.partitions))
    # The decisions are in the store before the worker's producer has flushed every
    # snapshot (and a restarted worker may publish some again): read until every
    # customer has one, or give up after a minute.
    deadline = time.monotonic() + 60
    wanted = {uuid.UUID(str(o)) for o in owners}
    while True:
        records = asyncio.run(read_topic(bootstrap, topic, expect=len(owners), timeout=30))
        latest: dict[str, ProfileSnapshot] = {}
        for record in records:
            snapshot = decode(record.value)
            assert isinstance(snapshot, ProfileSnapshot)
            assert record.key == str(snapshot.payload.customer_id).encode()
            assert record.partition == DefaultPartitioner()(record.key, partitions, partitions)
            latest[str(snapshot.payload.customer_id)] = snapshot
        if {uuid.UUID(c) for c in latest} >= wanted or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {uuid.UUID(c) for c in latest} == wanted
    for snapshot in latest.values():
        assert {i.kind for i in snapshot.payload.identifiers} == {
            IdentifierKind.MEMBER_NO,
            IdentifierKind.EMAIL,
        }
        assert snapshot.payload.channels == ("store",)
