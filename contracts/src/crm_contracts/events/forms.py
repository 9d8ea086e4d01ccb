"""Surveys and forms, published by the engagement relay (topic ``crm.engagement.form``).

* ``survey.invited`` — a customer was invited to answer a survey (one per invitation;
  the denominator of the response rate).
* ``survey.answered`` — one response, with every answered question. Scores and chosen
  options travel as they are; **free text never leaves engagement's store**: the event
  says only that a text answer was given and how long it is (``text_length``), because
  free text routinely holds personal data and engagement holds no customer data key to
  seal it with. Anonymous responses (a public link) carry ``customer_key``
  ``anonymous:<response_id>`` and no invitation.
* ``form.submitted`` — a sign-up, membership application or event registration form
  was submitted (a membership application names the member number it was issued, as
  its blind index ``member_key``). Identifiers are blind indexes; the consent the person gave is stated
  with its purpose and the version of the wording they saw. Personal fields (name,
  birthday, address) went to identity only and are not here.
* ``form.registered`` / ``form.registration_changed`` — a place at an event or seminar
  (confirmed or on the waitlist), then its promotion from the waitlist or cancellation.

Every event is keyed by the customer: the customer_id identity answered for a form, the
invited customer's key for a survey.
"""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field

from crm_contracts.envelope import AwareDatetime, ContractModel, Event
from crm_contracts.topics import ENGAGEMENT_FORM

QuestionKind = Literal["nps", "csat", "single_choice", "multiple_choice", "free_text"]
FormKind = Literal["signup", "membership", "event_registration"]
_SLUG = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]{0,31}$")


class SurveyInvitedPayload(ContractModel):
    survey_id: uuid.UUID
    invitation_id: uuid.UUID
    #: where the audience came from: ``segment:<name>`` or ``customers`` (an explicit list)
    audience: str = Field(min_length=1, max_length=64)


class SurveyInvited(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_FORM.name
    event_type: Literal["survey.invited"] = "survey.invited"
    schema_version: Literal[1] = 1
    payload: SurveyInvitedPayload


class QuestionAnswer(ContractModel):
    question_id: str = _SLUG
    kind: QuestionKind
    #: NPS 0–10, CSAT 1–5; None for other kinds
    score: int | None = Field(default=None, ge=0, le=10)
    #: the option(s) chosen (single / multiple choice), as the survey defines them
    choices: tuple[str, ...] = Field(default=(), max_length=20)
    #: free text: its length in characters; the text itself stays in engagement's store
    text_length: int | None = Field(default=None, ge=0, le=10_000)


class SurveyAnsweredPayload(ContractModel):
    survey_id: uuid.UUID
    survey_version: int = Field(ge=1, description="the version of the questions answered")
    response_id: uuid.UUID
    invitation_id: uuid.UUID | None = None
    anonymous: bool = False
    #: how the answer came in: ``invitation`` (a signed per-recipient link) or ``link``
    channel: Literal["invitation", "link"]
    answers: tuple[QuestionAnswer, ...] = Field(max_length=50)


class SurveyAnswered(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_FORM.name
    event_type: Literal["survey.answered"] = "survey.answered"
    schema_version: Literal[1] = 1
    payload: SurveyAnsweredPayload


class ConsentGiven(ContractModel):
    """The consent a submission recorded: per channel (None: not asked), what for, and
    which wording the person agreed to."""

    purpose: str = Field(min_length=1, max_length=64, description="e.g. marketing, event_updates")
    wording_version: str = Field(min_length=1, max_length=32)
    email: bool | None = None
    sms: bool | None = None
    line: bool | None = None
    app_push: bool | None = None
    postal: bool | None = None


class FormSubmittedPayload(ContractModel):
    form_id: uuid.UUID
    form_kind: FormKind
    submission_id: uuid.UUID
    customer_id: uuid.UUID
    #: what identity did with the person: created (a new customer) or linked/matched/merged
    outcome: Literal["created", "linked", "matched", "merged"]
    consent: ConsentGiven
    #: answers to the form's non-personal fields (choices, yes/no, numbers), by field id
    fields: dict[str, str | int | bool | list[str]] = Field(default_factory=dict, max_length=30)
    #: a membership application: the blind index of the member number it was issued
    member_key: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class FormSubmitted(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_FORM.name
    event_type: Literal["form.submitted"] = "form.submitted"
    schema_version: Literal[1] = 1
    payload: FormSubmittedPayload


class FormRegisteredPayload(ContractModel):
    form_id: uuid.UUID
    submission_id: uuid.UUID
    customer_id: uuid.UUID
    status: Literal["confirmed", "waitlisted"]
    capacity: int = Field(ge=1)
    #: 1-based place on the waitlist when waitlisted
    waitlist_position: int | None = Field(default=None, ge=1)
    event_starts_at: AwareDatetime | None = None


class FormRegistered(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_FORM.name
    event_type: Literal["form.registered"] = "form.registered"
    schema_version: Literal[1] = 1
    payload: FormRegisteredPayload


class FormRegistrationChangedPayload(ContractModel):
    form_id: uuid.UUID
    submission_id: uuid.UUID
    customer_id: uuid.UUID
    status: Literal["confirmed", "cancelled"]
    reason: Literal["promoted_from_waitlist", "cancelled"]


class FormRegistrationChanged(Event):
    TOPIC: ClassVar[str] = ENGAGEMENT_FORM.name
    event_type: Literal["form.registration_changed"] = "form.registration_changed"
    schema_version: Literal[1] = 1
    payload: FormRegistrationChangedPayload


__all__ = [
    "ConsentGiven",
    "FormRegistered",
    "FormRegistrationChanged",
    "FormSubmitted",
    "QuestionAnswer",
    "SurveyAnswered",
    "SurveyInvited",
]
