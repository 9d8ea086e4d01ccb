"""Public intake (``identity:public-intake``): what an unverified web form may do to
customers identity already knows — nothing — and consent only by double opt-in. Both
store kinds."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crm_contracts.events.identity import ConsentChanged, CustomerRegistered
from crm_contracts.registry import decode
from crm_contracts.topics import IDENTITY_CUSTOMER
from crm_platform.crypto import BlindIndexer
from crm_platform.kafka import EventProducer
from crm_platform.settings import Settings
from crm_platform.testing import end_offsets, read_topic
from identity.bootstrap import build, build_relay
from identity.entrypoints.api import create

pytestmark = pytest.mark.integration
FORM = str(uuid.UUID("00000000-0000-4000-8000-0000000000f1"))
INTAKE_ONLY = {"X-API-Key": "forms"}


@pytest.fixture
def intake(store_settings: Settings, client: TestClient) -> TestClient:
    keys = client.app.state.settings.api_keys  # type: ignore[attr-defined]
    # a new mapping: the API reads its key table again when the mapping is replaced
    client.app.state.settings.api_keys = {  # type: ignore[attr-defined]
        **keys,
        "forms": ["identity:public-intake"],
        "writer": ["identity:write"],
    }
    return client


def _intake(client: TestClient, submission: str, **fields: Any) -> Any:
    body = {"source": {"form_id": FORM, "submission_id": submission}, **fields}
    return client.post("/customers/intake", json=body, headers=INTAKE_ONLY)


def _profile(client: TestClient, customer_id: str) -> dict[str, Any]:
    response = client.get(f"/customers/{customer_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _register(client: TestClient, **body: Any) -> str:
    response = client.post("/customers", json={"channel": "store", **body})
    assert response.status_code in (200, 201), response.text
    return str(response.json()["customer_id"])


def test_the_intake_scope_is_needed_and_is_all_it_gives(intake: TestClient) -> None:
    body = {"source": {"form_id": FORM, "submission_id": str(uuid.uuid4())}, "email": "x@example.jp"}
    assert intake.post("/customers/intake", json=body, headers={"X-API-Key": "nope"}).status_code == 401
    # dev-admin-key holds "*"; a key with identity:write but not the intake scope is refused
    assert intake.post("/customers/intake", json=body, headers={"X-API-Key": "writer"}).status_code == 403
    # and the intake key cannot register by the trusting route
    refused = intake.post(
        "/customers", json={"channel": "form", "email": "x@example.jp"}, headers=INTAKE_ONLY
    )
    assert refused.status_code == 403
    no_consents = {**body, "consents": {"email": True}}
    bad = intake.post("/customers/intake", json=no_consents, headers=INTAKE_ONLY)
    assert bad.status_code == 422  # there is no consent field to send


def test_a_new_person_is_created_without_consent(intake: TestClient) -> None:
    created = _intake(
        intake, str(uuid.uuid4()), email="New@Example.jp", phone="090-1111-2222", name_kanji="新 太郎"
    )
    assert created.status_code == 201, created.text
    data = created.json()
    assert data["outcome"] == "created" and data["reviews"] == []
    assert data["held"] == ["email", "phone"]
    profile = _profile(intake, data["customer_id"])
    assert profile["consents"] == {} and profile["channel"] == "form"
    assert profile["personal"]["contacts"] == {"email": ["new@example.jp"], "phone": ["+819011112222"]}


def test_a_known_email_with_a_strangers_phone_changes_nothing_and_files_a_claim(intake: TestClient) -> None:
    a = _register(
        intake, name_kanji="山田 花子", email="hanako@example.jp", consents={"email": False, "sms": False}
    )
    before = _profile(intake, a)
    submission = str(uuid.uuid4())
    answer = _intake(intake, submission, email="hanako@example.jp", phone="090-9999-0000", name_kanji="偽 名")
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert (data["customer_id"], data["outcome"], data["held"]) == (a, "matched", ["email"])
    after = _profile(intake, a)
    assert after == before  # no link, no profile change, no consent, same version
    assert intake.post("/customers/search", json={"q": "090-9999-0000", "kind": "phone"}).json() == []
    (claim,) = [r for r in intake.get("/reviews").json()["reviews"] if r["kind"] == "intake_claim"]
    assert claim["review_id"] == data["reviews"][0] and claim["customer_a"] == a
    assert [i["kind"] for i in claim["identifiers"]] == ["phone"]
    assert claim["evidence"]["rule"] == "public-intake"
    assert claim["evidence"]["source"] == {"form_id": FORM, "submission_id": submission}
    # a retry of the same submission files nothing new
    again = _intake(intake, submission, email="hanako@example.jp", phone="090-9999-0000")
    assert again.json()["reviews"] == data["reviews"]
    assert len([r for r in intake.get("/reviews").json()["reviews"] if r["kind"] == "intake_claim"]) == 1
    # staff approve: the phone is linked to the customer now (nobody held it meanwhile)
    approved = intake.post(f"/reviews/{claim['review_id']}/approve")
    assert approved.status_code == 200 and approved.json() == {"merge_id": None}
    found = intake.post("/customers/search", json={"q": "09099990000", "kind": "phone"}).json()
    assert [f["customer_id"] for f in found] == [a]
    assert intake.post(f"/reviews/{claim['review_id']}/approve").status_code == 409


def test_two_customers_identifiers_together_never_merge_them(intake: TestClient) -> None:
    a = _register(intake, name_kanji="佐藤 一郎", email="ichiro@example.jp")
    b = _register(intake, name_kanji="鈴木 二郎", phone="03-1234-5678")
    before_a, before_b = _profile(intake, a), _profile(intake, b)
    answer = _intake(intake, str(uuid.uuid4()), email="ichiro@example.jp", phone="0312345678")
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "matched" and answer.json()["customer_id"] in (a, b)
    assert (_profile(intake, a), _profile(intake, b)) == (before_a, before_b)
    (pair,) = [r for r in intake.get("/reviews").json()["reviews"] if r["kind"] == "pair"]
    assert {pair["customer_a"], pair["customer_b"]} == {a, b}
    assert pair["evidence"]["rule"] == "public-intake" and pair["review_id"] in answer.json()["reviews"]


def test_a_fuzzy_likeness_from_a_public_form_is_reviewed_not_merged(intake: TestClient) -> None:
    person = {"name_kanji": "高橋 美咲", "name_kana": "タカハシ ミサキ", "birthday": "1990-04-01"}
    a = _register(
        intake, **person, postal_code="150-0001", address="東京都渋谷区神宮前1-2-3", email="m@example.jp"
    )
    answer = _intake(
        intake,
        str(uuid.uuid4()),
        **person,
        postal_code="150-0001",
        address="東京都渋谷区神宮前1-2-3",
        email="attacker@example.jp",
    )
    assert answer.status_code == 201 and answer.json()["outcome"] == "created"
    assert answer.json()["customer_id"] != a
    assert _profile(intake, a)["merged_ids"] == []


def test_consent_is_granted_only_by_a_confirmation_with_its_proof(
    intake: TestClient, store_settings: Settings
) -> None:
    a = _register(intake, name_kanji="田中 健", email="ken@example.jp", consents={"email": False})
    indexer = BlindIndexer(store_settings.blind_index_key_bytes)
    token = str(uuid.uuid4())
    proof = {
        "form_id": FORM,
        "submission_id": str(uuid.uuid4()),
        "purpose": "marketing",
        "wording_version": "v3",
        "confirmed_via": "email",
        "confirmed_at": "2026-11-20T10:00:00+00:00",
        "token_id": token,
    }
    body = {
        "identifier": {"kind": "email", "hash": indexer.index("email", "ken@example.jp")},
        "channel": "email",
        "proof": proof,
    }
    done = intake.post("/customers/consent-confirmations", json=body, headers=INTAKE_ONLY)
    assert done.status_code == 200, done.text
    consent = _profile(intake, a)["consents"]["email"]
    assert consent["granted"] is True and consent["proof"]["token_id"] == token
    version = _profile(intake, a)["version"]
    assert intake.post("/customers/consent-confirmations", json=body, headers=INTAKE_ONLY).status_code == 200
    assert _profile(intake, a)["version"] == version  # the same token again: nothing new
    # an address nobody holds proves nothing about anyone
    nobody = {**body, "identifier": {"kind": "email", "hash": indexer.index("email", "nobody@example.jp")}}
    missing = intake.post("/customers/consent-confirmations", json=nobody, headers=INTAKE_ONLY)
    assert missing.status_code == 404


async def test_a_confirmed_consent_reaches_kafka_with_its_proof(
    store_settings: Settings, kafka_bootstrap: str
) -> None:
    settings = store_settings.model_copy(
        update={
            "kafka_bootstrap": kafka_bootstrap,
            "api_keys": {"admin": ["*"], "forms": ["identity:public-intake"]},
        }
    )
    identity = build(settings)
    start = await end_offsets(kafka_bootstrap, IDENTITY_CUSTOMER.name)
    email = f"proof.{uuid.uuid4().hex[:8]}@example.jp"
    token = str(uuid.uuid4())
    with TestClient(create(settings, identity)) as client:
        created = _intake(client, str(uuid.uuid4()), email=email)
        assert created.status_code == 201, created.text
        customer_id = created.json()["customer_id"]
        proof = {
            "form_id": FORM,
            "submission_id": str(uuid.uuid4()),
            "purpose": "marketing",
            "wording_version": "v3",
            "confirmed_via": "email",
            "confirmed_at": "2026-11-20T10:00:00+00:00",
            "token_id": token,
        }
        body = {
            "identifier": {"kind": "email", "hash": identity.indexer.index("email", email)},
            "channel": "email",
            "proof": proof,
        }
        assert (
            client.post("/customers/consent-confirmations", json=body, headers=INTAKE_ONLY).status_code == 200
        )
    async with EventProducer(kafka_bootstrap, client_id="intake-test") as producer:
        relay = build_relay(identity, producer)
        while await relay.relay_once():
            pass
    records = await read_topic(
        kafka_bootstrap,
        IDENTITY_CUSTOMER.name,
        expect=2,
        start=start,
        match=lambda r: r.key == customer_id.encode(),
    )
    events = [decode(r.value) for r in records]
    registered, changed = events
    assert isinstance(registered, CustomerRegistered) and registered.payload.consents == ()
    assert isinstance(changed, ConsentChanged)
    assert changed.payload.consent.granted is True and changed.payload.proof is not None
    assert str(changed.payload.proof.token_id) == token
    assert (changed.payload.proof.wording_version, changed.payload.proof.confirmed_via) == ("v3", "email")
    assert email.encode() not in b"".join(r.value for r in records)
    identity.close()
