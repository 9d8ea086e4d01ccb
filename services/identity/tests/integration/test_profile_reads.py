"""The profile read path (GET /customers/{id}): what another writer did shows at once,
``as_of`` sees merges as they were, erasure reads as erased, and the body is exactly
``CustomerPublic``'s JSON — on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from identity.application import RegisterCustomer
from identity.bootstrap import Identity, build
from identity.entrypoints.api import _profile_json
from identity.entrypoints.schemas import CustomerPublic

pytestmark = pytest.mark.integration


@pytest.fixture
def other(identity: Identity) -> Iterator[Identity]:
    """Another process writing to the same store (the resolver, another API replica)."""
    writer = build(identity.settings)
    yield writer
    writer.close()


def _register(app: Identity, name: str, email: str, **personal: str) -> uuid.UUID:
    result = app.app.register(
        RegisterCustomer(
            channel="store",
            identifiers=[("email", email)],
            personal={"name_kanji": name, **personal},
            attributes={"prefecture": "東京都"},
        )
    )
    assert result.customer_id is not None
    return result.customer_id


def _profile(client: TestClient, customer_id: uuid.UUID, **params: str) -> dict:
    response = client.get(f"/customers/{customer_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_writes_of_another_process_show_at_once(client: TestClient, other: Identity) -> None:
    a = _register(other, "読取 一郎", "one@example.jp", address="東京都港区1-1")
    assert _profile(client, a)["personal"]["address"] == "東京都港区1-1"  # read once: anything cached
    other.app.update_profile(a, {"address": "大阪府大阪市1-1"}, {"city": "大阪市"})
    seen = _profile(client, a)
    assert (seen["version"], seen["personal"]["address"], seen["attributes"]["city"]) == (
        2,
        "大阪府大阪市1-1",
        "大阪市",
    )
    b = _register(other, "読取 次郎", "two@example.jp", birthday="1990-02-02")
    _profile(client, b)
    other.app.merge(a, b, decided_by="test")
    merged = _profile(client, a)
    assert merged["merged_ids"] == [str(b)]
    assert merged["personal"]["birthday"] == "1990-02-02"  # what the merged record contributes
    assert {i["kind"] for i in merged["identifiers"]} == {"email"}
    assert len(merged["identifiers"]) == 2
    assert _profile(client, b)["status"] == "merged"


def test_as_of_sees_a_merge_as_it_was(client: TestClient, other: Identity) -> None:
    a = _register(other, "過去 一郎", "past-a@example.jp", address="東京都港区2-2")
    b = _register(other, "過去 次郎", "past-b@example.jp", birthday="1980-08-08")
    time.sleep(0.01)
    before_merge = datetime.now(UTC)
    time.sleep(0.01)
    other.app.merge(a, b, decided_by="test")
    time.sleep(0.01)
    before_change = datetime.now(UTC)
    time.sleep(0.01)
    other.app.update_profile(a, {"address": "京都府京都市3-3"}, {})
    then = _profile(client, a, as_of=before_merge.isoformat())
    assert (then["merged_ids"], then["version"], then["as_of"]) == (
        [],
        1,
        before_merge.isoformat().replace("+00:00", "Z"),
    )
    assert "birthday" not in then["personal"]
    later = _profile(client, a, as_of=before_change.isoformat())
    assert later["merged_ids"] == [str(b)]
    assert later["personal"]["birthday"] == "1980-08-08"
    assert later["personal"]["address"] == "東京都港区2-2"
    # The merged record as it was before the merge: still active.
    assert _profile(client, b, as_of=before_merge.isoformat())["status"] == "active"
    now = _profile(client, a)
    assert now["personal"]["address"] == "京都府京都市3-3"
    # An offset other than UTC names the same instant.
    tokyo = before_merge.astimezone(timezone(timedelta(hours=9))).isoformat()
    assert _profile(client, a, as_of=tokyo)["merged_ids"] == []


def test_erased_by_another_process_reads_as_erased(client: TestClient, other: Identity) -> None:
    a = _register(other, "消去 一郎", "gone-a@example.jp", address="東京都港区4-4")
    b = _register(other, "消去 次郎", "gone-b@example.jp", birthday="1970-07-07")
    other.app.merge(a, b, decided_by="test")
    assert _profile(client, a)["personal"]["birthday"] == "1970-07-07"  # keys now cached here
    assert set(other.app.erase(a, reason="customer request")) == {a, b}
    gone = _profile(client, a)
    assert (gone["status"], gone["personal"], gone["identifiers"]) == ("erased", {}, [])
    merged = _profile(client, b)
    assert (merged["status"], merged["personal"]) == ("erased", {})


def test_the_body_is_the_schema_json(client: TestClient, identity: Identity) -> None:
    a = _register(identity, "形式 一郎", "shape-a@example.jp", address="東京都港区5-5")
    b = _register(identity, "形式 次郎", "shape-b@example.jp", birthday="1960-06-06")
    identity.app.merge(a, b, decided_by="test")
    identity.app.change_consent(a, "email", True, datetime(2024, 1, 2, 3, 4, 5, 600, tzinfo=UTC))
    for key, pii in (("dev-admin-key", True), ("dev-read-key", False)):
        response = client.get(f"/customers/{a}", headers={"X-API-Key": key})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        data = identity.app.get_customer(a)
        if not pii:
            data["personal"] = None
        assert response.content == CustomerPublic.model_validate(data).model_dump_json().encode()
    missing = client.get(f"/customers/{uuid.uuid4()}")
    assert missing.status_code == 404


def test_a_reader_without_pii_opens_no_personal_data(
    client: TestClient, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = _register(identity, "鍵無 一郎", "nokey-a@example.jp", address="東京都港区6-6")
    b = _register(identity, "鍵無 次郎", "nokey-b@example.jp", birthday="1950-05-05")
    identity.app.merge(a, b, decided_by="test")
    fetched: list[uuid.UUID] = []
    get_key = identity.keys.get
    monkeypatch.setattr(
        identity.keys, "get", lambda customer_id: fetched.append(customer_id) or get_key(customer_id)
    )
    reader = {"X-API-Key": "dev-read-key"}
    now = client.get(f"/customers/{a}", headers=reader).json()
    then = client.get(
        f"/customers/{a}", params={"as_of": datetime.now(UTC).isoformat()}, headers=reader
    ).json()
    assert (now["personal"], then["personal"], now["merged_ids"]) == (None, None, [str(b)])
    assert fetched == []
    assert identity.app.get_customer(a, personal_data=False)["personal"] is None
    assert fetched == []
    # Sealed fields are opened again for the next reader who may see them.
    full = _profile(client, a)
    assert (full["personal"]["address"], full["personal"]["birthday"]) == ("東京都港区6-6", "1950-05-05")
    assert set(fetched) == {a, b}


def test_profile_json_matches_pydantic_for_any_value() -> None:
    base = {
        "customer_id": uuid.uuid4(),
        "version": 3,
        "status": "active",
        "merged_into": None,
        "merged_ids": [uuid.uuid4()],
        "channel": "store",
        "personal": {"name_kanji": "山田 太郎", "contacts": {"email": ["a@example.jp"]}},
        "attributes": {"tags": ["vip"], "preferences": {"size": 27.5, "dm": False}},
        "consents": {"email": {"granted": True, "at": "2024-01-01T00:00:00+00:00"}},
        "identifiers": [{"kind": "email", "hash": "0" * 64}],
        "registered_at": datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=UTC),
        "as_of": datetime(2024, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=9))),
        "extra": "dropped, as the model drops it",
    }
    odd = {**base, "attributes": {"points": Decimal("1.5"), "huge": 2**70}, "as_of": None}
    for data in (base, odd):
        assert _profile_json(data) == CustomerPublic.model_validate(data).model_dump_json().encode()
