"""The campaign API's edges: validation naming the field, scopes, states, sizes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crm_platform.settings import Settings
from engagement.dispatch.settings import MessagingSettings
from engagement.entrypoints.api import create

pytestmark = pytest.mark.integration
KEYS = {
    "staff": ["engagement:read", "engagement:write"],
    "reader": ["engagement:read"],
    "pos": ["engagement:ingest"],
}
BODY: dict[str, Any] = {
    "name": "春のセール",
    "channels": ["email"],
    "audience": {"customer_ids": [str(uuid.uuid4())]},
    "variants": [{"id": "d", "subject": "{{ name }}様", "body": "{{ name }}様"}],
    "default_variant": "d",
}


@pytest.fixture
def api(tmp_path: Path, kafka_bootstrap: str) -> Iterator[TestClient]:
    settings = Settings(var_dir=tmp_path / "var", kafka_bootstrap=kafka_bootstrap, api_keys=KEYS)
    app = create(settings)
    app.state.messaging = MessagingSettings(
        analytics_url="http://127.0.0.1:9", identity_url="http://127.0.0.1:9"
    )
    with TestClient(app) as client:
        client.headers["X-API-Key"] = "staff"
        yield client


def fields(response: Any) -> set[str]:
    return {f["field"] for f in response.json()["error"]["fields"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channels": ["fax"]}, "body.channels.0"),
        ({"channels": []}, "body.channels"),
        ({"audience": {"segment": "dormant", "customer_ids": []}}, "body.audience"),
        ({"audience": {"segment": "vip"}}, "body.audience.segment"),
        ({"default_variant": "x"}, "body.default_variant"),
        ({"variants": [{"id": "d", "body": "x"}]}, "body.variants.0.subject"),
        ({"variants": [{"id": "d", "subject": "s", "body": "{{ points }}"}]}, "body.variants.0.body"),
        ({"rules": [{"variant": "zz", "when": {"rank": ["gold"]}}]}, "body.rules.0.variant"),
        ({"rules": [{"variant": "d", "when": {"colour": ["red"]}}]}, "body.rules.0.when.colour.[key]"),
        (
            {"rules": [{"variant": "d", "when": {"birthday_month": ["13"]}}]},
            "body.rules.0.when.birthday_month",
        ),
        ({"rules": [{"variant": "d", "when": {"segment": ["vip"]}}]}, "body.rules.0.when.segment"),
        ({"rules": [{"variant": "d", "when": {"rank": ["diamond"]}}]}, "body.rules.0.when.rank"),
        ({"rules": [{"variant": "d", "when": {"gender": ["f"]}}]}, "body.rules.0.when.gender"),
        (
            {
                "link_hosts": ["shop.example.jp"],
                "variants": [
                    {
                        "id": "d",
                        "subject": "s",
                        "body": "{% for i in range(1001) %}https://shop.example.jp/p{{ i }} {% endfor %}",
                    }
                ],
            },
            "body.variants.0.body",
        ),
        ({"holdout_pct": 80}, "body.holdout_pct"),
        ({"quiet_hours": [25, 8]}, "body.quiet_hours.0"),
        ({"link_hosts": ["bad host/"]}, "body.link_hosts.0"),
        ({"send_at": "2026-11-01T10:00:00"}, "body.send_at"),
        ({"unknown": 1}, "body.unknown"),
    ],
)
def test_bad_campaigns_get_422_naming_the_field(api: TestClient, change: dict[str, Any], field: str) -> None:
    response = api.post("/v1/campaigns", json={**BODY, **change})
    assert response.status_code == 422, response.text
    assert field in fields(response), response.text


def test_rules_over_known_values_and_a_thousand_links_are_accepted(api: TestClient) -> None:
    links = "{% for i in range(1000) %}https://shop.example.jp/p{{ i }} {% endfor %}"
    body = {
        **BODY,
        "link_hosts": ["shop.example.jp"],
        "variants": [{"id": "d", "subject": "s", "body": links}, {"id": "b", "subject": "s", "body": "x"}],
        "rules": [
            {
                "variant": "b",
                "when": {
                    "birthday_month": ["current", "12"],
                    "segment": ["loyal"],
                    "rank": ["gold", "none"],
                    "gender": ["female"],
                    "age_band": ["30s"],
                },
            }
        ],
    }
    response = api.post("/v1/campaigns", json=body)
    assert response.status_code == 201, response.text


def test_scopes_states_and_unknown_campaigns(api: TestClient) -> None:
    assert api.post("/v1/campaigns", json=BODY, headers={"X-API-Key": "reader"}).status_code == 403
    assert api.post("/v1/campaigns", json=BODY, headers={"X-API-Key": "pos"}).status_code == 403
    created = api.post("/v1/campaigns", json=BODY)
    assert created.status_code == 201, created.text
    cid = created.json()["campaign_id"]
    assert created.json()["status"] == "draft"
    assert api.get(f"/v1/campaigns/{cid}", headers={"X-API-Key": "reader"}).json()["progress"]["pending"] == 0
    assert api.post(f"/v1/campaigns/{cid}/pause").status_code == 409  # a draft
    assert api.post(f"/v1/campaigns/{cid}/launch").status_code == 200
    assert api.post(f"/v1/campaigns/{cid}/pause").json()["status"] == "paused"
    assert api.post(f"/v1/campaigns/{cid}/resume").json()["status"] == "launched"
    assert (
        api.post(f"/v1/campaigns/{cid}/cancel", json={"reason": "wrong price"}).json()["status"]
        == "cancelled"
    )
    assert api.post(f"/v1/campaigns/{cid}/resume").status_code == 409
    assert api.get(f"/v1/campaigns/{uuid.uuid4()}").status_code == 404
    assert api.get("/v1/campaigns/not-a-uuid").status_code == 422
    assert [c["campaign_id"] for c in api.get("/v1/campaigns").json()["campaigns"]] == [cid]
    # a segment audience needs analytics, which is away here: 503, not a half-launched campaign
    segment = api.post("/v1/campaigns", json={**BODY, "audience": {"segment": "dormant"}}).json()[
        "campaign_id"
    ]
    away = api.post(f"/v1/campaigns/{segment}/launch")
    assert away.status_code == 503
    assert api.get(f"/v1/campaigns/{segment}").json()["status"] == "draft"
    # tracking links that do not verify, and a bounce for an unknown message
    assert api.get("/t/o/AAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA.gif").status_code == 404
    assert api.get("/t/c/nonsense-token").status_code == 404
    assert api.post("/t/u/nonsense-token").status_code == 404
    bounce = api.post(f"/v1/messages/{uuid.uuid4()}/bounces", json={"kind": "hard"})
    assert bounce.status_code == 404
    assert api.post(f"/v1/messages/{uuid.uuid4()}/bounces", json={"kind": "maybe"}).status_code == 422
    # a bounce's reason is its enhanced status code; its text (which quotes the address) is refused
    coded = api.post(f"/v1/messages/{uuid.uuid4()}/bounces", json={"kind": "hard", "reason": "5.1.1"})
    assert coded.status_code == 404
    texted = api.post(
        f"/v1/messages/{uuid.uuid4()}/bounces",
        json={"kind": "hard", "reason": "550 5.1.1 <taro@example.jp>: user unknown"},
    )
    assert texted.status_code == 422
    assert fields(texted) == {"body.reason"}


def test_payload_size_is_bounded(api: TestClient) -> None:
    huge = {**BODY, "audience": {"customer_ids": [str(uuid.uuid4()) for _ in range(30_000)]}}
    assert api.post("/v1/campaigns", json=huge).status_code in (413, 422)


def test_a_retried_create_with_its_request_id_is_the_same_campaign(api: TestClient) -> None:
    body = {**BODY, "request_id": "spring-sale-2026"}
    first = api.post("/v1/campaigns", json=body)
    assert first.status_code == 201, first.text
    again = api.post("/v1/campaigns", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["campaign_id"] == first.json()["campaign_id"]
    listed = api.get("/v1/campaigns").json()["campaigns"]
    assert [c["campaign_id"] for c in listed] == [first.json()["campaign_id"]]
    # the same request id for another campaign is a conflict, not a silent replacement
    other = api.post("/v1/campaigns", json={**body, "name": "夏のセール"})
    assert other.status_code == 409, other.text
    assert api.get(f"/v1/campaigns/{first.json()['campaign_id']}").json()["name"] == BODY["name"]
    # without one, two requests are two campaigns
    assert api.post("/v1/campaigns", json=BODY).json()["campaign_id"] != first.json()["campaign_id"]
    assert api.post("/v1/campaigns", json={**BODY, "request_id": "bad id!"}).status_code == 422


def test_campaigns_are_listed_in_keyset_pages_once_each(
    store_settings: Settings, kafka_bootstrap: str
) -> None:
    """Newest first, ``limit`` at a time: a walk sees every campaign that existed when it
    began exactly once, even when campaigns are created between its pages (an offset
    would show the last one of a page again on the next)."""
    settings = store_settings.model_copy(update={"kafka_bootstrap": kafka_bootstrap, "api_keys": KEYS})
    app = create(settings)
    app.state.messaging = MessagingSettings(
        analytics_url="http://127.0.0.1:9", identity_url="http://127.0.0.1:9"
    )
    with TestClient(app) as api:
        api.headers["X-API-Key"] = "reader"
        staff = {"X-API-Key": "staff"}

        def create_one(n: int) -> str:
            created = api.post("/v1/campaigns", json={**BODY, "name": f"campaign {n}"}, headers=staff)
            assert created.status_code == 201, created.text
            return str(created.json()["campaign_id"])

        existing = [create_one(n) for n in range(7)]
        page = api.get("/v1/campaigns", params={"limit": 3}).json()
        assert page["limit"] == 3 and page["next"]
        seen = [c["campaign_id"] for c in page["campaigns"]]
        late = []
        while page["next"]:
            late.append(create_one(100 + len(late)))  # created between two pages
            page = api.get("/v1/campaigns", params={"limit": 3, "cursor": page["next"]}).json()
            assert len(page["campaigns"]) <= 3
            seen += [c["campaign_id"] for c in page["campaigns"]]
        assert seen == existing[::-1]
        assert late  # the walk did span inserts
        fresh = api.get("/v1/campaigns", params={"limit": 200}).json()
        assert [c["campaign_id"] for c in fresh["campaigns"]] == [*late[::-1], *existing[::-1]]
        assert fresh["next"] is None
        exact = api.get("/v1/campaigns", params={"limit": len(existing) + len(late)}).json()
        assert exact["next"] is None  # a last page that is full says so

        for params, field in (
            ({"limit": 0}, "query.limit"),
            ({"limit": 201}, "query.limit"),
            ({"cursor": "%%%"}, "query.cursor"),
            ({"cursor": "eyJiZWZvcmUiOjk5OSwiaWQiOiJ4In0"}, "query.cursor"),  # a position not in the list
        ):
            bad = api.get("/v1/campaigns", params=params)
            assert bad.status_code == 422, bad.text
            assert bad.json()["error"]["fields"][0]["field"] == field
