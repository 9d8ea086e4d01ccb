from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from crm_platform.settings import Settings

SECRET = base64.b64encode(b"s" * 32).decode()
OTHER = base64.b64encode(b"o" * 32).decode()


def test_local_mode_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(var_dir=tmp_path)
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    env = settings.eventsourcing_env("identity")
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"
    assert env["SQLITE_DBNAME"] == str(tmp_path / "identity" / "events.sqlite")


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(ValidationError, match="CRM_BLIND_INDEX_KEY, CRM_MASTER_KEY, CRM_API_KEYS"):
        Settings(env="production")


def test_production_with_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_ENV", "production")
    monkeypatch.setenv("CRM_BLIND_INDEX_KEY", SECRET)
    monkeypatch.setenv("CRM_MASTER_KEY", OTHER)
    monkeypatch.setenv("CRM_API_KEYS", '{"k-123": ["identity:read"]}')
    monkeypatch.setenv("CRM_EVENT_STORE", "postgres")
    monkeypatch.setenv("CRM_POSTGRES_PASSWORD", "long-random")
    settings = Settings()
    assert settings.api_keys == {"k-123": ["identity:read"]}
    assert settings.eventsourcing_env("support")["POSTGRES_DBNAME"] == "support"


def test_secrets_must_be_32_byte_base64() -> None:
    with pytest.raises(ValidationError, match="exactly 32 bytes"):
        Settings(master_key=base64.b64encode(b"short").decode())
