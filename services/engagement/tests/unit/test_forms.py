"""Form rules without I/O: field validation, consent, capacity and the waitlist."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from engagement.domain.form import (
    ConsentRequest,
    EventFull,
    Form,
    FormField,
    InvalidForm,
    InvalidSubmission,
    check_consent,
    check_submission,
)

T0 = datetime(2026, 11, 20, 10, tzinfo=UTC)
TODAY = T0.date()  # the day the submissions are checked on
FIELDS = [
    FormField("email", "email", "E-mail", required=True),
    FormField("name_kanji", "name_kanji", "お名前"),
    FormField("birthday", "birthday", "Birthday"),
    FormField("store", "choice", "Favourite store", choices=("shibuya", "umeda")),
    FormField("guests", "number", "Guests", minimum=0, maximum=3),
    FormField("newsletter", "boolean", "Newsletter"),
]
CONSENT = ConsentRequest("event_updates", "We may e-mail you about this event.", "2026-11", ("email", "sms"))


def event_form(capacity: int = 2, waitlist: int = 1) -> Form:
    return Form.define(
        uuid.uuid4(), "event_registration", "Autumn styling seminar", FIELDS, CONSENT, T0, capacity, waitlist
    )


def test_submissions_split_personal_fields_from_answers() -> None:
    personal, answers = check_submission(
        FIELDS, {"email": " a@example.jp ", "name_kanji": "山田 花子", "store": "umeda", "guests": 2}, TODAY
    )
    assert personal == {"email": "a@example.jp", "name_kanji": "山田 花子"}
    assert answers == {"store": "umeda", "guests": 2}
    born_today = check_submission(FIELDS, {"email": "a@b.jp", "birthday": TODAY.isoformat()}, TODAY)
    assert born_today[0]["birthday"] == "2026-11-20"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"name_kanji": "x"}, "fields.email"),
        ({"email": ""}, "fields.email"),
        ({"email": "a@b.jp", "store": "tokyo"}, "fields.store"),
        ({"email": "a@b.jp", "guests": 4}, "fields.guests"),
        ({"email": "a@b.jp", "guests": True}, "fields.guests"),
        ({"email": "a@b.jp", "birthday": "2026-11-21"}, "fields.birthday"),  # after TODAY
        ({"email": "a@b.jp", "birthday": "1990-13-01"}, "fields.birthday"),
        ({"email": "a@b.jp", "newsletter": "yes"}, "fields.newsletter"),
        ({"email": "a@b.jp", "age": 30}, "fields.age"),
        ({"email": "a" * 255}, "fields.email"),
    ],
)
def test_invalid_submissions_name_the_field(values: dict, field: str) -> None:
    with pytest.raises(InvalidSubmission) as caught:
        check_submission(FIELDS, values, TODAY)
    assert caught.value.field == field


def test_consent_only_for_the_channels_asked() -> None:
    assert check_consent(CONSENT, {"email": True, "sms": False}) == {"email": True, "sms": False}
    with pytest.raises(InvalidSubmission) as caught:
        check_consent(CONSENT, {"line": True})
    assert caught.value.field == "consent.line"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "signup", "capacity": 10}, "capacity"),
        ({"kind": "event_registration", "capacity": None}, "capacity"),
        ({"fields": [FormField("name_kanji", "name_kanji", "Name")]}, "fields"),
        ({"fields": [FormField("mail", "email", "E-mail")]}, "fields.0.id"),
        ({"consent": ConsentRequest("Marketing!", "w", "1", ("email",))}, "consent.purpose"),
        ({"consent": ConsentRequest("marketing", "w", "1", ("fax",))}, "consent.channels"),
    ],
)
def test_definitions_are_validated(kwargs: dict, field: str) -> None:
    args = {"kind": "event_registration", "fields": FIELDS, "consent": CONSENT, "capacity": 5, **kwargs}
    with pytest.raises(InvalidForm) as caught:
        Form.define(uuid.uuid4(), args["kind"], "t", args["fields"], args["consent"], T0, args["capacity"])
    assert caught.value.field == field


def test_capacity_then_waitlist_then_full_and_a_cancellation_promotes() -> None:
    form = event_form(capacity=2, waitlist=1)
    statuses = [form.register(f"s{i}", f"c{i}", T0 + timedelta(minutes=i)).status for i in range(3)]
    assert statuses == ["confirmed", "confirmed", "waitlisted"]
    assert form.position("c2") == 1
    with pytest.raises(EventFull):
        form.register("s3", "c3", T0)
    # the same person registering again keeps their place (no second place)
    assert form.register("s9", "c0", T0).submission_id == "s0"
    promoted = form.cancel("s1", T0)
    assert promoted is not None and promoted.customer_id == "c2"
    assert sorted(r.customer_id for r in form.confirmed()) == ["c0", "c2"]
    assert form.waiting() == []
    assert form.cancel("s1", T0) is None  # cancelling twice changes nothing
    assert form.register("s3", "c3", T0).status == "waitlisted"  # the waitlist has room again
    events = [type(e).__name__ for e in form.collect_events()]
    assert events.count("Registered") == 4
    assert events.count("RegistrationPromoted") == 1


def test_cancelling_a_waitlisted_place_promotes_nobody() -> None:
    form = event_form(capacity=1, waitlist=2)
    form.register("s0", "c0", T0)
    form.register("s1", "c1", T0 + timedelta(minutes=1))
    form.register("s2", "c2", T0 + timedelta(minutes=2))
    assert form.cancel("s1", T0) is None
    assert form.position("c2") == 1
    assert [r.customer_id for r in form.confirmed()] == ["c0"]


def test_postal_codes_as_people_type_them() -> None:
    fields = [
        FormField("email", "email", "E-mail", required=True),
        FormField("postal_code", "postal_code", "〒"),
    ]
    for typed, kept in (("１２３－４５６７", "123-4567"), ("1234567", "1234567"), ("123ー4567", "123-4567")):
        assert (
            check_submission(fields, {"email": "a@b.jp", "postal_code": typed}, TODAY)[0]["postal_code"]
            == kept
        )
    with pytest.raises(InvalidSubmission) as caught:
        check_submission(fields, {"email": "a@b.jp", "postal_code": "12-345"}, TODAY)
    assert caught.value.field == "fields.postal_code"
