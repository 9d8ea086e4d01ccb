"""Composition of surveys and forms, per process (the API, the relay)."""

from __future__ import annotations

from typing import Any, cast

from crm_platform.crypto import BlindIndexer
from crm_platform.datakeys import DataKeys, PostgresKeyBackend, SQLiteKeyBackend
from crm_platform.eventstore import TracingMapper
from crm_platform.kafka import EventProducer
from crm_platform.relay import OutboxRelay
from crm_platform.settings import Settings
from engagement.survey_translator import SurveyTranslator
from engagement.surveys import (
    APP_NAME,
    TEXT_KEY_PREFIX,
    TEXT_KEY_TABLE,
    ConfirmationSigner,
    InvitationSigner,
    MemberNumbers,
    SurveyApplication,
    SurveySettings,
)

SERVICE = "engagement"
SURVEY_RELAY_NAME = "engagement.surveys-relay"


def build_surveys(settings: Settings, survey_settings: SurveySettings | None = None) -> SurveyApplication:
    """Surveys' own store: ``var/engagement/surveys.sqlite``, or the ``surveys_*`` tables
    of engagement's PostgreSQL database (see ``engagement.surveys``), with the free-text
    data keys beside it (table ``survey_text_keys``)."""
    survey_settings = survey_settings or SurveySettings()
    env = settings.eventsourcing_env(SERVICE)
    if settings.event_store == "sqlite":
        env["SQLITE_DBNAME"] = str(settings.service_dir(SERVICE) / f"{APP_NAME}.sqlite")

    def text_keys(app: SurveyApplication) -> DataKeys:
        backend: SQLiteKeyBackend | PostgresKeyBackend
        if settings.event_store == "sqlite":
            backend = SQLiteKeyBackend(env["SQLITE_DBNAME"], TEXT_KEY_TABLE, with_subjects=True)
        else:
            datastore: Any = cast(Any, app.factory).datastore
            backend = PostgresKeyBackend(datastore.pool.connection, TEXT_KEY_TABLE, with_subjects=True)
        return DataKeys(backend, settings.master_keys, prefix=TEXT_KEY_PREFIX)

    return SurveyApplication(
        env,
        InvitationSigner(survey_settings.token_key_bytes),
        BlindIndexer(settings.blind_index_key_bytes),
        MemberNumbers(survey_settings.token_key_bytes),
        text_keys,
        ConfirmationSigner(survey_settings.token_key_bytes),
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
