"""Composition root: the one place engagement's parts are wired together, per process."""

from __future__ import annotations

from crm_platform.crypto import BlindIndexer
from crm_platform.settings import Settings
from engagement.membership import Attribution, MembershipApplication

SERVICE = "engagement"


def build_membership(settings: Settings) -> MembershipApplication:
    return MembershipApplication(
        settings.eventsourcing_env(SERVICE), BlindIndexer(settings.blind_index_key_bytes)
    )


def build_attribution(settings: Settings, app: MembershipApplication) -> Attribution:
    return Attribution(app, settings.service_dir(SERVICE) / "attribution.sqlite")
