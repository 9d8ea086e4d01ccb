"""Stored survey and form events → published contract events (``crm.engagement.form``).

Event ids derive from the store position (relay retries are recognised downstream). The
stored events carry what their contract needs (the customer key, the question kinds),
so translating reads nothing from the store. Survey definitions (created, edited,
opened, closed) are not published: analytics needs answers and invitations only.
Free text is published as its length alone (see ``crm_contracts.events.forms``); in the
store it is sealed (``engagement.surveys``), so the length travels beside it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from crm_contracts.envelope import Event, Identifier, IdentifierKind, deterministic_event_id
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
from crm_platform.relay import StoredFact
from engagement.domain.form import Form, FormSubmission
from engagement.domain.survey import SurveyResponse

PRODUCER = "engagement.relay"


def _answer(question_id: str, kind: str, value: Any, length: int | None = None) -> QuestionAnswer:
    if kind in ("nps", "csat"):
        return QuestionAnswer(question_id=question_id, kind=kind, score=int(value))
    if kind == "single_choice":
        return QuestionAnswer(question_id=question_id, kind=kind, choices=(str(value),))
    if kind == "multiple_choice":
        return QuestionAnswer(question_id=question_id, kind=kind, choices=tuple(value))
    # Sealed text records its length beside it; answers stored before sealing hold the text.
    return QuestionAnswer(
        question_id=question_id, kind="free_text", text_length=length if length is not None else len(value)
    )


class SurveyTranslator:
    def __call__(self, fact: StoredFact) -> Sequence[Event]:
        event: Any = fact.domain_event
        common: dict[str, Any] = {
            "event_id": deterministic_event_id(event.timestamp, fact.source, fact.notification_id),
            "recorded_at": event.timestamp,
            "producer": PRODUCER,
            "trace": fact.trace,
        }
        if isinstance(event, SurveyResponse.Started):
            if event.customer_key is None or event.invited_at is None:
                return []  # an anonymous response begins: its answer is the fact
            payload = SurveyInvitedPayload(
                survey_id=event.survey_id, invitation_id=event.originator_id, audience=event.audience[:64]
            )
            return [
                SurveyInvited(
                    **common, occurred_at=event.invited_at, customer_key=event.customer_key, payload=payload
                )
            ]
        if isinstance(event, SurveyResponse.Answered):
            invited = event.customer_key is not None
            answered = SurveyAnsweredPayload(
                survey_id=event.survey_id,
                survey_version=event.version,
                response_id=event.originator_id,
                invitation_id=event.originator_id if invited else None,
                anonymous=not invited,
                channel="invitation" if invited else "link",
                answers=tuple(
                    _answer(qid, a["kind"], a["value"], a.get("length")) for qid, a in event.answers.items()
                ),
            )
            key = event.customer_key if invited else f"anonymous:{event.originator_id}"
            return [SurveyAnswered(**common, occurred_at=event.at, customer_key=key, payload=answered)]
        if isinstance(event, FormSubmission.Submitted):
            channels = event.consent["channels"]
            submitted = FormSubmittedPayload(
                form_id=event.form_id,
                form_kind=event.form_kind,
                submission_id=event.originator_id,
                customer_id=uuid.UUID(event.customer_id),
                outcome=event.outcome,
                consent=ConsentGiven(
                    purpose=event.consent["purpose"],
                    wording_version=event.consent["wording_version"],
                    **{c: channels[c] for c in channels},
                ),
                fields=event.answers,
                member_key=getattr(event, "member_no_hash", None),
            )
            identifiers = tuple(Identifier(kind=IdentifierKind(k), hash=h) for k, h in event.identifiers)
            return [
                FormSubmitted(
                    **common,
                    occurred_at=event.submitted_at,
                    customer_key=event.customer_id,
                    identifiers=identifiers,
                    payload=submitted,
                )
            ]
        if isinstance(event, Form.Registered):
            registered = FormRegisteredPayload(
                form_id=event.originator_id,
                submission_id=uuid.UUID(event.submission_id),
                customer_id=uuid.UUID(event.customer_id),
                status=event.status,
                capacity=event.capacity,
                waitlist_position=event.waitlist_position,
                event_starts_at=event.event_starts_at,
            )
            return [
                FormRegistered(
                    **common, occurred_at=event.at, customer_key=event.customer_id, payload=registered
                )
            ]
        if isinstance(event, Form.RegistrationCancelled | Form.RegistrationPromoted):
            promoted = isinstance(event, Form.RegistrationPromoted)
            changed = FormRegistrationChangedPayload(
                form_id=event.originator_id,
                submission_id=uuid.UUID(event.submission_id),
                customer_id=uuid.UUID(event.customer_id),
                status="confirmed" if promoted else "cancelled",
                reason="promoted_from_waitlist" if promoted else "cancelled",
            )
            return [
                FormRegistrationChanged(
                    **common, occurred_at=event.at, customer_key=event.customer_id, payload=changed
                )
            ]
        return []
