"""The narrow reads and writes engagement's campaigns use: one channel's address, the
greeting name and that channel's consent (identity:contact) for the recipient of a
message the dispatcher signed a capability for; a consent change (identity:consent).
Neither scope opens anything else, and every contact read is audited."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crm_platform import capability
from crm_platform.capability import DEV_CONTACT_SIGNING_KEY, ContactCapability
from crm_platform.settings import Settings
from identity.bootstrap import Identity
from identity.entrypoints.api import create

pytestmark = pytest.mark.integration
KEYS = {
    "admin": ["*"],
    "messaging": ["identity:contact", "identity:consent"],
    "reader": ["identity:read"],
    "auditor": ["identity:audit"],
}
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def api(store_settings: Settings, identity: Identity) -> Iterator[TestClient]:
    settings = store_settings.model_copy(update={"api_keys": KEYS})
    with TestClient(create(settings, identity, clock=lambda: NOW)) as c:
        yield c


def _capability(
    customer: str,
    channel: str,
    *,
    message: uuid.UUID | None = None,
    campaign: uuid.UUID | None = None,
    expires: datetime = NOW + timedelta(minutes=15),
    key: str = DEV_CONTACT_SIGNING_KEY,
) -> tuple[uuid.UUID, str]:
    mid = message or uuid.uuid4()
    cap = ContactCapability(
        message_id=mid,
        campaign_id=campaign or uuid.uuid4(),
        customer_id=uuid.UUID(customer),
        channel=channel,
        expires_at=expires,
    )
    return mid, capability.sign(key, cap)


def _contact(api: TestClient, customer: str, channel: str, **kw: Any) -> Any:
    """What the dispatcher asks: the recipient's address, by message, with its capability."""
    mid, token = _capability(customer, channel, **kw)
    response = api.post(
        f"/messages/{mid}/contact", json={"capability": token}, headers={"X-API-Key": "messaging"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["message_id"] == str(mid)
    return response.json()


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
    got = _contact(api, customer, "email")
    assert got["address"] == email
    assert got["name"] == "佐藤 花子"
    assert got["consent"] is True
    sms = _contact(api, customer, "sms")
    assert sms["address"].startswith("+8190")
    assert sms["consent"] is False
    line = _contact(api, customer, "line")
    assert line["address"] is None
    assert line["consent"] is None
    # the narrow key reads nothing else, and a plain reader cannot read addresses
    assert api.get(f"/customers/{customer}", headers={"X-API-Key": "messaging"}).status_code == 403
    assert api.get(f"/customers/{customer}/contact/email", headers={"X-API-Key": "reader"}).status_code == 403
    # staff with identity:pii read a contact point by customer; the narrow key may not
    assert (
        api.get(f"/customers/{customer}/contact/email", headers={"X-API-Key": "messaging"}).status_code == 403
    )
    staff = api.get(f"/customers/{customer}/contact/email", headers={"X-API-Key": "admin"})
    assert (staff.status_code, staff.json()["address"]) == (200, email)
    assert api.get(f"/customers/{customer}/contact/fax", headers={"X-API-Key": "admin"}).status_code == 422


def test_consent_scope_withdraws_consent_and_nothing_more(api: TestClient) -> None:
    customer = _register(api, f"taro.{uuid.uuid4().hex[:8]}@example.jp", {"email": True})
    put = api.put(
        f"/customers/{customer}/consents/email", json={"granted": False}, headers={"X-API-Key": "messaging"}
    )
    assert put.status_code == 200, put.text
    got = _contact(api, customer, "email")
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
    line = _contact(api, customer, "line")
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
    push = _contact(api, customer, "app_push")
    assert push["address"] == token


def test_a_contact_key_alone_reads_no_one(api: TestClient) -> None:
    """A leaked identity:contact key without the dispatcher's signing key reads nobody:
    no capability, a forged, expired or another message's capability all answer 403."""
    email = f"leak.{uuid.uuid4().hex[:8]}@example.jp"
    customer = _register(api, email, {"email": True})
    mid, good = _capability(customer, "email")
    other_key = capability.new_signing_key()[0]
    attempts: dict[str, tuple[uuid.UUID, dict[str, Any]]] = {
        "none": (mid, {}),
        "garbage": (mid, {"capability": "not.a-token"}),
        "forged": (mid, {"capability": _capability(customer, "email", message=mid, key=other_key)[1]}),
        "expired": (mid, {"capability": _capability(customer, "email", message=mid, expires=NOW)[1]}),
        "another message": (uuid.uuid4(), {"capability": good}),
    }
    for name, (message, body) in attempts.items():
        response = api.post(f"/messages/{message}/contact", json=body, headers={"X-API-Key": "messaging"})
        assert response.status_code in (403, 422), (name, response.text)
        assert email not in response.text, name
        if name != "none":
            assert response.json()["error"]["code"] == "invalid_capability", name
    # a valid capability, but the key lacks identity:contact
    refused = api.post(f"/messages/{mid}/contact", json={"capability": good}, headers={"X-API-Key": "reader"})
    assert refused.status_code == 403
    # nothing was disclosed, so nothing was audited
    log = api.get("/v1/audit", params={"customer_id": customer}, headers={"X-API-Key": "auditor"}).json()
    assert log["entries"] == []


def test_a_recipients_contact_read_is_audited(api: TestClient) -> None:
    customer = _register(api, f"audit.{uuid.uuid4().hex[:8]}@example.jp", {"email": True})
    campaign = uuid.uuid4()
    _contact(api, customer, "email", campaign=campaign)
    entries = api.get("/v1/audit", params={"customer_id": customer}, headers={"X-API-Key": "auditor"}).json()[
        "entries"
    ]
    [entry] = entries
    assert entry["customer_id"] == customer
    assert entry["purpose"] == f"campaign:{campaign}"
    assert entry["action"] == "POST /messages/{message_id}/contact"
    assert entry["key_id"].startswith("key-") and "messaging" not in entry["key_id"]
    assert entry["at"] == NOW.isoformat().replace("+00:00", "Z")
    # the log is for auditors only
    assert api.get("/v1/audit", headers={"X-API-Key": "messaging"}).status_code == 403
