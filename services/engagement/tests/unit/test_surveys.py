"""Survey rules without I/O: question types, versions, one answer per invitation,
NPS/CSAT maths, signed invitation tokens, the public rate limit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from engagement.domain.survey import (
    AlreadyAnswered,
    AnonymousNotAllowed,
    InvalidAnswer,
    InvalidSurvey,
    Question,
    Survey,
    SurveyNotOpen,
    SurveyResponse,
    check_answers,
    csat,
    invitation_id,
    nps,
)
from engagement.surveys import InvalidToken, InvitationSigner, RateLimiter

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
QUESTIONS = [
    Question("recommend", "nps", "How likely are you to recommend us?"),
    Question("satisfaction", "csat", "How satisfied were you?", required=False),
    Question("visit", "single_choice", "Where did you buy?", choices=("store", "online", "app")),
    Question("liked", "multiple_choice", "What did you like?", False, ("price", "staff", "range"), 2),
    Question("comment", "free_text", "Anything else?", required=False, max_length=20),
]


def survey(allow_anonymous: bool = False) -> Survey:
    s = Survey.define(uuid.uuid4(), "After your purchase", QUESTIONS, allow_anonymous, T0)
    s.open(T0)
    return s


@pytest.mark.parametrize(
    ("answers", "question", "reason"),
    [
        ({"visit": "store"}, "recommend", "required"),
        ({"recommend": 11, "visit": "store"}, "recommend", "0 to 10"),
        ({"recommend": -1, "visit": "store"}, "recommend", "0 to 10"),
        ({"recommend": True, "visit": "store"}, "recommend", "0 to 10"),
        ({"recommend": "9", "visit": "store"}, "recommend", "0 to 10"),
        ({"recommend": 9, "satisfaction": 0, "visit": "store"}, "satisfaction", "1 to 5"),
        ({"recommend": 9, "visit": "phone"}, "visit", "options"),
        ({"recommend": 9, "visit": "store", "liked": ["price", "price"]}, "liked", "once"),
        ({"recommend": 9, "visit": "store", "liked": ["price", "staff", "range"]}, "liked", "at most 2"),
        ({"recommend": 9, "visit": "store", "liked": ["parking"]}, "liked", "not an option"),
        ({"recommend": 9, "visit": "store", "comment": "x" * 21}, "comment", "at most 20"),
        ({"recommend": 9, "visit": "store", "colour": "red"}, "colour", "not a question"),
    ],
)
def test_answers_are_checked_against_their_question_type(answers: dict, question: str, reason: str) -> None:
    with pytest.raises(InvalidAnswer) as caught:
        check_answers(QUESTIONS, answers)
    assert caught.value.question == question
    assert reason in caught.value.reason


def test_valid_answers_are_normalised() -> None:
    checked = check_answers(
        QUESTIONS,
        {
            "recommend": 0,
            "visit": "app",
            "liked": ["staff", "price"],
            "comment": "  good  ",
            "satisfaction": None,
        },
    )
    # options in the survey's order, text stripped, an optional question left out
    assert checked == {"recommend": 0, "visit": "app", "liked": ["price", "staff"], "comment": "good"}
    assert check_answers(QUESTIONS, {"recommend": 10, "visit": "store", "comment": "   "}) == {
        "recommend": 10,
        "visit": "store",
    }


@pytest.mark.parametrize(
    ("questions", "field"),
    [
        ([], "questions"),
        ([Question("a", "nps", "q"), Question("a", "csat", "q")], "questions.1.id"),
        ([Question("A b", "nps", "q")], "questions.0.id"),
        ([Question("a", "single_choice", "q", choices=("only",))], "questions.0.choices"),
        ([Question("a", "nps", "q", choices=("x", "y"))], "questions.0.choices"),
        ([Question("a", "free_text", "q", max_length=0)], "questions.0.max_length"),
        ([Question("a", "rating", "q")], "questions.0.kind"),
    ],
)
def test_definitions_are_validated(questions: list[Question], field: str) -> None:
    with pytest.raises(InvalidSurvey) as caught:
        Survey.define(uuid.uuid4(), "t", questions, False, T0)
    assert caught.value.field == field


def test_editing_before_answers_rewrites_the_version_after_answers_makes_a_new_one() -> None:
    s = survey()
    assert s.edit(QUESTIONS[:3], T0) == 1
    assert [q.id for q in s.questions()] == ["recommend", "satisfaction", "visit"]
    first = SurveyResponse.invite(s.id, "customer-1", "customers", T0)
    assert first.answer(s, {"recommend": 9, "visit": "store"}, T0)
    assert first.answered_version == 1
    assert s.edit(QUESTIONS[:1], T0) == 2  # answers exist: a new version
    assert [q.id for q in s.questions(1)] == ["recommend", "satisfaction", "visit"]
    second = SurveyResponse.invite(s.id, "customer-2", "customers", T0)
    with pytest.raises(InvalidAnswer):  # "visit" is not in version 2
        second.answer(s, {"recommend": 9, "visit": "store"}, T0)
    assert second.answer(s, {"recommend": 3}, T0)
    assert (first.answered_version, second.answered_version) == (1, 2)
    assert s.edit(QUESTIONS[:2], T0) == 3


def test_one_answer_per_invitation_a_retry_changes_nothing() -> None:
    s = survey()
    inv = SurveyResponse.invite(s.id, "customer-1", "customers", T0)
    assert inv.id == invitation_id(s.id, "customer-1")  # the same invitation on every run
    assert inv.answer(s, {"recommend": 9, "visit": "store"}, T0) is True
    assert inv.answer(s, {"recommend": 9, "visit": "store"}, T0) is False  # retry
    with pytest.raises(AlreadyAnswered):
        inv.answer(s, {"recommend": 2, "visit": "store"}, T0)
    assert len([e for e in inv.collect_events() if isinstance(e, SurveyResponse.Answered)]) == 1


def test_closed_surveys_and_anonymous_answers() -> None:
    s = survey(allow_anonymous=False)
    anon = SurveyResponse.anonymous(s.id, "browser-1")
    with pytest.raises(AnonymousNotAllowed):
        anon.answer(s, {"recommend": 9, "visit": "store"}, T0)
    open_to_all = survey(allow_anonymous=True)
    assert SurveyResponse.anonymous(open_to_all.id, "b").answer(
        open_to_all, {"recommend": 7, "visit": "app"}, T0
    )
    open_to_all.close(T0)
    with pytest.raises(SurveyNotOpen):
        SurveyResponse.invite(open_to_all.id, "c", "customers", T0).answer(
            open_to_all, {"recommend": 7, "visit": "app"}, T0
        )


def test_nps_is_promoters_minus_detractors() -> None:
    # 5 promoters (9, 10), 3 passives (7, 8), 2 detractors (0–6) of 10: 50 % − 20 % = 30
    assert nps([10, 9, 9, 10, 9, 8, 7, 7, 6, 0]) == 30.0
    assert nps([0, 1, 2]) == -100.0
    assert nps([9, 10]) == 100.0
    assert nps([7, 8]) == 0.0
    assert nps([]) is None


def test_csat_average_share_and_distribution() -> None:
    result = csat([5, 4, 4, 3, 1])
    assert result["average"] == 3.4
    assert result["satisfied_share"] == 0.6
    assert result["distribution"] == {"1": 1, "2": 0, "3": 1, "4": 2, "5": 1}
    assert csat([])["average"] is None


def test_tokens_are_signed_and_tamper_evident() -> None:
    signer = InvitationSigner(b"k" * 32)
    invitation = uuid.uuid4()
    token = signer.sign(invitation)
    assert signer.verify(token) == invitation
    assert invitation.hex in token and len(token) < 100  # the id and a MAC, nothing personal
    version, body, mac = token.split(".")
    other = uuid.uuid4()
    forged = [
        f"{version}.{other.hex}.{mac}",  # another invitation, the first one's MAC
        f"{version}.{body}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        f"v2.{body}.{mac}",
        token + "x",
        "garbage",
        "",
    ]
    for bad in forged:
        with pytest.raises(InvalidToken):
            signer.verify(bad)
    with pytest.raises(InvalidToken):  # another key's token
        InvitationSigner(b"j" * 32).verify(token)


def test_rate_limiter_window() -> None:
    limiter = RateLimiter(per_minute=3)
    assert [limiter.allow("a", now=t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert limiter.allow("b", now=3)  # per key
    assert limiter.allow("a", now=61)  # the first call left the window
