"""The surveys store on SQLite and PostgreSQL: a store of its own beside membership's,
so each relay publishes its own application's events only."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from crm_contracts.envelope import Event
from crm_platform.settings import Settings
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
