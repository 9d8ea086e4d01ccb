"""The support API against a real event store (SQLite here, PostgreSQL in
test_production_store.py): validation, idempotent opening, transitions, search, SLA,
erasure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crm_platform.settings import Settings
from support.entrypoints.api import create

pytestmark = pytest.mark.integration
STAFF = {"X-API-Key": "staff"}
IMPORT = {"X-API-Key": "importer"}
READ = {"X-API-Key": "reader"}
KEYS = {
    "staff": ["support:read", "support:write", "support:pii"],
    "importer": ["support:read", "support:write", "support:import", "support:pii"],
    "reader": ["support:read"],
    "officer": ["support:read", "support:pii"],
    "auditor": ["support:audit"],
}
OFFICER = {"X-API-Key": "officer"}


def settings_for(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(var_dir=tmp_path / "var", api_keys=KEYS, **kw)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create(settings_for(tmp_path))) as c:
        yield c


def ticket(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "email",
        "category": "delivery",
        "priority": "normal",
        "subject": "荷物が届きません",
        "body": "注文 W-1001 がまだ届いていません。",
        "customer": {"email": "Hanako.Yamada@Example.jp", "phone": "03-1234-5678", "name": "山田 花子"},
        "order_id": "W-1001",
    }
    body.update(kw)
    return body


def test_opening_validates_every_field_and_names_it(client: TestClient) -> None:
    cases = [
        ({"channel": "fax"}, "body.channel"),
        ({"category": "Not A Code"}, "body.category"),
        ({"subject": ""}, "body.subject"),
        ({"body": "x" * 10_001}, "body.body"),
        ({"customer": {"email": "not-an-email"}}, "body.customer.email"),
        ({"customer": {"phone": "12"}}, "body.customer.phone"),
        ({"customer": {"shoe_size": "25"}}, "body.customer.shoe_size"),
        ({"priority": "asap"}, "body.priority"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "body.occurred_at"),
    ]
    for change, field in cases:
        response = client.post("/v1/tickets", json=ticket(**change), headers=STAFF)
        assert response.status_code == 422, (change, response.text)
        assert field in [f["field"] for f in response.json()["error"]["fields"]], (change, response.json())
    assert client.post("/v1/tickets", json=ticket(), headers=READ).status_code == 403
    assert client.post("/v1/tickets", json=ticket()).status_code == 401
    assert client.post("/v1/tickets", content=b"x" * 2_000_000, headers=STAFF).status_code == 413


def test_a_retried_open_does_not_create_a_second_ticket(client: TestClient) -> None:
    first = client.post("/v1/tickets", json=ticket(request_id="mail-4711"), headers=STAFF)
    assert first.status_code == 201, first.text
    again = client.post("/v1/tickets", json=ticket(request_id="mail-4711"), headers=STAFF)
    assert again.status_code == 200
    assert again.json()["ticket_id"] == first.json()["ticket_id"]
    other = client.post("/v1/tickets", json=ticket(request_id="mail-4711", subject="別件"), headers=STAFF)
    assert other.status_code == 409
    tid = str(uuid.uuid4())
    assert client.post("/v1/tickets", json=ticket(ticket_id=tid), headers=STAFF).status_code == 201
    assert client.post("/v1/tickets", json=ticket(ticket_id=tid), headers=STAFF).status_code == 200
    assert client.get("/v1/tickets", headers=READ).json()["total"] == 2


def test_a_ticket_is_worked_to_resolution_and_rated_once(client: TestClient) -> None:
    opened = client.post("/v1/tickets", json=ticket(), headers=STAFF).json()
    tid = opened["ticket_id"]
    assert opened["status"] == "open" and opened["content"]["subject"] == "荷物が届きません"
    assert opened["content"]["customer"]["name"] == "山田 花子"
    assert opened["identifier_kinds"] == ["email", "phone"]
    url = f"/v1/tickets/{tid}"
    r = client.post(f"{url}/assignment", json={"owner": "sato", "team": "cs-tokyo"}, headers=STAFF)
    assert r.json()["owner"] == "sato"
    r = client.post(f"{url}/replies", json={"body": "確認いたします。"}, headers=STAFF)
    assert r.json()["first_response_at"] is not None and r.json()["sla"]["first_response"] == "met"
    assert (
        client.post(f"{url}/status", json={"status": "pending"}, headers=STAFF).json()["status"] == "pending"
    )
    r = client.post(f"{url}/replies", json={"author": "customer", "body": "まだです"}, headers=STAFF)
    assert r.json()["status"] == "open"
    assert client.post(f"{url}/rating", json={"score": 5}, headers=STAFF).status_code == 409  # not resolved
    r = client.post(f"{url}/resolution", json={"resolution": "redelivered"}, headers=STAFF)
    assert (r.json()["status"], r.json()["resolution"]) == ("resolved", "redelivered")
    assert client.post(f"{url}/resolution", json={"resolution": "answered"}, headers=STAFF).status_code == 409
    assert client.post(f"{url}/rating", json={"score": 6}, headers=STAFF).status_code == 422
    r = client.post(f"{url}/rating", json={"score": 4, "comment": "丁寧でした"}, headers=STAFF)
    assert r.json()["satisfaction"] == 4 and r.json()["content"]["rating_comment"] == "丁寧でした"
    assert client.post(f"{url}/rating", json={"score": 5}, headers=STAFF).status_code == 409
    assert client.post(f"{url}/status", json={"status": "closed"}, headers=STAFF).json()["status"] == "closed"
    assert client.post(f"{url}/replies", json={"body": "x"}, headers=STAFF).status_code == 409
    got = client.get(url, headers=OFFICER).json()
    assert [m["author"] for m in got["content"]["messages"]] == ["staff", "customer"]
    assert client.get(f"/v1/tickets/{uuid.uuid4()}", headers=READ).status_code == 404
    assert client.get("/v1/tickets/not-a-uuid", headers=READ).status_code == 422


def test_escalation_follows_the_routing_rules(client: TestClient) -> None:
    complaint = client.post(
        "/v1/tickets", json=ticket(category="complaint", channel="store", store_id="S007"), headers=STAFF
    ).json()
    assert [e["to"] for e in complaint["escalations"]] == ["store-manager:S007"]
    plain = client.post("/v1/tickets", json=ticket(priority="urgent"), headers=STAFF).json()
    r = client.post(f"/v1/tickets/{plain['ticket_id']}/escalations", json={"reason": "vip"}, headers=STAFF)
    assert r.json()["escalations"][-1] == {
        **r.json()["escalations"][-1],
        "to": "support-lead",
        "rule": "urgent",
    }
    r = client.post(
        f"/v1/tickets/{plain['ticket_id']}/escalations", json={"reason": "vip", "to": "sales"}, headers=STAFF
    )
    assert r.json()["escalations"][-1]["to"] == "sales"
    # reasons travel in clear to Kafka and ClickHouse: a note (a name in it) is refused
    for path, body in (
        ("escalations", {"reason": "山田様が激怒", "to": "support-lead"}),
        ("status", {"status": "pending", "reason": "called Mr Sato back"}),
    ):
        refused = client.post(f"/v1/tickets/{plain['ticket_id']}/{path}", json=body, headers=STAFF)
        assert refused.status_code == 422, refused.text
        assert "body.reason" in {f["field"] for f in refused.json()["error"]["fields"]}, refused.text
    page = client.get("/v1/tickets", params={"escalated_to": "store-manager:S007"}, headers=READ).json()
    assert [t["ticket_id"] for t in page["tickets"]] == [complaint["ticket_id"]]
    assert client.get("/v1/policy", headers=READ).json()["sla"]["urgent"]["first_response_seconds"] == 3600


def test_search_by_customer_identifier_as_written_anywhere(client: TestClient) -> None:
    a = client.post("/v1/tickets", json=ticket(), headers=STAFF).json()
    b = client.post(
        "/v1/tickets", json=ticket(channel="phone", customer={"phone": "+81 3 1234 5678"}), headers=STAFF
    ).json()
    client.post("/v1/tickets", json=ticket(customer={"email": "someone@else.jp"}), headers=STAFF)

    def search(headers: dict[str, str] = OFFICER, **body: object) -> Any:
        return client.post("/v1/tickets/search", json=body, headers=headers)

    by_phone = search(customer={"phone": "0312345678"}).json()
    assert {t["ticket_id"] for t in by_phone["tickets"]} == {a["ticket_id"], b["ticket_id"]}
    by_mail = search(customer={"email": "HANAKO.YAMADA@example.jp"}).json()
    assert [t["ticket_id"] for t in by_mail["tickets"]] == [a["ticket_id"]]
    assert by_mail["tickets"][0]["content"] is None  # lists leave content out unless asked
    with_content = search(customer={"email": "hanako.yamada@example.jp"}, content=True)
    assert with_content.json()["tickets"][0]["content"]["subject"] == "荷物が届きません"
    paged = client.get("/v1/tickets", params={"limit": 2, "offset": 2}, headers=READ).json()
    assert (paged["total"], len(paged["tickets"])) == (3, 1)
    bad = search(customer={"phone": "12"})
    assert bad.status_code == 422 and "body.customer.phone" in bad.text, bad.text
    # identifiers never go in a URL: the list does not take them
    in_url = client.get("/v1/tickets", params={"phone": "0312345678"}, headers=READ)
    assert in_url.status_code == 422 and "query.phone" in in_url.text, in_url.text
    assert search(customer={"fax": "1"}).status_code == 422
    assert client.get("/v1/tickets", params={"limit": 1000}, headers=READ).status_code == 422
    assert client.get("/v1/tickets", params={"channel": "phone"}, headers=READ).json()["total"] == 1


def test_history_is_imported_with_its_own_times_and_breaches_are_found(client: TestClient) -> None:
    past = datetime.now(UTC) - timedelta(days=10)
    assert (
        client.post("/v1/tickets", json=ticket(occurred_at=past.isoformat()), headers=STAFF).status_code
        == 403
    )
    future = datetime.now(UTC) + timedelta(days=1)
    assert (
        client.post("/v1/tickets", json=ticket(occurred_at=future.isoformat()), headers=IMPORT).status_code
        == 422
    )
    late = client.post(
        "/v1/tickets", json=ticket(occurred_at=past.isoformat(), priority="high"), headers=IMPORT
    )
    assert late.status_code == 201 and late.json()["opened_at"].startswith(past.date().isoformat())
    tid = late.json()["ticket_id"]
    on_time = client.post("/v1/tickets", json=ticket(occurred_at=past.isoformat()), headers=IMPORT).json()
    client.post(
        f"/v1/tickets/{on_time['ticket_id']}/replies",
        json={"body": "ok", "occurred_at": (past + timedelta(hours=1)).isoformat()},
        headers=IMPORT,
    )
    fresh = client.post("/v1/tickets", json=ticket(), headers=STAFF).json()
    # a change before the last one is refused
    r = client.post(
        f"/v1/tickets/{tid}/replies",
        json={"body": "x", "occurred_at": (past - timedelta(hours=1)).isoformat()},
        headers=IMPORT,
    )
    assert r.status_code == 422 and "before the ticket's last change" in r.text
    breached = client.get("/v1/tickets", params={"breached": "true"}, headers=READ).json()
    assert {t["ticket_id"] for t in breached["tickets"]} == {tid, on_time["ticket_id"]}  # 10 days unresolved
    fine = client.get("/v1/tickets", params={"breached": "false"}, headers=READ).json()
    assert [t["ticket_id"] for t in fine["tickets"]] == [fresh["ticket_id"]]
    got = client.get(f"/v1/tickets/{tid}", headers=READ).json()
    assert got["sla"]["first_response"] == "breached" and got["sla"]["breached"] is True


def test_an_erased_customer_s_tickets_become_unreadable(tmp_path: Path) -> None:
    from crm_platform.crypto import BlindIndexer
    from crm_platform.identifiers import blind_identifier
    from support.bootstrap import build

    settings = settings_for(tmp_path)
    with TestClient(create(settings)) as client:
        theirs = client.post("/v1/tickets", json=ticket(), headers=STAFF).json()
        other = client.post(
            "/v1/tickets", json=ticket(customer={"email": "b@example.jp"}), headers=STAFF
        ).json()
        # what customer.erased names: the customer's identifiers as blind indexes
        phone = blind_identifier(BlindIndexer(settings.blind_index_key_bytes), "phone", "0312345678").hash
        app = build(settings)
        try:
            assert app.erase_identifiers([phone]) == 1
            assert app.erase_identifiers([phone]) == 0  # idempotent
        finally:
            app.close()
        # the API process caches keys for 30 s; a fresh read sees the erasure at once
        client.app.state.support.keys._cache.clear()  # type: ignore[attr-defined]
        got = client.get(f"/v1/tickets/{theirs['ticket_id']}", headers=OFFICER).json()
        assert (got["content"], got["content_erased"], got["category"]) == (None, True, "delivery")
        assert client.get(f"/v1/tickets/{other['ticket_id']}", headers=OFFICER).json()["content"] is not None
        r = client.post(f"/v1/tickets/{theirs['ticket_id']}/replies", json={"body": "x"}, headers=STAFF)
        assert r.status_code == 410


def test_tickets_are_listed_in_keyset_pages_each_once(client: TestClient) -> None:
    """Newest first, ``limit`` at a time with ``next``: tickets opened between two pages
    — a new one (before the pages read) and an imported older one (after them) — shift
    nothing: every ticket is seen once (an offset would show one again)."""

    def open_at(day: int, hour: int = 10) -> str:
        at = f"2026-01-{day:02d}T{hour:02d}:00:00+09:00"
        created = client.post("/v1/tickets", json=ticket(occurred_at=at), headers=IMPORT)
        assert created.status_code == 201, created.text
        return str(created.json()["ticket_id"])

    existing = [open_at(d) for d in (10, 12, 14, 16, 18)] + [open_at(20), open_at(20)]  # a tie: by id
    page = client.get("/v1/tickets", params={"limit": 2}, headers=READ).json()
    seen = [t["ticket_id"] for t in page["tickets"]]
    added = []
    while page["next"]:
        added += [open_at(25), open_at(5)]  # newer than every page read / older than every one
        page = client.get("/v1/tickets", params={"limit": 2, "cursor": page["next"]}, headers=READ).json()
        assert page["total"] == len(existing) + len(added)
        seen += [t["ticket_id"] for t in page["tickets"]]
    assert len(seen) == len(set(seen))  # none twice
    assert set(existing) <= set(seen)
    assert set(seen) - set(existing) <= set(added)
    opened = [client.get(f"/v1/tickets/{t}", headers=READ).json()["opened_at"] for t in seen]
    assert opened == sorted(opened, reverse=True)

    # a search pages the same way, its cursor in the body
    first = client.post("/v1/tickets/search", json={"limit": 3}, headers=READ).json()
    rest = client.post(
        "/v1/tickets/search", json={"limit": 200, "cursor": first["next"]}, headers=READ
    ).json()
    walked = [t["ticket_id"] for t in first["tickets"] + rest["tickets"]]
    listed = client.get("/v1/tickets", params={"limit": 200}, headers=READ).json()["tickets"]
    assert walked == [t["ticket_id"] for t in listed]
    assert rest["next"] is None
    bad = client.post("/v1/tickets/search", json={"cursor": "???"}, headers=READ)
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "body.cursor"
    both = client.get("/v1/tickets", params={"cursor": first["next"], "offset": 2}, headers=READ)
    assert both.status_code == 422 and both.json()["error"]["fields"][0]["field"] == "query.offset"


def test_the_read_scope_sees_no_content_and_content_reads_are_audited(tmp_path: Path) -> None:
    """support:read answers ids, status, timings and codes; subjects, bodies, replies and
    the requester need support:pii, and each answer carrying them is in the audit log."""
    at = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
    with TestClient(create(settings_for(tmp_path), clock=lambda: at)) as client:
        opened = client.post("/v1/tickets", json=ticket(), headers=STAFF).json()
        url = f"/v1/tickets/{opened['ticket_id']}"
        client.post(f"{url}/replies", json={"body": "お調べします"}, headers=STAFF)
        as_reader = [
            client.get(url, headers=READ),
            client.get("/v1/tickets", headers=READ),
            client.post("/v1/tickets/search", json={"customer": {"phone": "0312345678"}}, headers=READ),
        ]
        for response in as_reader:
            assert response.status_code == 200, response.text
            for secret in ("荷物", "山田", "hanako", "お調べします", "W-1001 がまだ"):
                assert secret.lower() not in response.text.lower(), (secret, response.text)
        got = as_reader[0].json()
        assert (got["status"], got["category"], got["content"], got["content_erased"]) == (
            "open",
            "delivery",
            None,
            False,
        )
        assert got["first_response_at"] is not None
        # asking for the content with a read key is refused, not silently emptied
        for asked in (
            client.get("/v1/tickets", params={"content": "true"}, headers=READ),
            client.post("/v1/tickets/search", json={"content": True}, headers=READ),
        ):
            assert asked.status_code == 403 and "support:pii" in asked.text
        # a writer without support:pii works the ticket without reading it
        writer = {"api_keys": {**KEYS, "agent": ["support:read", "support:write"]}}
        client.app.state.settings = client.app.state.settings.model_copy(update=writer)
        escalated = client.post(f"{url}/escalations", json={"reason": "vip"}, headers={"X-API-Key": "agent"})
        assert escalated.status_code == 200 and escalated.json()["content"] is None
        # the officer reads it, and that is written down
        assert client.get(url, headers=OFFICER).json()["content"]["subject"] == "荷物が届きません"
        log = client.get(
            "/v1/audit",
            params={"subject": f"ticket:{opened['ticket_id']}"},
            headers={"X-API-Key": "auditor"},
        )
        assert log.status_code == 200, log.text
        entries = log.json()["entries"]
        assert {e["customer_id"] for e in entries} == {None}  # no blind index in the log
        assert [(e["action"], e["subject"]) for e in entries] == [
            ("POST /v1/tickets", f"ticket:{opened['ticket_id']}"),
            ("POST /v1/tickets/{ticket_id}/replies", f"ticket:{opened['ticket_id']}"),
            ("GET /v1/tickets/{ticket_id}", f"ticket:{opened['ticket_id']}"),
        ]
        assert {e["at"] for e in entries} == {"2026-11-20T03:00:00Z"}
        assert client.get("/v1/audit", headers=READ).status_code == 403
