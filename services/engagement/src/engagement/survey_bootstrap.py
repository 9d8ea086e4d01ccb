"""Composition of surveys and forms, per process (the API, the relay)."""

from __future__ import annotations

from crm_platform.crypto import BlindIndexer
from crm_platform.eventstore import TracingMapper
from crm_platform.kafka import EventProducer
from crm_platform.relay import OutboxRelay
from crm_platform.settings import Settings
from engagement.survey_translator import SurveyTranslator
from engagement.surveys import APP_NAME, InvitationSigner, MemberNumbers, SurveyApplication, SurveySettings

SERVICE = "engagement"
SURVEY_RELAY_NAME = "engagement.surveys-relay"


def build_surveys(settings: Settings, survey_settings: SurveySettings | None = None) -> SurveyApplication:
    """Surveys' own store: ``var/engagement/surveys.sqlite``, or the ``surveys_*`` tables
    of engagement's PostgreSQL database (see ``engagement.surveys``)."""
    survey_settings = survey_settings or SurveySettings()
    env = settings.eventsourcing_env(SERVICE)
    if settings.event_store == "sqlite":
        env["SQLITE_DBNAME"] = str(settings.service_dir(SERVICE) / f"{APP_NAME}.sqlite")
    return SurveyApplication(
        env,
        InvitationSigner(survey_settings.token_key_bytes),
        BlindIndexer(settings.blind_index_key_bytes),
        MemberNumbers(survey_settings.token_key_bytes),
    )


def build_survey_relay(app: SurveyApplication, producer: EventProducer) -> OutboxRelay:
    """The outbox relay of the surveys store: answers, invitations and form submissions
    to ``crm.engagement.form``."""
    mapper = app.mapper
    assert isinstance(mapper, TracingMapper)
    return OutboxRelay(
        name=SURVEY_RELAY_NAME,
        recorder=app.recorder,
        mapper=mapper,
        tracking=app.factory.tracking_recorder(),
        translate=SurveyTranslator(),
        producer=producer,
    )
