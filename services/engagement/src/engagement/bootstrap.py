"""Composition root: the one place engagement's parts are wired together, per process."""

from __future__ import annotations

from crm_platform.crypto import BlindIndexer
from crm_platform.eventstore import TracingMapper, project
from crm_platform.kafka import EventProducer
from crm_platform.relay import OutboxRelay
from crm_platform.settings import Settings
from engagement.membership import Attribution, MembershipApplication
from engagement.programme import load_programme
from engagement.translator import MembershipTranslator

SERVICE = "engagement"
RELAY_NAME = "engagement.kafka-relay"


def build_membership(settings: Settings) -> MembershipApplication:
    return MembershipApplication(
        settings.eventsourcing_env(SERVICE),
        BlindIndexer(settings.blind_index_key_bytes),
        load_programme(settings.membership_programme),
    )


def build_attribution(settings: Settings, app: MembershipApplication) -> Attribution:
    return Attribution(app, settings.service_dir(SERVICE) / "attribution.sqlite")


def build_relay(settings: Settings, app: MembershipApplication, producer: EventProducer) -> OutboxRelay:
    """The outbox relay of engagement's store: membership events to Kafka."""
    mapper = app.mapper
    assert isinstance(mapper, TracingMapper)
    return OutboxRelay(
        name=RELAY_NAME,
        recorder=app.recorder,
        mapper=mapper,
        tracking=app.factory.tracking_recorder(),
        translate=MembershipTranslator(
            lambda member_id: app.repository.get(member_id, projector_func=project).member_no_hash
        ),
        producer=producer,
    )
