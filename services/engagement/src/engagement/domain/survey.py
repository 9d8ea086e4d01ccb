"""Surveys (アンケート): typed questions, versions, invitations and answers. Pure domain.

Two aggregates:

* ``Survey`` — the definition: title, typed questions, whether anonymous answers by a
  public link are allowed, and its state (draft → open → closed). Editing the questions
  before anyone answered rewrites the current version; after answers exist it makes a
  new version, and every answer keeps the version it answered (the survey learns that a
  version has answers through ``answers_started``, once per version).
* ``SurveyResponse`` — one per invitation (its id derives from the survey and the
  customer, so inviting someone twice is the same invitation) or per anonymous answer.
  It holds at most one answer: a second, different answer to the same invitation is
  refused (``AlreadyAnswered``, HTTP 409); the identical answer again is a retry and
  changes nothing.

Question kinds: NPS (0–10), CSAT (1–5), single choice, multiple choice and free text
(bounded length); each required or optional. :func:`check_answers` validates a response
and names the question at fault. :func:`nps` and :func:`csat` are the aggregation maths
analytics documents too.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

from eventsourcing.domain import Aggregate, event

SURVEY_NAMESPACE = uuid.UUID("0b7d6c1e-4a52-4c0e-9a8e-2f7c3e1d5b90")
KINDS = ("nps", "csat", "single_choice", "multiple_choice", "free_text")
MAX_QUESTIONS = 50
MAX_CHOICES = 20
MAX_TEXT = 2000
_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class SurveyError(Exception):
    """A request the survey's rules refuse (HTTP 422 unless a subclass says otherwise)."""


