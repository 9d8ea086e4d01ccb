"""Typed settings shared by every process, read from ``CRM_*`` environment variables.

The defaults are *local mode*: Kafka on 127.0.0.1:9092, SQLite event stores and chDB
under ``var/``, development API keys and secrets. In production (``CRM_ENV=production``)
the development secrets are refused, so a forgotten variable fails loudly at start-up
instead of shipping a well-known key; so are the laptop values docker-compose.yml once
published, and the API's documentation and metrics are not served in production unless
``CRM_PUBLIC_DOCS`` / ``CRM_PUBLIC_METRICS`` say so (docs/deployment.md).
"""

from __future__ import annotations

import base64
import hashlib
import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_contracts.topics import (
    ANALYTICS_SINK_GROUP,
    ENGAGEMENT_DISPATCHER_GROUP,
    ENGAGEMENT_ERASURE_GROUP,
    ENGAGEMENT_MEMBERSHIP_GROUP,
    IDENTITY_RESOLVER_GROUP,
    SUPPORT_ERASURE_GROUP,
)
from crm_platform.apikeys import KEY_ID_PATTERN, HashedApiKey, plaintext_entries
from crm_platform.capability import DEV_CONTACT_VERIFY_KEY
from crm_platform.crypto import MasterKeys

# Well-known development values. Local mode works out of the box with them; production
# refuses them (see ``_refuse_dev_secrets_in_production``).
DEV_BLIND_INDEX_KEY = base64.b64encode(b"crm-dev-blind-index-key-32bytes!").decode()
DEV_MASTER_KEY = base64.b64encode(b"crm-dev-master-key-do-not-use-32").decode()
DEV_API_KEYS: dict[str, list[str]] = {
    "dev-admin-key": ["*"],
    "dev-read-key": ["identity:read", "engagement:read", "support:read", "analytics:read"],
    # Write-only ingestion keys, one per source; ``store:<id>`` scopes would bind a key to
    # those stores (none here: the demo POS speaks for every store).
    "dev-pos-key": ["engagement:ingest", "source:pos"],
    "dev-shop-key": ["engagement:ingest", "source:webshop"],
    # Engagement's campaigns: the audience from analytics, at send time one channel's
    # address from identity, and an unsubscribe passed on to identity. Nothing more.
    "dev-messaging-key": ["analytics:read", "identity:contact", "identity:consent"],
}


#: Values docker-compose.yml once shipped as defaults: published, so refused in production
#: like the development ones (the file now requires every secret from the environment).
PUBLISHED_SECRETS: dict[str, frozenset[str]] = {
    "CRM_BLIND_INDEX_KEY": frozenset({"8ShD0mn+5tWh3MbaZUdDsmy7VHhduVjaN1NR4dTOeJk="}),
    "CRM_MASTER_KEY": frozenset({"pW4Z9QnZ0yeH7Sxs67o9T2EdFfD3MpzRe2ayU+romgU="}),
    "CRM_POSTGRES_PASSWORD": frozenset({"laptop-only-postgres"}),
}


