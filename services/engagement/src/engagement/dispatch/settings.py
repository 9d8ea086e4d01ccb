"""Settings of campaigns and their dispatcher, read from ``CRM_*`` environment variables
like every other setting (``crm_platform.settings.Settings`` holds the shared ones).

In production the development API key for identity and analytics is refused, like the
platform's own development secrets, and so are an SMTP login without TLS and unsigned
webhooks (docs/deployment.md, "Production settings").
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crm_platform.capability import DEV_CONTACT_SIGNING_KEY

DEV_MESSAGING_KEY = "dev-messaging-key"
#: The laptop key docker-compose.yml once shipped as a default: published, so refused too.
PUBLISHED_MESSAGING_KEY = "laptop-only-messaging"
#: A production webhook secret's least length (``openssl rand -base64 32`` gives 44).
MIN_WEBHOOK_SECRET_CHARS = 32


class MessagingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    env: str = "development"

    # Other services, over HTTP (services never import each other)
    identity_url: str = "http://127.0.0.1:8001"
    analytics_url: str = "http://127.0.0.1:8004"
    #: A key with analytics:read, identity:contact and identity:consent, nothing more.
    messaging_api_key: SecretStr = SecretStr(DEV_MESSAGING_KEY)
    #: Ed25519 private key (base64 of 32 bytes) the dispatcher signs contact
    #: capabilities with; identity holds its public key (CRM_CONTACT_VERIFY_KEY).
    contact_signing_key: SecretStr = SecretStr(DEV_CONTACT_SIGNING_KEY)
    service_timeout_s: float = Field(default=10.0, gt=0, le=120)

    # Tracking links (open pixel, click redirect, unsubscribe) point here
    tracking_base_url: str = "http://127.0.0.1:8002"
    #: Largest audience a campaign may freeze.
    campaign_max_recipients: int = Field(default=200_000, ge=1, le=5_000_000)

    # E-mail over SMTP
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8025, ge=1, le=65_535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_timeout_s: float = Field(default=15.0, gt=0, le=300)
    mail_from: str = "Omni Retail <news@example.jp>"

    # SMS, LINE and app push: one HTTP webhook per channel (a provider's API, or a gateway)
    sms_webhook_url: str | None = None
    line_webhook_url: str | None = None
    app_push_webhook_url: str | None = None
    #: Signs each webhook body (HMAC-SHA256 in ``X-CRM-Signature``) so the receiver can
    #: check it came from here. Empty: unsigned (development only; production refuses it).
    webhook_secret: SecretStr = SecretStr("")

    # Templates: checked and rendered in worker processes (engagement.dispatch.render)
    #: Worker processes per API process (and in the dispatcher).
    template_workers: int = Field(default=2, ge=1, le=32)
    #: Time one template part may take to render; a check of a whole campaign gets
    #: ten times this for all its parts together.
    template_time_limit_s: float = Field(default=1.0, gt=0, le=30)

    # The dispatcher
    #: Messages per second per channel (a provider's rate limit).
    dispatch_rate_per_s: float = Field(default=20.0, gt=0, le=10_000)
    #: Tries per message on temporary errors, with exponential backoff between them.
    dispatch_max_attempts: int = Field(default=4, ge=1, le=20)
    dispatch_backoff_s: float = Field(default=1.0, ge=0, le=600)
    #: How often the dispatcher looks for due campaigns.
    dispatch_poll_s: float = Field(default=2.0, gt=0, le=3600)
    #: Messages sent concurrently per campaign.
    dispatch_concurrency: int = Field(default=8, ge=1, le=256)
    #: Local time zone for quiet hours.
    dispatch_timezone: str = "Asia/Tokyo"
    #: A prepared message older than this without an outcome was abandoned by a crashed
    #: dispatcher and is recorded as failed (outcome unknown); younger ones may still be
    #: in a live dispatcher's hands. Longer than any one send can take.
    dispatch_lease_s: float = Field(default=900.0, ge=60, le=86_400)
    #: How long the dispatcher remembers the ids of the profile events it handled (its
    #: consumer's de-duplication file, pruned hourly). A copy arriving later is applied
    #: again, which the consent view's version order makes harmless; sends never depend
    #: on it (docs/engagement.md, "What the dispatcher keeps"). Kafka's default offset
    #: retention: a dispatcher stopped for longer re-reads the topic from the start.
    dispatch_dedupe_retention_s: float = Field(default=7 * 86_400.0, ge=3_600, le=365 * 86_400)

    @model_validator(mode="after")
    def _lease_outlasts_a_send(self) -> MessagingSettings:
        # every attempt may wait for a timeout, with the backoff between attempts
        longest = self.dispatch_max_attempts * max(self.smtp_timeout_s, 10.0) + self.dispatch_backoff_s * (
            2 ** (self.dispatch_max_attempts - 1) - 1
        )
        if self.dispatch_lease_s <= longest:
            raise ValueError(
                f"dispatch_lease_s must be longer than one send can take ({longest:g} s with these settings)"
            )
        return self

    @model_validator(mode="after")
    def _refuse_dev_key_in_production(self) -> MessagingSettings:
        if self.env == "production" and self.messaging_api_key.get_secret_value() in (
            DEV_MESSAGING_KEY,
            PUBLISHED_MESSAGING_KEY,
        ):
            raise ValueError("production refuses development secrets: set CRM_MESSAGING_API_KEY")
        if (
            self.env == "production"
            and self.contact_signing_key.get_secret_value() == DEV_CONTACT_SIGNING_KEY
        ):
            raise ValueError("production refuses development secrets: set CRM_CONTACT_SIGNING_KEY")
        return self

    @model_validator(mode="after")
    def _refuse_weak_delivery_in_production(self) -> MessagingSettings:
        if self.env != "production":
            return self
        problems = []
        secret = self.webhook_secret.get_secret_value()
        if len(secret) < MIN_WEBHOOK_SECRET_CHARS:
            problems.append(
                f"CRM_WEBHOOK_SECRET must be at least {MIN_WEBHOOK_SECRET_CHARS} characters "
                "(it signs the SMS, LINE and app push webhook bodies; empty sends them unsigned)"
            )
        if self.smtp_username and self.smtp_security == "none":
            problems.append(
                "CRM_SMTP_SECURITY must be starttls or tls when CRM_SMTP_USERNAME is set "
                "(the SMTP login would cross the network in clear text)"
            )
        if problems:
            raise ValueError("production refuses weak settings: " + "; ".join(problems))
        return self

    def webhook_url(self, channel: str) -> str | None:
        return {
            "sms": self.sms_webhook_url,
            "line": self.line_webhook_url,
            "app_push": self.app_push_webhook_url,
        }.get(channel)
