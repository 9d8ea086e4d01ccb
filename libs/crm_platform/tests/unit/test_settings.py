from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from crm_platform.apikeys import HashedApiKey
from crm_platform.capability import new_signing_key
from crm_platform.settings import PUBLISHED_SECRETS, Settings

SECRET = base64.b64encode(b"s" * 32).decode()
OTHER = base64.b64encode(b"o" * 32).decode()


def test_local_mode_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(var_dir=tmp_path)
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    env = settings.eventsourcing_env("identity")
    assert env["PERSISTENCE_MODULE"] == "crm_platform.eventstore:SecureSQLiteFactory"
    assert env["SQLITE_DBNAME"] == str(tmp_path / "identity" / "events.sqlite")


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(ValidationError, match="CRM_BLIND_INDEX_KEY, CRM_MASTER_KEY, CRM_API_KEYS"):
        Settings(env="production")


def test_production_with_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_ENV", "production")
    monkeypatch.setenv("CRM_BLIND_INDEX_KEY", SECRET)
    monkeypatch.setenv("CRM_MASTER_KEY", OTHER)
    monkeypatch.setenv(
        "CRM_API_KEYS", '{"k-123": {"sha256": "' + "ab" * 32 + '", "scopes": ["identity:read"]}}'
    )
    monkeypatch.setenv("CRM_CONTACT_VERIFY_KEY", new_signing_key()[1])
    monkeypatch.setenv("CRM_EVENT_STORE", "postgres")
    monkeypatch.setenv("CRM_POSTGRES_PASSWORD", "long-random")
    settings = Settings()
    assert settings.api_keys == {"k-123": HashedApiKey(sha256="ab" * 32, scopes=["identity:read"])}
    assert settings.eventsourcing_env("support")["POSTGRES_DBNAME"] == "support"


def test_secrets_must_be_32_byte_base64() -> None:
    with pytest.raises(ValidationError, match="exactly 32 bytes"):
        Settings(master_key=base64.b64encode(b"short").decode())


def test_a_deployment_names_its_own_consumer_groups(tmp_path: Path) -> None:
    local = Settings(var_dir=tmp_path / "a", kafka_topic_prefix="t1.")
    resolver, worker, sink, eraser, dispatcher, survey_eraser = local.platform_groups()
    assert (resolver, worker) == ("t1.identity-resolver", "t1.engagement-membership")
    assert eraser == "t1.support-erasure"
    assert survey_eraser == "t1.engagement-erasure"
    # the dispatcher follows the profile topic into its consent view: settled waits for it
    assert dispatcher == "t1.engagement-dispatcher"
    # an embedded sink's group follows its data directory, whatever the prefix
    assert sink.startswith("analytics-sink-") and len(sink) == len("analytics-sink-") + 10
    assert sink == Settings(var_dir=tmp_path / "a").analytics_sink_group
    assert sink != Settings(var_dir=tmp_path / "b").analytics_sink_group  # a test's var/ is another
    server = Settings(var_dir=tmp_path / "a", clickhouse_url="http://u:p@ch:8123/crm")
    assert server.platform_groups()[2] == "analytics-sink"
    assert server.clickhouse_dsn == "http://u:p@ch:8123/crm"
    assert local.clickhouse_dsn == f"chdb://{tmp_path / 'a' / 'analytics' / 'clickhouse'}"


def _production(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "blind_index_key": SECRET,
        "master_key": OTHER,
        "api_keys": {"k-123": {"sha256": "ab" * 32, "scopes": ["identity:read"]}},
        "contact_verify_key": new_signing_key()[1],
        "event_store": "postgres",
        "postgres_password": "long-random",
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(PUBLISHED_SECRETS))
def test_production_refuses_the_values_compose_once_published(name: str) -> None:
    _production()  # the same settings with values of one's own start
    (published,) = PUBLISHED_SECRETS[name]
    field = name.removeprefix("CRM_").lower()
    with pytest.raises(ValidationError, match=f"published in docker-compose.yml: set {name}"):
        _production(**{field: published})
    Settings(**{field: published})  # a laptop may still use them


def test_docs_and_metrics_are_served_in_production_only_when_told() -> None:
    assert (Settings().serves_docs, Settings().serves_metrics) == (True, True)
    assert (_production().serves_docs, _production().serves_metrics) == (False, False)
    told = _production(public_docs=True, public_metrics=True)
    assert (told.serves_docs, told.serves_metrics) == (True, True)


def test_master_keys_by_version(monkeypatch: pytest.MonkeyPatch) -> None:
    old = base64.b64encode(b"o" * 32).decode()
    new = base64.b64encode(b"n" * 32).decode()
    monkeypatch.setenv("CRM_MASTER_KEY", new)
    monkeypatch.setenv("CRM_MASTER_KEY_VERSION", "2")
    monkeypatch.setenv("CRM_MASTER_KEYS_PREVIOUS", f'{{"1": "{old}"}}')
    ring = Settings().master_keys
    assert ring.version == 2 and ring.versions == (1, 2)

    monkeypatch.setenv("CRM_MASTER_KEYS_PREVIOUS", '{"1": "not base64!"}')
    with pytest.raises(ValidationError, match="version 1: must be base64"):
        Settings()
    monkeypatch.setenv("CRM_MASTER_KEYS_PREVIOUS", f'{{"2": "{old}"}}')
    with pytest.raises(ValidationError, match="give the current key a new CRM_MASTER_KEY_VERSION"):
        Settings()
    monkeypatch.delenv("CRM_MASTER_KEYS_PREVIOUS")
    monkeypatch.setenv("CRM_MASTER_KEY_VERSION", "0")
    with pytest.raises(ValidationError, match="master_key_version"):
        Settings()