def _dev_api_keys() -> dict[str, list[str] | HashedApiKey]:
    return {key: list(scopes) for key, scopes in DEV_API_KEYS.items()}


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def find_project_root(start: Path | None = None) -> Path:
    """The workspace root (the directory with ``uv.lock``), else the current directory."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "uv.lock").exists() and (candidate / "pyproject.toml").exists():
            return candidate
    return here


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", env_nested_delimiter="__", extra="ignore")

    env: Environment = Environment.DEVELOPMENT
    service_name: str = "crm"
    var_dir: Path = Field(default_factory=lambda: find_project_root() / "var")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: Prepended to every topic name: separate namespaces on one cluster (tests, staging).
    kafka_topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]{0,64}$")
    kafka_request_timeout_ms: int = Field(default=10_000, ge=100)
    #: How long an API waits for the broker to acknowledge before answering 503.
    kafka_ack_timeout_s: float = Field(default=5.0, gt=0)

    # Event store
    event_store: Literal["sqlite", "postgres"] = "sqlite"
    postgres_host: str = "127.0.0.1"
    postgres_port: int = 5432
    postgres_user: str = "crm"
    postgres_password: SecretStr = SecretStr("crm")
    postgres_db: str | None = None
    postgres_schema: str = ""
    postgres_pool_size: int = 5

    # HTTP
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    #: Processes serving one API port (uvicorn workers; each has its own connections).
    api_workers: int = Field(default=1, ge=1, le=64)
    #: The ingestion edge's native fast path (``engagement_native``); off, every event
    #: takes the Python path (the same results, at about half the rate): a switch for
    #: an operator who suspects the native code.
    ingest_native: bool = True
    #: Serve ``/docs``, ``/redoc`` and ``/openapi.json`` in production (always served in
    #: development and tests). Off by default: the API's map is for its operators.
    public_docs: bool = False
    #: Serve ``/metrics`` on an API's port in production (analytics'; always served in
    #: development and tests). The standalone sink's own metrics port is not affected.
    public_metrics: bool = False
    #: Which event types each ingestion source may send, added to or replacing the
    #: defaults per source (``engagement.ingest.sources``, docs/engagement.md).
    ingest_sources: dict[str, list[str]] = Field(default_factory=dict)
    #: key id -> ``{"sha256": <hex digest of the key>, "scopes": [...]}`` (crm_platform.apikeys;
    #: ``crm keys new-api-key``). Development and test also take ``{"<key>": [scopes]}``.
    api_keys: dict[str, list[str] | HashedApiKey] = Field(default_factory=_dev_api_keys)

    # Personal data
    #: Ed25519 public key (base64) identity checks contact capabilities with; engagement's
    #: dispatcher signs them with the private key (crm_platform.capability).
    contact_verify_key: str = Field(default=DEV_CONTACT_VERIFY_KEY, pattern=r"^[A-Za-z0-9+/]{43}=$")
    blind_index_key: SecretStr = SecretStr(DEV_BLIND_INDEX_KEY)
    master_key: SecretStr = SecretStr(DEV_MASTER_KEY)
    #: The version of ``master_key``: recorded with every data key it wraps.
    master_key_version: int = Field(default=1, ge=1)
    #: Older master keys by version (JSON ``{"1": "<base64>"}``), read only: they unwrap
    #: data keys not yet re-wrapped by ``crm keys rotate``; remove one after a rotation.
    master_keys_previous: dict[int, SecretStr] = Field(default_factory=dict)

    # Analytics (ClickHouse)
    #: A ClickHouse server DSN (``http://user:password@host:8123/crm``); without it,
    #: the embedded engine (chDB) under ``var/analytics/clickhouse``.
    clickhouse_url: SecretStr | None = None
    #: The sink's batches: flushed at this many rows or after this long, whichever first.
    sink_batch_rows: int = Field(default=25_000, ge=1, le=1_000_000)
    sink_batch_ms: int = Field(default=500, ge=10, le=60_000)
    #: Processes that validate the sink's records against the contracts, beside the
    #: sink's own (0: validate in the sink's process).
    sink_validators: int = Field(default=1, ge=0, le=64)
    #: Port of the standalone sink's ``/metrics`` and ``/healthz`` (on ``http_host``);
    #: an embedded sink's metrics are on the API's port.
    sink_metrics_port: int = Field(default=8014, ge=1, le=65_535)
    #: Budgets of one analytics query: past either it is stopped with a clear error.
    query_timeout_s: float = Field(default=10.0, gt=0, le=600)
    query_max_memory_bytes: int = Field(default=2 * 1024**3, ge=16 * 1024**2)
    #: The most rows a CSV export of a segment answers (beyond it: 422 export_too_large,
    #: or the top rows by revenue when the request asks for them with max_rows).
    export_max_rows: int = Field(default=100_000, ge=1, le=10_000_000)

    # Membership (engagement)
    #: A JSON file with the programme's ranks, window, point validity and birthday
    #: multiplier (docs/engagement.md); without it the built-in Regular/Silver/Gold/Platinum.
    membership_programme: Path | None = None
    #: How often the membership worker expires points and re-ranks the members due.
    membership_sweep_s: float = Field(default=3600.0, ge=1, le=86_400)

    # Support
    #: A JSON file with the support team's SLA targets per priority and escalation
    #: routing rules (docs/support.md); without it the built-in defaults.
    support_policy: Path | None = None

    # Telemetry
    otel_exporter_otlp_endpoint: str | None = None
    log_level: str = "INFO"

    @field_validator("blind_index_key", "master_key")
    @classmethod
    def _32_byte_base64(cls, value: SecretStr) -> SecretStr:
        try:
            raw = base64.b64decode(value.get_secret_value(), validate=True)
        except ValueError:
            raise ValueError("must be base64") from None
        if len(raw) != 32:
            raise ValueError("must decode to exactly 32 bytes")
        return value

    @field_validator("master_keys_previous")
    @classmethod
    def _previous_master_keys(cls, value: dict[int, SecretStr]) -> dict[int, SecretStr]:
        for version, key in value.items():
            if version < 1:
                raise ValueError(f"version {version}: a master key version is a positive integer")
            try:
                cls._32_byte_base64(key)
            except ValueError as exc:
                raise ValueError(f"version {version}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _current_master_key_version_is_not_previous(self) -> Settings:
        older = self.master_keys_previous.get(self.master_key_version)
        if older is not None and older.get_secret_value() != self.master_key.get_secret_value():
            raise ValueError(
                f"CRM_MASTER_KEYS_PREVIOUS has version {self.master_key_version} with another key than"
                " CRM_MASTER_KEY: give the current key a new CRM_MASTER_KEY_VERSION"
            )
        return self

    @model_validator(mode="after")
    def _refuse_dev_secrets_in_production(self) -> Settings:
        if self.env is not Environment.PRODUCTION:
            return self
        offending = []
        if self.blind_index_key.get_secret_value() == DEV_BLIND_INDEX_KEY:
            offending.append("CRM_BLIND_INDEX_KEY")
        if self.master_key.get_secret_value() == DEV_MASTER_KEY:
            offending.append("CRM_MASTER_KEY")
        if set(self.api_keys) & set(DEV_API_KEYS):
            offending.append("CRM_API_KEYS")
        if self.event_store == "postgres" and self.postgres_password.get_secret_value() == "crm":
            offending.append("CRM_POSTGRES_PASSWORD")
        if offending:
            raise ValueError(f"production refuses development secrets: set {', '.join(offending)}")
        return self

    @model_validator(mode="after")
    def _refuse_published_secrets_in_production(self) -> Settings:
        if self.env is not Environment.PRODUCTION:
            return self
        values = {
            "CRM_BLIND_INDEX_KEY": self.blind_index_key,
            "CRM_MASTER_KEY": self.master_key,
            "CRM_POSTGRES_PASSWORD": self.postgres_password,
        }
        offending = [name for name, v in values.items() if v.get_secret_value() in PUBLISHED_SECRETS[name]]
        if offending:
            raise ValueError(
                f"production refuses values published in docker-compose.yml: set {', '.join(offending)}"
            )
        return self

    @property
    def serves_docs(self) -> bool:
        """``/docs``, ``/redoc`` and ``/openapi.json`` are served (``CRM_PUBLIC_DOCS``)."""
        return self.env is not Environment.PRODUCTION or self.public_docs

    @property
    def serves_metrics(self) -> bool:
        """An API's ``/metrics`` is served (``CRM_PUBLIC_METRICS``)."""
        return self.env is not Environment.PRODUCTION or self.public_metrics

    @model_validator(mode="after")
    def _api_keys_hashed(self) -> Settings:
        """Hashed entries need a key id fit for events and the audit log; production
        takes hashed entries only (a key in clear in the configuration is one leak away)."""
        bad_ids = [
            k
            for k, v in self.api_keys.items()
            if isinstance(v, HashedApiKey) and not re.match(KEY_ID_PATTERN, k)
        ]
        if bad_ids:
            raise ValueError(f"CRM_API_KEYS: a key id is 1-64 letters, digits, '_.:-': {bad_ids[:3]}")
        if self.env is not Environment.PRODUCTION or set(self.api_keys) & set(DEV_API_KEYS):
            return self  # (development keys in production: refused above)
        if self.contact_verify_key == DEV_CONTACT_VERIFY_KEY:
            raise ValueError("production refuses development secrets: set CRM_CONTACT_VERIFY_KEY")
        clear = plaintext_entries(self.api_keys)
        if clear:
            raise ValueError(
                "CRM_API_KEYS: production takes hashed entries "
                '{"<key id>": {"sha256": "<hex>", "scopes": [...]}} (crm keys new-api-key); '
                f"{len(clear)} key(s) given in clear ({', '.join(clear[:3])})"
            )
        return self

    @property
    def blind_index_key_bytes(self) -> bytes:
        return base64.b64decode(self.blind_index_key.get_secret_value())

    @property
    def master_key_bytes(self) -> bytes:
        return base64.b64decode(self.master_key.get_secret_value())

    @property
    def master_keys(self) -> MasterKeys:
        """The master key ring: the current key (``master_key_version``) and the previous."""
        return MasterKeys(
            self.master_key_bytes,
            self.master_key_version,
            {v: base64.b64decode(k.get_secret_value()) for v, k in self.master_keys_previous.items()},
        )

    @property
    def clickhouse_dsn(self) -> str:
        """Analytics' ClickHouse: the server of ``CRM_CLICKHOUSE_URL``, or chDB under
        ``var/analytics/clickhouse``."""
        if self.clickhouse_url is not None:
            return self.clickhouse_url.get_secret_value()
        return f"chdb://{self.service_dir('analytics') / 'clickhouse'}"

    @property
    def analytics_sink_group(self) -> str:
        """The analytics sink's consumer group. Its committed offsets describe what one
        ClickHouse holds, so an embedded data directory gets a group of its own: a fresh
        ``var/`` (or a test's) is filled from the start of the log, not from another's
        offsets."""
        if self.clickhouse_url is not None:
            return ANALYTICS_SINK_GROUP
        return f"{ANALYTICS_SINK_GROUP}-" + hashlib.sha256(self.clickhouse_dsn.encode()).hexdigest()[:10]

    def platform_groups(self) -> tuple[str, ...]:
        """The consumer groups of this deployment's stream processors — the resolver,
        the membership worker, support's eraser, the analytics sink, the campaign
        dispatcher's consent view, engagement's eraser — and no one else's
        (a BI tool's, a ``crm replay`` scratch group, the sink of another data directory)."""
        prefix = self.kafka_topic_prefix
        return (
            prefix + IDENTITY_RESOLVER_GROUP,
            prefix + ENGAGEMENT_MEMBERSHIP_GROUP,
            self.analytics_sink_group,
            prefix + SUPPORT_ERASURE_GROUP,
            prefix + ENGAGEMENT_DISPATCHER_GROUP,
            prefix + ENGAGEMENT_ERASURE_GROUP,
        )

    def service_dir(self, service: str) -> Path:
        path = self.var_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def eventsourcing_env(self, service: str) -> dict[str, Any]:
        """Environment for an ``eventsourcing`` application of ``service``.

        One store per service: a SQLite file under ``var/<service>/`` or the PostgreSQL
        database named after the service (``CRM_POSTGRES_DB`` overrides the name).
        """
        env: dict[str, Any] = {
            "MAPPER_TOPIC": "crm_platform.eventstore:TracingMapper",
        }
        if self.event_store == "sqlite":
            env.update(
                # eventsourcing.sqlite with secure_delete on every connection
                PERSISTENCE_MODULE="crm_platform.eventstore:SecureSQLiteFactory",
                SQLITE_DBNAME=str(self.service_dir(service) / "events.sqlite"),
                SQLITE_LOCK_TIMEOUT="10",
            )
        else:
            env.update(
                PERSISTENCE_MODULE="eventsourcing.postgres",
                POSTGRES_DBNAME=self.postgres_db or service,
                POSTGRES_HOST=self.postgres_host,
                POSTGRES_PORT=str(self.postgres_port),
                POSTGRES_USER=self.postgres_user,
                POSTGRES_PASSWORD=self.postgres_password.get_secret_value(),
                POSTGRES_SCHEMA=self.postgres_schema,
                POSTGRES_POOL_SIZE=str(self.postgres_pool_size),
                POSTGRES_CONNECT_TIMEOUT="5",
                POSTGRES_LOCK_TIMEOUT="5",
            )
        return env
