"""Survey results and form counts from a known set of events: NPS, CSAT, choices and the
response rate computed right, retries counted once, merges and ranks applied."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import factory as f
import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from analytics.entrypoints.api import create
from analytics.store.clickhouse import connect
from analytics.store.migrations import migrate
from analytics.survey_queries import SurveyQueries
from crm_contracts.envelope import Event, IdentifierKind
from crm_contracts.events.forms import (
    ConsentGiven,
    FormRegistered,
    FormRegisteredPayload,
    FormRegistrationChanged,
    FormRegistrationChangedPayload,
    FormSubmitted,
    FormSubmittedPayload,
    QuestionAnswer,
    SurveyAnswered,
    SurveyAnsweredPayload,
    SurveyInvited,
    SurveyInvitedPayload,
)
from crm_contracts.events.membership import (
    MemberEnrolled,
    MemberEnrolledPayload,
    MemberRankChanged,
    MemberRankChangedPayload,
)
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration
SURVEY = uuid.uuid4()
START, END = date(2026, 11, 1), date(2026, 12, 1)
CUSTOMERS = [uuid.uuid4() for _ in range(10)]
#: (customer index or None for anonymous, version, nps, csat, liked, comment length)
ANSWERS: list[tuple[int | None, int, int, int | None, list[str], int | None]] = [
    (0, 1, 10, 5, ["price", "staff"], 12),
    (1, 1, 9, 4, ["price"], None),
    (2, 1, 9, 4, [], None),
    (3, 1, 10, 3, ["range"], 40),
    (4, 1, 8, 1, [], None),
    (5, 2, 7, None, [], None),
    (6, 2, 6, None, [], None),
    (7, 2, 0, None, [], None),
    (None, 2, 10, None, ["staff"], None),
]


def invited(i: int) -> SurveyInvited:
    return SurveyInvited(
        occurred_at=f.at("2026-11-02"),
        producer="engagement.relay",
        customer_key=str(CUSTOMERS[i]),
        payload=SurveyInvitedPayload(survey_id=SURVEY, invitation_id=uuid.uuid4(), audience="customers"),
    )


def answered(
    who: int | None, version: int, score: int, sat: int | None, liked: list[str], text: int | None, day: str
) -> SurveyAnswered:
    answers = [QuestionAnswer(question_id="recommend", kind="nps", score=score)]
    if sat is not None:
        answers.append(QuestionAnswer(question_id="satisfaction", kind="csat", score=sat))
    if liked:
        answers.append(QuestionAnswer(question_id="liked", kind="multiple_choice", choices=tuple(liked)))
    if text is not None:
        answers.append(QuestionAnswer(question_id="comment", kind="free_text", text_length=text))
    response = uuid.uuid4()
    return SurveyAnswered(
        occurred_at=f.at(day),
        producer="engagement.relay",
        customer_key=str(CUSTOMERS[who]) if who is not None else f"anonymous:{response}",
        payload=SurveyAnsweredPayload(
            survey_id=SURVEY,
            survey_version=version,
            response_id=response,
            invitation_id=uuid.uuid4() if who is not None else None,
            anonymous=who is None,
            channel="invitation" if who is not None else "link",
            answers=tuple(answers),
        ),
    )


def member(i: int, rank: str) -> list[Event]:
    card = f.ident(f"card-{i}", IdentifierKind.MEMBER_NO)
    common = {"producer": "engagement.relay", "customer_key": card.hash, "identifiers": (card,)}
    events: list[Event] = [
        f.profile(CUSTOMERS[i], [card]),
        MemberEnrolled(
            occurred_at=f.at("2026-01-05"),
            payload=MemberEnrolledPayload(member_key=card.hash, channel="store", rank="regular"),
            **common,
        ),
    ]
    if rank != "regular":
        events.append(
            MemberRankChanged(
                occurred_at=f.at("2026-06-01"),
                payload=MemberRankChangedPayload(
                    member_key=card.hash,
                    previous="regular",
                    rank=rank,
                    reason="spend",
                    spend_12m=1,
                    visits_12m=1,
                ),
                **common,
            )
        )
    return events


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var")


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    c = connect(settings)
    migrate(c)
    yield c
    c.close()


def test_survey_results_from_known_answers(client: Client, settings: Settings) -> None:
    events: list[Event] = [invited(i) for i in range(10)]
    events += [answered(*a, day="2026-11-10") for a in ANSWERS]
    events.append(answered(8, 1, 0, None, [], None, day="2026-12-03"))  # after the period
    events += member(0, "gold") + member(2, "silver") + member(3, "regular")
    f.deliver(client, events)
    f.deliver(client, events, offset=10_000)  # every record delivered twice: counted once
    queries = SurveyQueries(client)

    result = queries.survey_results(SURVEY, START, END)
    assert result["invitations"] == 10
    assert (result["responses"], result["invited_responses"], result["anonymous_responses"]) == (9, 8, 1)
    assert result["respondents"] == 8
    assert result["response_rate"] == 0.8
    recommend = result["questions"]["recommend"]
    # scores 10 9 9 10 8 7 6 0 10: 5 promoters, 2 passives, 2 detractors of 9
    assert (recommend["promoters"], recommend["passives"], recommend["detractors"]) == (5, 2, 2)
    assert recommend["nps"] == 33.33
    satisfaction = result["questions"]["satisfaction"]
    assert satisfaction["average"] == 3.4 and satisfaction["satisfied_share"] == 0.6
    assert satisfaction["distribution"] == {"1": 1, "2": 0, "3": 1, "4": 2, "5": 1}
    liked = result["questions"]["liked"]["choices"]
    assert {k: v["count"] for k, v in liked.items()} == {"price": 2, "staff": 2, "range": 1}
    assert liked["price"]["share"] == 0.5  # 2 of the 4 who answered the question
    assert result["questions"]["comment"]["avg_length"] == 26.0

    by_version = {g["group"]: g for g in queries.survey_results(SURVEY, START, END, "version")["groups"]}
    assert by_version["1"]["questions"]["recommend"]["nps"] == 80.0  # 10 9 9 10 8: 4 promoters of 5
    assert by_version["2"]["questions"]["recommend"]["nps"] == -25.0  # 7 6 0 10
    by_channel = {
        g["group"]: g["responses"] for g in queries.survey_results(SURVEY, START, END, "channel")["groups"]
    }
    assert by_channel == {"invitation": 8, "link": 1}

    # customer 1 is merged into customer 0: one respondent fewer, and ranked as the survivor
    t0 = datetime.now(UTC)
    f.deliver(
        client,
        [f.profile(CUSTOMERS[1], [], status="merged", merged_into=CUSTOMERS[0], recorded_at=t0)],
        20_000,
    )
    after = queries.survey_results(SURVEY, START, END, "rank")
    assert after["respondents"] == 7 and after["responses"] == 9
    ranks = {g["group"]: g for g in after["groups"]}
    assert {k: g["responses"] for k, g in ranks.items()} == {
        "gold": 2,
        "silver": 1,
        "regular": 1,
        "non_member": 4,
        "anonymous": 1,
    }
    assert ranks["gold"]["questions"]["recommend"]["nps"] == 100.0
    assert ranks["non_member"]["questions"]["recommend"]["nps"] == -50.0  # 8 7 6 0: 2 detractors of 4

    with TestClient(create(settings, embedded_sink=False)) as api:
        headers = {"X-API-Key": "dev-read-key"}
        r = api.get(
            f"/v1/surveys/{SURVEY}/results",
            params={"start": "2026-11-01", "end": "2026-12-01"},
            headers=headers,
        )
        assert r.status_code == 200 and r.json()["questions"]["recommend"]["nps"] == 33.33
        bad = api.get(
            f"/v1/surveys/{SURVEY}/results",
            params={"start": "2026-12-01", "end": "2026-11-01"},
            headers=headers,
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_period"
        by = api.get(
            f"/v1/surveys/{SURVEY}/results",
            params={"start": "2026-11-01", "end": "2026-12-01", "by": "x"},
            headers=headers,
        )
        assert by.status_code == 422 and by.json()["error"]["fields"][0]["field"] == "query.by"
        assert (
            api.get(
                f"/v1/surveys/{SURVEY}/results", params={"start": "2026-11-01", "end": "2026-12-01"}
            ).status_code
            == 401
        )


def test_form_counts_sign_ups_consent_and_registrations(client: Client, settings: Settings) -> None:
    form = uuid.uuid4()
    people = [uuid.uuid4() for _ in range(3)]
    submissions = [uuid.uuid4() for _ in range(3)]

    def submitted(i: int, outcome: str, email: bool) -> FormSubmitted:
        return FormSubmitted(
            occurred_at=f.at("2026-11-05"),
            producer="engagement.relay",
            customer_key=str(people[i]),
            identifiers=(f.ident(f"p{i}@example.jp"),),
            payload=FormSubmittedPayload(
                form_id=form,
                form_kind="event_registration",
                submission_id=submissions[i],
                customer_id=people[i],
                outcome=outcome,  # type: ignore[arg-type]
                consent=ConsentGiven(purpose="event_updates", wording_version="2026-11", email=email),
            ),
        )

    def registered(i: int, status: str, minute: int) -> FormRegistered:
        return FormRegistered(
            occurred_at=f.at("2026-11-05").replace(minute=minute),
            producer="engagement.relay",
            customer_key=str(people[i]),
            payload=FormRegisteredPayload(
                form_id=form,
                submission_id=submissions[i],
                customer_id=people[i],
                status=status,  # type: ignore[arg-type]
                capacity=2,
                waitlist_position=1 if status == "waitlisted" else None,
            ),
        )

    def changed(i: int, status: str) -> FormRegistrationChanged:
        return FormRegistrationChanged(
            occurred_at=f.at("2026-11-06"),
            producer="engagement.relay",
            customer_key=str(people[i]),
            payload=FormRegistrationChangedPayload(
                form_id=form,
                submission_id=submissions[i],
                customer_id=people[i],
                status=status,  # type: ignore[arg-type]
                reason="cancelled" if status == "cancelled" else "promoted_from_waitlist",
            ),
        )

    events: list[Event] = [
        submitted(0, "created", True),
        submitted(1, "linked", False),
        submitted(2, "created", True),
        registered(0, "confirmed", 1),
        registered(1, "confirmed", 2),
        registered(2, "waitlisted", 3),
        changed(0, "cancelled"),
        changed(2, "confirmed"),
    ]
    f.deliver(client, events)
    f.deliver(client, events, offset=100)
    [row] = SurveyQueries(client).form_results(START, END)
    assert row["form_id"] == str(form)
    assert (row["submissions"], row["new_customers"], row["existing_customers"]) == (3, 2, 1)
    assert row["consent"] == {"email": {"asked": 3, "granted": 2, "opt_in_rate": 0.6667}}
    assert row["wording_versions"] == ["2026-11"]
    assert row["registrations"] == {
        "capacity": 2,
        "confirmed": 2,
        "waitlisted": 0,
        "cancelled": 1,
        "fill_rate": 1.0,
    }
    assert SurveyQueries(client).form_results(date(2026, 12, 1), date(2027, 1, 1)) == []


def test_survey_events_on_kafka_reach_the_results_through_the_sink(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The embedded sink validates the survey contracts and feeds the 0007 tables."""
    from crm_platform.kafka import EventProducer, ensure_topics

    prefix = f"t{uuid.uuid4().hex[:8]}."
    asyncio.run(ensure_topics(kafka_bootstrap, prefix=prefix))
    settings = Settings(var_dir=tmp_path / "var", kafka_bootstrap=kafka_bootstrap, kafka_topic_prefix=prefix)
    events: list[Event] = [invited(i) for i in range(4)]
    events += [answered(*a, day="2026-11-10") for a in ANSWERS[:3]]

    async def produce() -> None:
        async with EventProducer(kafka_bootstrap, client_id="t", topic_prefix=prefix) as producer:
            await producer.publish_many(events)
            await producer.publish_many(events[-1:])  # a retry

    params = {"start": "2026-11-01", "end": "2026-12-01"}
    with TestClient(create(settings)) as api:
        asyncio.run(produce())
        deadline = time.monotonic() + 30
        while True:
            result = api.get(
                f"/v1/surveys/{SURVEY}/results", params=params, headers={"X-API-Key": "dev-read-key"}
            )
            assert result.status_code == 200, result.text
            if result.json()["responses"] == 3 and result.json()["invitations"] == 4:
                break
            assert time.monotonic() < deadline, result.json()
            time.sleep(0.2)
    body = result.json()
    assert body["response_rate"] == 0.75
    assert body["questions"]["recommend"]["nps"] == 100.0  # 10, 9, 9
    assert body["questions"]["satisfaction"]["distribution"] == {"1": 0, "2": 0, "3": 0, "4": 2, "5": 1}
