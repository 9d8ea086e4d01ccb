"""API keys: hashed configuration, constant-time recognition, key ids in place of keys,
a minimum length in production; development keys unchanged."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from pydantic import ValidationError

from crm_platform.apikeys import MIN_API_KEY_LENGTH, authenticate, key_table, new_api_key, plaintext_key_id
from crm_platform.capability import new_signing_key
from crm_platform.http import Principal, create_app, require_scope
from crm_platform.settings import DEV_API_KEYS, Settings

SECRET = base64.b64encode(b"s" * 32).decode()
OTHER = base64.b64encode(b"o" * 32).decode()


def _production(api_keys: dict[str, Any], tmp_path: Path) -> Settings:
    return Settings(
        env="production",
        var_dir=tmp_path,
        blind_index_key=SECRET,
        master_key=OTHER,
        api_keys=api_keys,
        contact_verify_key=new_signing_key()[1],
    )


def _client(settings: Settings) -> TestClient:
    app = create_app(settings=settings, title="t")

    @app.get("/whoami")
    def whoami(principal: Annotated[Principal, Depends(require_scope("things:read"))]) -> dict[str, Any]:
        return {
            "key_id": principal.key_id,
            "decided_by": principal.key_id,
            "scopes": sorted(principal.scopes),
        }

    return TestClient(app)


def test_a_hashed_entry_authenticates_and_the_key_id_stands_for_the_caller(tmp_path: Path) -> None:
    key, entry = new_api_key("crm-reader-1", ["things:read"])
    assert len(key) >= MIN_API_KEY_LENGTH
    assert key not in json.dumps(entry)  # the configuration never holds the key
    client = _client(_production(entry, tmp_path))
    got = client.get("/whoami", headers={"X-API-Key": key})
    assert got.status_code == 200, got.text
    assert got.json() == {"key_id": "crm-reader-1", "decided_by": "crm-reader-1", "scopes": ["things:read"]}
    assert (
        client.get("/whoami", headers={"X-API-Key": key[:-1] + ("A" if key[-1] != "A" else "B")}).status_code
        == 401
    )


def test_production_refuses_a_short_key_even_if_configured(tmp_path: Path) -> None:
    short = "x" * (MIN_API_KEY_LENGTH - 1)
    import hashlib

    entry = {"short": {"sha256": hashlib.sha256(short.encode()).hexdigest(), "scopes": ["things:read"]}}
    assert (
        _client(_production(entry, tmp_path)).get("/whoami", headers={"X-API-Key": short}).status_code == 401
    )
    # the same entry in development answers (the minimum is production's)
    dev = Settings(var_dir=tmp_path, api_keys=entry)
    assert _client(dev).get("/whoami", headers={"X-API-Key": short}).status_code == 200


def test_production_refuses_keys_in_clear(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="production takes hashed entries"):
        _production({"k" * 40: ["things:read"]}, tmp_path)


def test_production_refuses_the_development_contact_key(tmp_path: Path) -> None:
    _, entry = new_api_key("k1", ["things:read"])
    with pytest.raises(ValidationError, match="CRM_CONTACT_VERIFY_KEY"):
        Settings(env="production", var_dir=tmp_path, blind_index_key=SECRET, master_key=OTHER, api_keys=entry)


def test_a_key_id_must_fit_events_and_the_audit_log(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="key id"):
        Settings(var_dir=tmp_path, api_keys={"bad id\n": {"sha256": "ab" * 32, "scopes": ["x:read"]}})


def test_development_keys_work_unchanged_and_their_id_is_not_the_key(tmp_path: Path) -> None:
    client = _client(Settings(var_dir=tmp_path, api_keys={**DEV_API_KEYS, "reader": ["things:read"]}))
    got = client.get("/whoami", headers={"X-API-Key": "reader"}).json()
    assert got["key_id"] == plaintext_key_id("reader")
    assert "reader" not in got["key_id"]
    admin = client.get("/whoami", headers={"X-API-Key": "dev-admin-key"}).json()
    assert admin["decided_by"].startswith("key-") and "dev-admin" not in admin["decided_by"]
    assert client.get("/whoami", headers={"X-API-Key": "dev-read-key"}).status_code == 403  # no things:read


def test_every_entry_is_compared() -> None:
    table = key_table({"a": ["x:read"], "b": ["y:read"], "c": ["z:read"]})
    found = authenticate(table, "c")
    assert found is not None and found.scopes == {"z:read"}
    assert authenticate(table, "d") is None
    assert authenticate(table, "c", min_length=2) is None
