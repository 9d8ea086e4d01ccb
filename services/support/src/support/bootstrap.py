"""Composition root: the one place support's parts are wired together, per process."""

from __future__ import annotations

from typing import Any, cast

import orjson

from crm_platform.crypto import BlindIndexer
from crm_platform.eventstore import TracingMapper, project
from crm_platform.kafka import EventProducer
from crm_platform.relay import OutboxRelay
from crm_platform.settings import Settings
from support.adapters.index import TicketIndex
from support.adapters.keys import PostgresKeyBackend, SQLiteKeyBackend, TicketKeys
from support.application import SupportApplication
from support.domain.policy import Policy, PolicyError, policy_from_dict
from support.translator import TicketTranslator

SERVICE = "support"
RELAY_NAME = "support.kafka-relay"


def load_policy(settings: Settings) -> Policy:
    if settings.support_policy is None:
        return Policy()
    try:
        data = orjson.loads(settings.support_policy.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise PolicyError(f"CRM_SUPPORT_POLICY {settings.support_policy}: {exc}") from None
    return policy_from_dict(data)


def build(settings: Settings, *, with_index: bool = True) -> SupportApplication:
    """The application with its key store (and the ticket list, for API and eraser)."""
    app = SupportApplication(
        settings.eventsourcing_env(SERVICE),
        BlindIndexer(settings.blind_index_key_bytes),
        lambda a: TicketKeys(_key_backend(settings, a), settings.master_keys),
        load_policy(settings),
        TicketIndex(settings.service_dir(SERVICE) / "index.sqlite") if with_index else None,
    )
    return app


def _key_backend(settings: Settings, app: SupportApplication) -> SQLiteKeyBackend | PostgresKeyBackend:
    if settings.event_store == "sqlite":
        return SQLiteKeyBackend(str(settings.service_dir(SERVICE) / "events.sqlite"))
    datastore: Any = cast(Any, app.factory).datastore
    return PostgresKeyBackend(datastore.pool.connection)


def build_relay(settings: Settings, app: SupportApplication, producer: Any, **kwargs: Any) -> OutboxRelay:
    """The outbox relay of support's store: ticket events to Kafka (needs no keys:
    content is sealed in the store already)."""
    mapper = app.mapper
    assert isinstance(mapper, TracingMapper)
    producer_: EventProducer = producer
    return OutboxRelay(
        name=RELAY_NAME,
        recorder=app.recorder,
        mapper=mapper,
        tracking=app.factory.tracking_recorder(),
        translate=TicketTranslator(lambda ticket_id: app.repository.get(ticket_id, projector_func=project)),
        producer=producer_,
        **kwargs,
    )
