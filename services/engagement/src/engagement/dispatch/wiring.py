"""Composition of campaigns' parts, per process (the API, the relay, the dispatcher).

Kept beside ``engagement.bootstrap`` (membership's) so each feature wires its own parts."""

from __future__ import annotations

import base64

from crm_contracts.topics import ENGAGEMENT_DISPATCHER_GROUP
from crm_platform.eventstore import TracingMapper, project
from crm_platform.kafka import EventProducer
from crm_platform.relay import OutboxRelay
from crm_platform.settings import Settings
from engagement.bootstrap import SERVICE
from engagement.campaign_translator import CampaignTranslator
from engagement.campaigns import CampaignApplication, campaigns_env
from engagement.dispatch.clients import ServiceClients
from engagement.dispatch.consent import ConsentView
from engagement.dispatch.dispatcher import Dispatcher
from engagement.dispatch.providers import Provider, SmtpProvider, WebhookProvider
from engagement.dispatch.settings import MessagingSettings
from engagement.tracking import TrackingSigner

CAMPAIGN_RELAY_NAME = "engagement.campaign-relay"
DISPATCHER_GROUP = ENGAGEMENT_DISPATCHER_GROUP


def build_campaigns(settings: Settings) -> CampaignApplication:
    return CampaignApplication(env=campaigns_env(settings.eventsourcing_env(SERVICE)))


def build_clients(messaging: MessagingSettings) -> ServiceClients:
    return ServiceClients(
        messaging.identity_url,
        messaging.analytics_url,
        messaging.messaging_api_key.get_secret_value(),
        messaging.service_timeout_s,
        contact_signing_key=messaging.contact_signing_key.get_secret_value(),
    )


def build_signer(settings: Settings) -> TrackingSigner:
    previous = [base64.b64decode(k.get_secret_value()) for k in settings.master_keys_previous.values()]
    return TrackingSigner(settings.master_key_bytes, previous)


def build_campaign_relay(
    settings: Settings, app: CampaignApplication, producer: EventProducer
) -> OutboxRelay:
    """The outbox relay of the campaigns' store: message events to Kafka."""
    mapper = app.mapper
    assert isinstance(mapper, TracingMapper)
    return OutboxRelay(
        name=CAMPAIGN_RELAY_NAME,
        recorder=app.recorder,
        mapper=mapper,
        tracking=app.factory.tracking_recorder(),
        translate=CampaignTranslator(
            lambda cid: app.repository.get(cid, projector_func=project),
            lambda mid: app.repository.get(mid, projector_func=project),
        ),
        producer=producer,
    )


def build_providers(messaging: MessagingSettings) -> dict[str, Provider]:
    providers: dict[str, Provider] = {
        "email": SmtpProvider(
            messaging.smtp_host,
            messaging.smtp_port,
            messaging.mail_from,
            username=messaging.smtp_username,
            password=messaging.smtp_password.get_secret_value() if messaging.smtp_password else None,
            security=messaging.smtp_security,
            timeout_s=messaging.smtp_timeout_s,
            pool_size=messaging.dispatch_concurrency,
        )
    }
    for channel in ("sms", "line", "app_push"):
        url = messaging.webhook_url(channel)
        if url:
            providers[channel] = WebhookProvider(url, messaging.webhook_secret.get_secret_value())
    return providers


def build_dispatcher(
    settings: Settings, messaging: MessagingSettings, app: CampaignApplication, clients: ServiceClients
) -> tuple[Dispatcher, ConsentView]:
    view = ConsentView(settings.service_dir(SERVICE) / "consent-view.sqlite")
    dispatcher = Dispatcher(app, clients, view, build_providers(messaging), messaging, build_signer(settings))
    return dispatcher, view
