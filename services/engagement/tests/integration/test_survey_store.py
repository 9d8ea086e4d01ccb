"""The surveys store on SQLite and PostgreSQL: a store of its own beside membership's,
so each relay publishes its own application's events only."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm_contracts.envelope import Event
from crm_contracts.registry import decode
from crm_contracts.topics import ENGAGEMENT_FORM, ENGAGEMENT_MEMBERSHIP
from crm_platform.kafka import ensure_topics
from crm_platform.settings import Settings
from crm_platform.testing import read_topic
from engagement.bootstrap import build_membership, build_relay
from engagement.domain.survey import Question
from engagement.survey_bootstrap import build_survey_relay, build_surveys

pytestmark = pytest.mark.integration
T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish_many(self, events: Sequence[Event], *, timeout: float | None = None) -> None:
        self.events += events


def test_surveys_keep_a_store_and_a_relay_of_their_own(store_settings: Settings) -> None:
    surveys = build_surveys(store_settings)
    membership = build_membership(store_settings)
    try:
        membership.enrol("M0001", "store", T0)
        survey = surveys.define_survey("NPS", [Question("recommend", "nps", "?")], False, T0)
        surveys.set_survey_status(survey.id, "open", T0)
        [invitation] = surveys.invite(survey.id, [str(uuid.uuid4())], "customers", T0)
        response, recorded = surveys.answer_invitation(invitation.token, {"recommend": 6}, T0)
        assert recorded and response.answered_version == 1
        assert surveys.edit_survey(survey.id, [Question("recommend", "nps", "?!")], T0).current_version == 2
        # read back from the store: the answer keeps its version, the survey knows it was answered
        assert surveys.survey(survey.id).answered_versions == {1}
        again = surveys.response(invitation.invitation_id)
        assert again is not None and again.answers == {"recommend": 6}

        survey_out, member_out = Collect(), Collect()

        async def relay() -> None:
            await build_survey_relay(surveys, survey_out).relay_available()  # type: ignore[arg-type]
            await build_relay(store_settings, membership, member_out).relay_available()  # type: ignore[arg-type]

        asyncio.run(relay())
        assert [e.event_type for e in survey_out.events] == ["survey.invited", "survey.answered"]
        assert [e.event_type for e in member_out.events] == ["member.enrolled"]
    finally:
        surveys.close()
        membership.close()


def test_the_relay_process_publishes_both_stores(tmp_path: Path, kafka_bootstrap: str) -> None:
    """``python -m engagement relay`` runs membership's relay and the surveys relay."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = Settings(var_dir=tmp_path / "var", kafka_bootstrap=kafka_bootstrap, kafka_topic_prefix=prefix)
    surveys, membership = build_surveys(settings), build_membership(settings)
    try:
        membership.enrol("M0002", "store", T0)
        survey = surveys.define_survey("NPS", [Question("recommend", "nps", "?")], False, T0)
        surveys.invite(survey.id, ["customer-1", "customer-2"], "customers", T0)
    finally:
        surveys.close()
        membership.close()
    env = {
        **os.environ,
        "CRM_VAR_DIR": str(tmp_path / "var"),
        "CRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CRM_KAFKA_TOPIC_PREFIX": prefix,
        "CRM_LOG_LEVEL": "WARNING",
    }
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))  # readers find the topics at once
    relay = subprocess.Popen([sys.executable, "-m", "engagement", "relay"], env=env)
    try:
        forms = asyncio.run(read_topic(kafka_bootstrap, prefix + ENGAGEMENT_FORM.name, 2, timeout=60))
        members = asyncio.run(read_topic(kafka_bootstrap, prefix + ENGAGEMENT_MEMBERSHIP.name, 1, timeout=30))
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(30)
    assert sorted(decode(r.value).customer_key for r in forms) == ["customer-1", "customer-2"]
    assert [decode(r.value).event_type for r in members] == ["member.enrolled"]
    assert code == 0
