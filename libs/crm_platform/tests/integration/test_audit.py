"""The audit log of personal-data reads, in both stores: written, queried by customer,
key and time, and refused any change (the store's triggers, not only the code)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crm_platform.audit import AuditEntry, AuditLog, audit_router
from crm_platform.http import create_app
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(store_settings: Settings, clock: Clock) -> Iterator[AuditLog]:
    audit = AuditLog.open(store_settings, "identity", clock)
    yield audit
    audit.close()


def test_entries_are_kept_and_filtered_by_customer_key_and_time(log: AuditLog, clock: Clock) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    log.record(
        AuditEntry(
            key_id="staff-1", action="GET /customers/{customer_id}", purpose="profile", customer_id=alice
        )
    )
    clock.now = T0 + timedelta(hours=1)
    log.record(
        AuditEntry(
            key_id="dispatcher",
            action="POST /messages/{message_id}/contact",
            purpose="campaign:c1",
            customer_id=bob,
            subject="m1",
        ),
        AuditEntry(
            key_id="dispatcher",
            action="POST /messages/{message_id}/contact",
            purpose="campaign:c1",
            customer_id=alice,
            subject="m2",
        ),
    )
    everything = log.query()
    assert [(e["key_id"], e["customer_id"]) for e in everything] == [
        ("staff-1", alice),
        ("dispatcher", bob),
        ("dispatcher", alice),
    ]
    assert everything[0]["at"] == T0
    assert [e["subject"] for e in log.query(customer_id=alice)] == [None, "m2"]
    assert [e["customer_id"] for e in log.query(key_id="dispatcher", customer_id=bob)] == [bob]
    later = log.query(since=T0 + timedelta(minutes=30))
    assert [e["subject"] for e in later] == ["m1", "m2"]
    assert [e["key_id"] for e in log.query(until=T0 + timedelta(minutes=30))] == ["staff-1"]
    assert len(log.query(limit=1, offset=2)) == 1


def test_the_store_refuses_to_change_or_delete_an_entry(log: AuditLog) -> None:
    customer = str(uuid.uuid4())
    log.record(AuditEntry(key_id="staff-1", action="GET /x", purpose="profile", customer_id=customer))
    backend = log._backend  # the raw connection an intruder with the store's password would have
    statements = ["UPDATE audit_log SET key_id = 'someone-else'", "DELETE FROM audit_log"]
    if type(backend).__name__ == "_Postgres":
        statements.append("TRUNCATE audit_log")
    for statement in statements:
        with pytest.raises(Exception, match="append-only"):
            backend.execute(statement)  # type: ignore[attr-defined]
    assert [e["key_id"] for e in log.query(customer_id=customer)] == ["staff-1"]


def test_the_audit_route_needs_the_audit_scope(store_settings: Settings, log: AuditLog) -> None:
    customer = str(uuid.uuid4())
    log.record(AuditEntry(key_id="staff-1", action="GET /x", purpose="profile", customer_id=customer))
    settings = store_settings.model_copy(
        update={"api_keys": {"auditor": ["identity:audit"], "reader": ["identity:read"]}}
    )
    app = create_app(settings=settings, title="t")
    app.include_router(audit_router("identity", lambda _: log))
    with TestClient(app) as client:
        assert client.get("/v1/audit", headers={"X-API-Key": "reader"}).status_code == 403
        got = client.get("/v1/audit", params={"customer_id": customer}, headers={"X-API-Key": "auditor"})
        assert got.status_code == 200, got.text
        assert [e["purpose"] for e in got.json()["entries"]] == ["profile"]
        naive = client.get(
            "/v1/audit", params={"since": "2026-11-20T00:00:00"}, headers={"X-API-Key": "auditor"}
        )
        assert naive.status_code == 422
        assert "since" in naive.json()["error"]["message"]
        # there is no route that changes the log
        for method in ("PUT", "PATCH", "DELETE", "POST"):
            assert client.request(method, "/v1/audit", headers={"X-API-Key": "auditor"}).status_code == 405


def test_concurrent_reads_share_commits_and_each_waits_for_its_own(log: AuditLog) -> None:
    import asyncio

    commits: list[int] = []
    append = log._backend.append

    def counting(rows: Any) -> None:
        commits.append(len(rows))
        append(rows)

    log._backend.append = counting  # type: ignore[method-assign]
    customers = [str(uuid.uuid4()) for _ in range(50)]

    async def reads() -> None:
        await asyncio.gather(
            *(
                log.arecord(AuditEntry(key_id="k", action="GET /x", purpose="profile", customer_id=c))
                for c in customers
            )
        )

    asyncio.run(reads())
    assert sum(commits) == 50 and len(commits) < 50  # grouped
    assert sorted(e["customer_id"] for e in log.query(limit=1000)) == sorted(customers)

    def broken(rows: Any) -> None:
        raise OSError("disk full")

    log._backend.append = broken  # type: ignore[method-assign]

    async def failing() -> list[Any]:
        return await asyncio.gather(
            *(log.arecord(AuditEntry(key_id="k", action="GET /x", purpose="profile")) for _ in range(3)),
            return_exceptions=True,
        )

    assert [type(r) for r in asyncio.run(failing())] == [OSError] * 3  # no answer without its entry
