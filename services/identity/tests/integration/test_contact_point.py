"""The narrow reads and writes engagement's campaigns use: one channel's address, the
greeting name and that channel's consent (identity:contact); a consent change
(identity:consent). Neither scope opens anything else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from crm_platform.settings import Settings
from identity.bootstrap import Identity
from identity.entrypoints.api import create

pytestmark = pytest.mark.integration
KEYS = {
    "admin": ["*"],
    "messaging": ["identity:contact", "identity:consent"],
    "reader": ["identity:read"],
}


@pytest.fixture
def api(store_settings: Settings, identity: Identity) -> Iterator[TestClient]:
    settings = store_settings.model_copy(update={"api_keys": KEYS})
    with TestClient(create(settings, identity)) as c:
        yield c


def _register(api: TestClient, email: str, consents: dict[str, bool]) -> str:
    body = {
        "channel": "online",
        "name_kanji": "佐藤 花子",
        "email": email,
        "phone": f"090-1234-{uuid.uuid4().int % 10_000:04d}",
        "consents": consents,
    }
    response = api.post("/customers", json=body, headers={"X-API-Key": "admin"})
    assert response.status_code == 201, response.text
    return str(response.json()["customer_id"])


def test_contact_point_answers_one_channel_and_its_consent(api: TestClient) -> None:
    email = f"hanako.{uuid.uuid4().hex[:8]}@example.jp"
    customer = _register(api, email, {"email": True, "sms": False})
    got = api.get(f"/customers/{customer}/contact/email", headers={"X-API-Key": "messaging"})
    assert got.status_code == 200, got.text
    assert got.json()["address"] == email
    assert got.json()["name"] == "佐藤 花子"
    assert got.json()["consent"] is True
    sms = api.get(f"/customers/{customer}/contact/sms", headers={"X-API-Key": "messaging"}).json()
    assert sms["address"].startswith("+8190")
    assert sms["consent"] is False
    line = api.get(f"/customers/{customer}/contact/line", headers={"X-API-Key": "messaging"}).json()
    assert line["address"] is None
    assert line["consent"] is None
    # the narrow key reads nothing else, and a plain reader cannot read addresses
    assert api.get(f"/customers/{customer}", headers={"X-API-Key": "messaging"}).status_code == 403
    assert api.get(f"/customers/{customer}/contact/email", headers={"X-API-Key": "reader"}).status_code == 403
    assert (
        api.get(f"/customers/{customer}/contact/fax", headers={"X-API-Key": "messaging"}).status_code == 422
    )


def test_consent_scope_withdraws_consent_and_nothing_more(api: TestClient) -> None:
    customer = _register(api, f"taro.{uuid.uuid4().hex[:8]}@example.jp", {"email": True})
    put = api.put(
        f"/customers/{customer}/consents/email", json={"granted": False}, headers={"X-API-Key": "messaging"}
    )
    assert put.status_code == 200, put.text
    got = api.get(f"/customers/{customer}/contact/email", headers={"X-API-Key": "messaging"}).json()
    assert got["consent"] is False
    patch = api.patch(
        f"/customers/{customer}", json={"prefecture": "大阪府"}, headers={"X-API-Key": "messaging"}
    )
    assert patch.status_code == 403
    denied = api.put(
        f"/customers/{customer}/consents/email", json={"granted": True}, headers={"X-API-Key": "reader"}
    )
    assert denied.status_code == 403


def test_a_line_id_matches_in_any_case_but_is_sent_to_as_observed(api: TestClient) -> None:
    # LINE user ids (and push tokens) are case-sensitive where messages are sent: the
    # address kept is the one observed; matching still folds case and width.
    line_id = f"U4af4980629{uuid.uuid4().hex[:8]}cdE"
    body = {"channel": "app", "name_kanji": "鈴木 一郎", "line_id": line_id, "consents": {"line": True}}
    first = api.post("/customers", json=body, headers={"X-API-Key": "admin"})
    assert first.status_code == 201, first.text
    customer = first.json()["customer_id"]
    line = api.get(f"/customers/{customer}/contact/line", headers={"X-API-Key": "messaging"}).json()
    assert line["address"] == line_id
    again = api.post("/customers", json={**body, "line_id": line_id.upper()}, headers={"X-API-Key": "admin"})
    assert again.json()["customer_id"] == customer  # the same LINE account, whatever the case
    # a push token linked by staff keeps its case too
    token = f"fcm:APA91b{uuid.uuid4().hex[:10]}xYz"
    linked = api.post(
        f"/customers/{customer}/identifiers",
        json={"kind": "device", "value": token},
        headers={"X-API-Key": "admin"},
    )
    assert linked.status_code == 201, linked.text
    push = api.get(f"/customers/{customer}/contact/app_push", headers={"X-API-Key": "messaging"}).json()
    assert push["address"] == token
