"""What the resolver does with ``crm.engagement.form``: form submissions link their
identifiers (channel ``form``); survey answers and registrations carry none and are
skipped; an event type this build does not know is reported (dead-lettered) unless its
identifiers are all known, when the fast path counts the sighting without decoding."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from crm_contracts.envelope import Identifier, IdentifierKind
from crm_contracts.events.forms import (
    ConsentGiven,
    FormRegistered,
    FormRegisteredPayload,
    FormSubmitted,
    FormSubmittedPayload,
    QuestionAnswer,
    SurveyAnswered,
    SurveyAnsweredPayload,
)
from crm_contracts.registry import encode
from identity.application import Ident, Resolution
from identity.resolver.core import ResolverCore

T0 = datetime(2026, 11, 20, 1, tzinfo=UTC)
EMAIL = Identifier(kind=IdentifierKind.EMAIL, hash="3" * 64)
PHONE = Identifier(kind=IdentifierKind.PHONE, hash="4" * 64)


class FakeIdentity:
    def __init__(self) -> None:
        self.calls: list[tuple[list[Ident], str]] = []
        self.customer = uuid.uuid4()

    def observe(
        self, idents: Sequence[Ident], channel: str = "store", source: str | None = None
    ) -> Resolution:
        self.calls.append((list(idents), channel))
        return Resolution(self.customer, "created", linked=tuple(idents))


def submitted(customer: uuid.UUID, *identifiers: Identifier) -> FormSubmitted:
    return FormSubmitted(
        occurred_at=T0,
        producer="engagement.relay",
        customer_key=str(customer),
        identifiers=identifiers,
        payload=FormSubmittedPayload(
            form_id=uuid.uuid4(),
            form_kind="signup",
            submission_id=uuid.uuid4(),
            customer_id=customer,
            outcome="created",
            consent=ConsentGiven(purpose="marketing", wording_version="v1", email=True),
        ),
    )


def test_form_submissions_link_their_identifiers_on_the_form_channel() -> None:
    fake = FakeIdentity()
    core = ResolverCore(fake, {}, {})
    first = core.handle_raw(encode(submitted(fake.customer, EMAIL, PHONE)))
    assert first.path == "decided"
    assert fake.calls == [([Ident("email", EMAIL.hash), Ident("phone", PHONE.hash)], "form")]
    assert core.identifiers[f"email:{EMAIL.hash}"] == str(fake.customer)
    again = core.handle_raw(encode(submitted(fake.customer, EMAIL)))
    assert again.path == "fast" and again.customer_id == str(fake.customer)
    assert "form" in core.snapshot(str(fake.customer)).payload.channels
    assert len(fake.calls) == 1


def test_survey_answers_and_registrations_carry_no_identifiers_and_are_skipped() -> None:
    core = ResolverCore(FakeIdentity(), {}, {})
    customer = uuid.uuid4()
    answered = SurveyAnswered(
        occurred_at=T0,
        producer="engagement.relay",
        customer_key=str(customer),
        payload=SurveyAnsweredPayload(
            survey_id=uuid.uuid4(),
            survey_version=1,
            response_id=uuid.uuid4(),
            invitation_id=uuid.uuid4(),
            channel="invitation",
            answers=(QuestionAnswer(question_id="recommend", kind="nps", score=9),),
        ),
    )
    registered = FormRegistered(
        occurred_at=T0,
        producer="engagement.relay",
        customer_key=str(customer),
        payload=FormRegisteredPayload(
            form_id=uuid.uuid4(),
            submission_id=uuid.uuid4(),
            customer_id=customer,
            status="confirmed",
            capacity=10,
        ),
    )
    outcomes = [core.handle_raw(encode(e)) for e in (answered, registered)]
    assert [o.path for o in outcomes] == ["skipped", "skipped"]
    assert core.stats["invalid"] == 0


def test_an_unknown_event_type_is_reported_unless_its_identifiers_are_known() -> None:
    fake = FakeIdentity()
    core = ResolverCore(fake, {}, {})
    future = orjson.loads(encode(submitted(fake.customer, EMAIL)))
    future["event_type"] = "form.reviewed"  # a type a newer producer might send
    unknown = core.handle_raw(orjson.dumps(future))
    assert unknown.path == "invalid" and "unknown event form.reviewed" in (unknown.error or "")
    core.handle_raw(encode(submitted(fake.customer, EMAIL)))  # the e-mail becomes known
    known = core.handle_raw(orjson.dumps(future))
    assert known.path == "fast" and known.customer_id == str(fake.customer)
