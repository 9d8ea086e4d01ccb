"""Read keys see no personal data: searches answer customer ids and what matched, names
and identifiers need identity:pii, nobody can walk the names, and every read of
personal data (and every search) is in the audit log."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crm_platform.settings import Settings
from identity.bootstrap import Identity
from identity.entrypoints.api import create

pytestmark = pytest.mark.integration
KEYS = {
    "admin": ["*"],
    "reader": ["identity:read"],
    "officer": ["identity:read", "identity:pii"],
    "auditor": ["identity:audit"],
}
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def api(store_settings: Settings, identity: Identity) -> Iterator[TestClient]:
    settings = store_settings.model_copy(update={"api_keys": KEYS})
    with TestClient(create(settings, identity, clock=lambda: NOW)) as c:
        yield c


def _register(api: TestClient, **fields: Any) -> str:
    response = api.post("/customers", json={"channel": "store", **fields}, headers={"X-API-Key": "admin"})
    assert response.status_code == 201, response.text
    return str(response.json()["customer_id"])


def _search(api: TestClient, key: str, **body: Any) -> Any:
    return api.post("/customers/search", json=body, headers={"X-API-Key": key})


def _audit(api: TestClient, customer: str) -> list[dict[str, Any]]:
    got = api.get("/v1/audit", params={"customer_id": customer}, headers={"X-API-Key": "auditor"})
    assert got.status_code == 200, got.text
    entries: list[dict[str, Any]] = got.json()["entries"]
    return entries


def test_a_read_key_gets_ids_and_reasons_a_pii_key_names(api: TestClient) -> None:
    email = f"kenji.{uuid.uuid4().hex[:8]}@example.jp"
    customer = _register(api, name_kanji="早乙女 健二", name_kana="サオトメ ケンジ", email=email)
    read = _search(api, "reader", q="早乙女 健二")
    assert read.status_code == 200, read.text
    assert read.json() == [
        {
            "customer_id": customer,
            "name_kanji_key": None,
            "kana_key": None,
            "prefecture": None,
            "matched_on": "name",
        }
    ]
    by_email = _search(api, "reader", q=email).json()
    assert [(r["customer_id"], r["matched_on"]) for r in by_email] == [(customer, "email")]
    assert "早乙女" not in read.text + str(by_email)
    pii = _search(api, "officer", q="さおとめ けんじ").json()
    assert [(r["customer_id"], r["name_kanji_key"], r["kana_key"]) for r in pii] == [
        (customer, "早乙女健二", "サオトメケンジ")
    ]
    # the profile and the identifiers: nothing personal for the reader
    profile = api.get(f"/customers/{customer}", headers={"X-API-Key": "reader"}).json()
    assert profile["personal"] is None
    values = api.get(f"/customers/{customer}/identifiers", headers={"X-API-Key": "reader"}).json()
    assert [v["value"] for v in values] == [None]
    assert api.get(f"/customers/{customer}", headers={"X-API-Key": "officer"}).json()["personal"][
        "name_kanji"
    ] == ("早乙女 健二")
    assert [
        v["value"]
        for v in api.get(f"/customers/{customer}/identifiers", headers={"X-API-Key": "officer"}).json()
    ] == [email]
    # every search and every read of personal data is in the audit log; the reader's
    # profile and identifier reads disclosed nothing and are not
    purposes = [(e["purpose"], e["action"]) for e in _audit(api, customer)]
    assert purposes == [
        ("search:name", "POST /customers/search"),
        ("search:email", "POST /customers/search"),
        ("search:name:pii", "POST /customers/search"),
        ("profile", "GET /customers/{customer_id}"),
        ("identifiers", "GET /customers/{customer_id}/identifiers"),
    ]
    assert {e["at"] for e in _audit(api, customer)} == {"2026-11-20T10:00:00Z"}


def test_the_query_travels_in_a_body_not_a_url(api: TestClient) -> None:
    gone = api.get("/customers/search", params={"q": "山田"}, headers={"X-API-Key": "officer"})
    assert gone.status_code == 410
    assert "POST /customers/search" in gone.json()["error"]["message"]


def test_names_cannot_be_walked(api: TestClient) -> None:
    family = uuid.uuid4().hex[:6]
    ids = [
        _register(
            api,
            name_kanji=f"綾小路 {given}",
            name_kana=f"アヤノコウジ {kana}",
            email=f"{family}.{i}@example.jp",
        )
        for i, (given, kana) in enumerate([("一郎", "イチロウ"), ("二郎", "ジロウ"), ("三郎", "サブロウ")])
    ]
    # too short to search: one kanji, two kana
    for q in ("綾", "アヤ", "a"):
        short = _search(api, "officer", q=q)
        assert short.status_code == 422, (q, short.text)
        assert short.json()["error"]["fields"][0]["field"] == "body.q"
    # a prefix matching more customers than the limit answers nothing
    broad = _search(api, "officer", q="綾小路", limit=2)
    assert broad.status_code == 422
    assert broad.json()["error"]["code"] == "query_too_broad"
    assert not any(i in broad.text for i in ids)
    assert _search(api, "officer", q="綾小路", limit=21).status_code == 422  # the bound itself
    # no substring search: the given name alone is not a prefix of anyone's name
    assert _search(api, "officer", q="一郎").json() == []
    assert _search(api, "officer", q="%郎").json() == []
    # a prefix narrow enough finds them
    found = _search(api, "officer", q="綾小路 一").json()
    assert [r["customer_id"] for r in found] == [ids[0]]
    assert len(_search(api, "officer", q="綾小路").json()) == 3