class InvalidSurvey(SurveyError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidAnswer(SurveyError):
    """An answer that does not fit its question; ``question`` names it."""

    def __init__(self, question: str, reason: str) -> None:
        super().__init__(f"answers.{question}: {reason}")
        self.question = question
        self.reason = reason


class SurveyNotOpen(SurveyError):
    pass


class AnonymousNotAllowed(SurveyError):
    pass


class AlreadyAnswered(SurveyError):
    pass


@dataclass(frozen=True)
class Question:
    id: str
    kind: str
    text: str
    required: bool = True
    choices: tuple[str, ...] = ()
    #: multiple choice: at most this many options (default: all)
    max_choices: int | None = None
    #: free text: at most this many characters
    max_length: int = 500

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["choices"] = list(self.choices)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Question:
        return cls(
            id=data["id"],
            kind=data["kind"],
            text=data["text"],
            required=bool(data.get("required", True)),
            choices=tuple(data.get("choices") or ()),
            max_choices=data.get("max_choices"),
            max_length=int(data.get("max_length", 500)),
        )


def validate_questions(questions: Sequence[Question]) -> None:
    """A definition is usable: 1–50 questions with unique slug ids, 2–20 distinct options
    for choice questions (none for the others), sensible bounds."""
    if not 1 <= len(questions) <= MAX_QUESTIONS:
        raise InvalidSurvey("questions", f"a survey has 1 to {MAX_QUESTIONS} questions")
    seen: set[str] = set()
    for i, q in enumerate(questions):
        where = f"questions.{i}"
        if not _SLUG.match(q.id):
            raise InvalidSurvey(
                f"{where}.id", "lower-case letters, digits and _ (1–32), starting with a letter"
            )
        if q.id in seen:
            raise InvalidSurvey(f"{where}.id", f"{q.id!r} is used twice")
        seen.add(q.id)
        if q.kind not in KINDS:
            raise InvalidSurvey(f"{where}.kind", f"one of {', '.join(KINDS)}")
        if not q.text.strip() or len(q.text) > 500:
            raise InvalidSurvey(f"{where}.text", "1 to 500 characters")
        if q.kind in ("single_choice", "multiple_choice"):
            if not 2 <= len(q.choices) <= MAX_CHOICES:
                raise InvalidSurvey(f"{where}.choices", f"a choice question has 2 to {MAX_CHOICES} options")
            if len(set(q.choices)) != len(q.choices) or any(not c.strip() or len(c) > 100 for c in q.choices):
                raise InvalidSurvey(f"{where}.choices", "options are distinct, 1 to 100 characters")
        elif q.choices:
            raise InvalidSurvey(f"{where}.choices", f"a {q.kind} question has no options")
        if q.max_choices is not None and (
            q.kind != "multiple_choice" or not 1 <= q.max_choices <= len(q.choices)
        ):
            raise InvalidSurvey(
                f"{where}.max_choices", "only for multiple choice, 1 to the number of options"
            )
        if q.kind == "free_text" and not 1 <= q.max_length <= MAX_TEXT:
            raise InvalidSurvey(f"{where}.max_length", f"1 to {MAX_TEXT} characters")


def check_answers(questions: Sequence[Question], answers: Mapping[str, Any]) -> dict[str, Any]:
    """The answers, normalised (text stripped, options in the survey's order), or
    :class:`InvalidAnswer` naming the first question at fault. An empty text or an
    empty selection counts as not answered."""
    by_id = {q.id: q for q in questions}
    for qid in answers:
        if qid not in by_id:
            raise InvalidAnswer(str(qid)[:64], "not a question of this survey (version)")
    out: dict[str, Any] = {}
    for q in questions:
        value = answers.get(q.id)
        if isinstance(value, str) and q.kind == "free_text":
            value = value.strip() or None
        if isinstance(value, list) and not value:
            value = None
        if value is None:
            if q.required:
                raise InvalidAnswer(q.id, "required")
            continue
        out[q.id] = _check_one(q, value)
    return out


def _check_one(q: Question, value: Any) -> Any:
    if q.kind in ("nps", "csat"):
        low, high = (0, 10) if q.kind == "nps" else (1, 5)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidAnswer(q.id, f"{q.kind.upper()} is a whole number from {low} to {high}")
        return value
    if q.kind == "single_choice":
        if not isinstance(value, str) or value not in q.choices:
            raise InvalidAnswer(q.id, "one of the question's options")
        return value
    if q.kind == "multiple_choice":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidAnswer(q.id, "a list of the question's options")
        unknown = [v for v in value if v not in q.choices]
        if unknown:
            raise InvalidAnswer(q.id, f"{unknown[0][:100]!r} is not an option")
        if len(set(value)) != len(value):
            raise InvalidAnswer(q.id, "an option is chosen once")
        limit = q.max_choices or len(q.choices)
        if len(value) > limit:
            raise InvalidAnswer(q.id, f"at most {limit} options")
        return [c for c in q.choices if c in value]
    # free text
    if not isinstance(value, str):
        raise InvalidAnswer(q.id, "text")
    if len(value) > q.max_length:
        raise InvalidAnswer(q.id, f"at most {q.max_length} characters")
    return value


# -- aggregation maths ---------------------------------------------------------------------


def nps(scores: Iterable[int]) -> float | None:
    """Net Promoter Score: % promoters (9–10) − % detractors (0–6), −100…100; None
    without answers."""
    values = list(scores)
    if not values:
        return None
    promoters = sum(1 for s in values if s >= 9)
    detractors = sum(1 for s in values if s <= 6)
    return round(100.0 * (promoters - detractors) / len(values), 2)


def csat(scores: Iterable[int]) -> dict[str, Any]:
    """CSAT: the average (1–5), the share satisfied (4 or 5) and the distribution."""
    values = list(scores)
    distribution = {str(k): sum(1 for s in values if s == k) for k in range(1, 6)}
    if not values:
        return {"responses": 0, "average": None, "satisfied_share": None, "distribution": distribution}
    return {
        "responses": len(values),
        "average": round(sum(values) / len(values), 4),
        "satisfied_share": round(sum(1 for s in values if s >= 4) / len(values), 4),
        "distribution": distribution,
    }


# -- aggregates ----------------------------------------------------------------------------


class TextSealer(Protocol):
    """Seals a response's free text before it is recorded (the application's data keys;
    the domain only sees opaque sealed values)."""

    def seal(self, question_id: str, text: str) -> dict[str, str]: ...

    def opens_to(self, question_id: str, sealed: Mapping[str, str], text: str) -> bool:
        """Whether ``sealed`` holds ``text`` (False once the text was erased)."""
        ...


def invitation_id(survey_id: uuid.UUID, customer_key: str) -> uuid.UUID:
    """The invitation of ``customer_key`` to a survey: the same on every invitation run."""
    return uuid.uuid5(SURVEY_NAMESPACE, f"invitation:{survey_id}:{customer_key}")


def anonymous_response_id(survey_id: uuid.UUID, client_key: str) -> uuid.UUID:
    return uuid.uuid5(SURVEY_NAMESPACE, f"anonymous:{survey_id}:{client_key}")


class Survey(Aggregate):
    class Created(Aggregate.Created):
        title: str
        questions: list[dict[str, Any]]
        allow_anonymous: bool
        created_at: datetime

    @event(Created)
    def __init__(
        self, title: str, questions: list[dict[str, Any]], allow_anonymous: bool, created_at: datetime
    ) -> None:
        self.title = title
        self.allow_anonymous = allow_anonymous
        self.created_at = created_at
        self.status = "draft"
        self.current_version = 1
        self.versions: dict[int, list[dict[str, Any]]] = {1: questions}
        self.answered_versions: set[int] = set()

    @classmethod
    def define(
        cls,
        survey_id: uuid.UUID,
        title: str,
        questions: Sequence[Question],
        allow_anonymous: bool,
        at: datetime,
    ) -> Survey:
        if not title.strip() or len(title) > 200:
            raise InvalidSurvey("title", "1 to 200 characters")
        validate_questions(questions)
        return cls._create(
            cls.Created,
            id=survey_id,
            title=title,
            questions=[q.as_dict() for q in questions],
            allow_anonymous=allow_anonymous,
            created_at=at,
        )

    def questions(self, version: int | None = None) -> list[Question]:
        return [Question.from_dict(q) for q in self.versions[version or self.current_version]]

    class QuestionsEdited(Aggregate.Event):
        version: int
        questions: list[dict[str, Any]]
        at: datetime

    def edit(self, questions: Sequence[Question], at: datetime) -> int:
        """New questions: the current version rewritten while nobody has answered it,
        else a new version (answers keep theirs). Returns the version now current."""
        if self.status == "closed":
            raise SurveyNotOpen("a closed survey cannot be edited")
        validate_questions(questions)
        version = (
            self.current_version + 1
            if self.current_version in self.answered_versions
            else self.current_version
        )
        self._edited(version=version, questions=[q.as_dict() for q in questions], at=at)
        return version

    @event(QuestionsEdited)
    def _edited(self, version: int, questions: list[dict[str, Any]], at: datetime) -> None:
        self.current_version = version
        self.versions[version] = questions

    class Opened(Aggregate.Event):
        at: datetime

    def open(self, at: datetime) -> None:
        if self.status == "closed":
            raise SurveyNotOpen("a closed survey stays closed")
        if self.status != "open":
            self._opened(at=at)

    @event(Opened)
    def _opened(self, at: datetime) -> None:
        self.status = "open"

    class Closed(Aggregate.Event):
        at: datetime

    def close(self, at: datetime) -> None:
        if self.status != "closed":
            self._closed(at=at)

    @event(Closed)
    def _closed(self, at: datetime) -> None:
        self.status = "closed"

    class AnswersStarted(Aggregate.Event):
        version: int

    def note_answered(self, version: int) -> None:
        """Remember that ``version`` has answers (once): editing it now makes a new one."""
        if version not in self.answered_versions:
            self._answers_started(version=version)

    @event(AnswersStarted)
    def _answers_started(self, version: int) -> None:
        self.answered_versions.add(version)

    def accepting(self) -> None:
        if self.status != "open":
            raise SurveyNotOpen(f"the survey is {self.status}, not open")


class SurveyResponse(Aggregate):
    """An invitation (with at most one answer), or an anonymous answer."""

    class Started(Aggregate.Created):
        survey_id: uuid.UUID
        #: None for an anonymous answer (a public link)
        customer_key: str | None
        #: ``segment:<name>``, ``customers`` or ``link`` (anonymous)
        audience: str
        invited_at: datetime | None

    @event(Started)
    def __init__(
        self, survey_id: uuid.UUID, customer_key: str | None, audience: str, invited_at: datetime | None
    ) -> None:
        self.survey_id = survey_id
        self.customer_key = customer_key
        self.audience = audience
        self.invited_at = invited_at
        self.answered_at: datetime | None = None
        self.answered_version: int | None = None
        self.answers: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}

    @classmethod
    def invite(cls, survey_id: uuid.UUID, customer_key: str, audience: str, at: datetime) -> SurveyResponse:
        if not 1 <= len(customer_key) <= 128 or customer_key.startswith("anonymous:"):
            raise InvalidSurvey("customer_ids", f"{customer_key[:40]!r} is not a customer key")
        return cls._create(
            cls.Started,
            id=invitation_id(survey_id, customer_key),
            survey_id=survey_id,
            customer_key=customer_key,
            audience=audience,
            invited_at=at,
        )

    @classmethod
    def anonymous(cls, survey_id: uuid.UUID, client_key: str) -> SurveyResponse:
        return cls._create(
            cls.Started,
            id=anonymous_response_id(survey_id, client_key),
            survey_id=survey_id,
            customer_key=None,
            audience="link",
            invited_at=None,
        )

    class Answered(Aggregate.Event):
        survey_id: uuid.UUID
        version: int
        #: question id -> {"kind", "value"}: the kind travels with the answer, so the
        #: relay translates without reading the survey
        answers: dict[str, dict[str, Any]]
        customer_key: str | None
        channel: str
        at: datetime

    def answer(
        self, survey: Survey, answers: Mapping[str, Any], at: datetime, sealer: TextSealer | None = None
    ) -> bool:
        """Record the answer (True), or recognise a retry of the same answer (False);
        a different second answer raises :class:`AlreadyAnswered`.

        With a ``sealer`` (the application always gives one) free text is recorded sealed,
        with its length beside it: ``{"kind": "free_text", "value": <sealed>, "length": n}``.
        A retry is recognised by opening the sealed text; once erased it cannot be, and
        the invitation counts as answered with other answers."""
        questions = survey.questions()
        checked = check_answers(questions, answers)
        if self.answered_at is not None:
            if self.answered_version == survey.current_version and self._same(checked, sealer):
                return False
            raise AlreadyAnswered("this invitation has been answered already")
        survey.accepting()
        if self.customer_key is None and not survey.allow_anonymous:
            raise AnonymousNotAllowed("this survey is answered by invitation only")
        kinds = {q.id: q.kind for q in questions}
        recorded: dict[str, dict[str, Any]] = {}
        for qid, value in checked.items():
            if kinds[qid] == "free_text" and sealer is not None:
                recorded[qid] = {"kind": "free_text", "value": sealer.seal(qid, value), "length": len(value)}
            else:
                recorded[qid] = {"kind": kinds[qid], "value": value}
        self._answered(
            survey_id=survey.id,
            version=survey.current_version,
            answers=recorded,
            customer_key=self.customer_key,
            channel="invitation" if self.customer_key is not None else "link",
            at=at,
        )
        survey.note_answered(survey.current_version)
        return True

    def _same(self, checked: Mapping[str, Any], sealer: TextSealer | None) -> bool:
        if set(checked) != set(self.answers):
            return False
        for qid, value in checked.items():
            stored = self.answers[qid]
            if isinstance(stored, dict) and isinstance(value, str):  # sealed free text
                if sealer is None or not sealer.opens_to(qid, stored, value):
                    return False
            elif stored != value:
                return False
        return True

    @event(Answered)
    def _answered(
        self,
        survey_id: uuid.UUID,
        version: int,
        answers: dict[str, dict[str, Any]],
        customer_key: str | None,
        channel: str,
        at: datetime,
    ) -> None:
        self.answered_version = version
        self.answers = {qid: a["value"] for qid, a in answers.items()}
        self.kinds = {qid: a["kind"] for qid, a in answers.items()}
        self.answered_at = at
