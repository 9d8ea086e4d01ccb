"""The shared HTTP edge: validation errors, size limits, API keys and scopes, health."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from crm_platform.capability import new_signing_key
from crm_platform.http import Principal, create_app, require_scope
from crm_platform.settings import Settings


class Thing(BaseModel):
    name: str = Field(min_length=1)
    quantity: int = Field(ge=1)


class Missing(Exception):
    pass


@pytest.fixture
def client(tmp_path) -> TestClient:  # type: ignore[no-untyped-def]
    settings = Settings(
        var_dir=tmp_path,
        max_request_bytes=2048,
        api_keys={"writer-key": ["things:write"], "reader-key": ["things:read"], "root-key": ["*"]},
    )

    async def failing() -> None:
        raise ConnectionError("broker down")

    async def fine() -> None:
        return None

    app = create_app(
        settings=settings,
        title="t",
        readiness_checks={"store": fine, "kafka": failing},
        error_map={Missing: 404},
    )

    @app.post("/things", status_code=201)
    def make(thing: Thing, _: Annotated[Principal, Depends(require_scope("things:write"))]) -> Thing:
        return thing

    @app.get("/things/{name}")
    def get(name: str, _: Annotated[Principal, Depends(require_scope("things:read"))]) -> Thing:
        raise Missing(f"no thing {name}")

    return TestClient(app)


def test_malformed_body_names_the_field(client: TestClient) -> None:
    response = client.post("/things", json={"name": "a", "quantity": 0}, headers={"X-API-Key": "writer-key"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["fields"][0]["field"] == "body.quantity"
    assert "greater than or equal to 1" in error["fields"][0]["reason"]


def test_invalid_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/things", content=b"{nope", headers={"X-API-Key": "writer-key", "Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_oversized_body_is_413_declared_or_streamed(client: TestClient) -> None:
    headers = {"X-API-Key": "writer-key", "Content-Type": "application/json"}
    big = b'{"name": "' + b"x" * 5000 + b'", "quantity": 1}'
    assert client.post("/things", content=big, headers=headers).status_code == 413

    def chunks():  # type: ignore[no-untyped-def]
        yield big[:1000]
        yield big[1000:]

    response = client.post("/things", content=chunks(), headers=headers)  # chunked, no length
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_api_keys_and_scopes(client: TestClient) -> None:
    body = {"name": "a", "quantity": 1}
    assert client.post("/things", json=body).status_code == 401
    assert client.post("/things", json=body, headers={"X-API-Key": "nope"}).status_code == 401
    assert client.post("/things", json=body, headers={"X-API-Key": "reader-key"}).status_code == 403
    assert client.post("/things", json=body, headers={"X-API-Key": "writer-key"}).status_code == 201
    assert client.post("/things", json=body, headers={"X-API-Key": "root-key"}).status_code == 201


def test_domain_errors_map_to_status_codes(client: TestClient) -> None:
    response = client.get("/things/x", headers={"X-API-Key": "reader-key"})
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "missing", "message": "no thing x"}}


def test_health_and_readiness(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    with caplog.at_level(logging.WARNING, logger="crm_platform.http"):
        ready = client.get("/readyz")
    assert ready.status_code == 503
    # a code per check; the exception's text (hosts, users, paths) is logged, never answered
    assert ready.json() == {"status": "unavailable", "checks": {"store": "ok", "kafka": "unavailable"}}
    assert "broker down" not in ready.text and "ConnectionError" not in ready.text
    failure = next(r for r in caplog.records if "readiness check kafka failed" in r.getMessage())
    assert failure.exc_info is not None and "broker down" in str(failure.exc_info[1])


def _app(**settings: object) -> TestClient:
    app = create_app(settings=Settings(**settings), title="t")  # type: ignore[arg-type]
    return TestClient(app)


PRODUCTION: dict[str, object] = {
    "env": "production",
    "blind_index_key": base64.b64encode(b"b" * 32).decode(),
    "master_key": base64.b64encode(b"m" * 32).decode(),
    "api_keys": {"k-123": {"sha256": "ab" * 32, "scopes": ["things:read"]}},
    "contact_verify_key": new_signing_key()[1],
}
DOCS = ("/docs", "/redoc", "/openapi.json")


def test_production_serves_no_api_docs_unless_told(tmp_path: Path) -> None:
    hidden = _app(var_dir=tmp_path, **PRODUCTION)
    assert [hidden.get(path).status_code for path in DOCS] == [404, 404, 404]
    assert hidden.get("/healthz").status_code == 200
    shown = _app(var_dir=tmp_path, public_docs=True, **PRODUCTION)
    assert [shown.get(path).status_code for path in DOCS] == [200, 200, 200]
    development = _app(var_dir=tmp_path)
    assert [development.get(path).status_code for path in DOCS] == [200, 200, 200]
