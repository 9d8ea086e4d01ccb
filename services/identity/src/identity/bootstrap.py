"""Composition root: the one place identity's parts are wired together, per process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from crm_platform.crypto import BlindIndexer
from crm_platform.eventstore import TracingMapper
from crm_platform.kafka import EventProducer
from crm_platform.relay import OutboxRelay
from crm_platform.settings import Settings
from identity.adapters.keystore import DataKeyStore, PostgresKeyBackend, SQLiteKeyBackend
from identity.application import IdentityApplication, Thresholds
from identity.translator import IdentityTranslator

SERVICE = "identity"
RELAY_NAME = "identity.kafka-relay"


@dataclass
class Identity:
    settings: Settings
    app: IdentityApplication
    keys: DataKeyStore
    indexer: BlindIndexer

    def close(self) -> None:
        self.app.close()


def build(settings: Settings | None = None, thresholds: Thresholds | None = None) -> Identity:
    settings = settings or Settings(service_name=SERVICE)
    indexer = BlindIndexer(settings.blind_index_key_bytes)
    app = IdentityApplication(
        env=settings.eventsourcing_env(SERVICE),
        indexer=indexer,
        key_store=lambda a: DataKeyStore(_key_backend(settings, a), settings.master_keys),
        thresholds=thresholds or Thresholds(),
    )
    return Identity(settings, app, app.keys, indexer)


def _key_backend(settings: Settings, app: IdentityApplication) -> SQLiteKeyBackend | PostgresKeyBackend:
    datastore: Any = cast(Any, app.factory).datastore
    if settings.event_store == "sqlite":
        return SQLiteKeyBackend(str(settings.service_dir(SERVICE) / "events.sqlite"))
    return PostgresKeyBackend(datastore.pool.connection)


def build_relay(identity: Identity, producer: EventProducer, **kwargs: Any) -> OutboxRelay:
    mapper = identity.app.mapper
    assert isinstance(mapper, TracingMapper)  # PersonalDataMapper: opens the store's sealed fields
    return OutboxRelay(
        name=RELAY_NAME,
        recorder=identity.app.recorder,
        mapper=mapper,
        tracking=identity.app.factory.tracking_recorder(),
        translate=IdentityTranslator(identity.keys),
        producer=producer,
        **kwargs,
    )
