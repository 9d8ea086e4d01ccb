"""Forms (申し込みフォーム): sign-up, membership application, event/seminar registration.

* ``Form`` — the definition: kind, typed fields, the consent it asks for (purpose, the
  wording and its version, the channels), and for an event its capacity, waitlist and
  start. It also holds the event's registrations, so "no more confirmed places than
  capacity" is one aggregate's invariant: a registration beyond capacity goes to the
  waitlist (in order), beyond the waitlist it is refused (``EventFull``); a cancellation
  promotes the first on the waitlist.
* ``FormSubmission`` — one submission, its id derived from the form and the client's
  submission key, so a retried request finds the first one instead of submitting twice.
  It keeps what identity answered (the customer and the outcome), the identifiers as
  blind indexes, the consent given (purpose, wording version, per channel) and the
  answers to non-personal fields. Personal fields (name, birthday, address, the clear
  e-mail and phone) are sent to identity and never stored here.

Field kinds: personal ones that identity keeps (``email``, ``phone``, ``member_no``,
``name_kanji``, ``name_kana``, ``birthday``, ``gender``, ``prefecture``,
``postal_code``, ``address``; the field's id is its kind) and non-personal ones kept
with the submission (``choice``, ``multi_choice``, ``boolean``, ``number``). A form
without a free-text field is deliberate: free text would carry personal data outside
identity.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

FORM_NAMESPACE = uuid.UUID("9a3f1c55-7d2e-4b8a-8c61-5e0f2a7b9d14")
FORM_KINDS = ("signup", "membership", "event_registration")
PERSONAL_KINDS = (
    "email",
    "phone",
    "member_no",
    "name_kanji",
    "name_kana",
    "birthday",
    "gender",
    "prefecture",
    "postal_code",
    "address",
)
IDENTIFIER_KINDS = ("email", "phone", "member_no")
CUSTOM_KINDS = ("choice", "multi_choice", "boolean", "number")
CONSENT_CHANNELS = ("email", "sms", "line", "app_push", "postal")
MAX_FIELDS = 30
_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_POSTAL = re.compile(r"^\d{3}-?\d{4}$")
_TEXT_LIMITS = {
    "email": 254,
    "phone": 32,
    "member_no": 64,
    "name_kanji": 100,
    "name_kana": 100,
    "prefecture": 8,
    "address": 300,
}
_GENDERS = ("female", "male", "other", "unknown")


class FormError(Exception):
    """A request the form's rules refuse (HTTP 422 unless a subclass says otherwise)."""


class InvalidForm(FormError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class InvalidSubmission(FormError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class FormClosed(FormError):
    pass


class EventFull(FormError):
    pass


class RegistrationNotFound(FormError):
    pass


@dataclass(frozen=True)
class FormField:
    id: str
    kind: str
    label: str
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["choices"] = list(self.choices)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FormField:
        return cls(
            id=data["id"],
            kind=data["kind"],
            label=data["label"],
            required=bool(data.get("required", False)),
            choices=tuple(data.get("choices") or ()),
            minimum=data.get("minimum"),
            maximum=data.get("maximum"),
        )


@dataclass(frozen=True)
class ConsentRequest:
    """What the form asks the person to agree to, in the words they read."""

    purpose: str
    wording: str
    wording_version: str
    channels: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels)}


def validate_definition(
    kind: str,
    fields: Sequence[FormField],
    consent: ConsentRequest,
    capacity: int | None,
    waitlist: int,
) -> None:
    if kind not in FORM_KINDS:
        raise InvalidForm("kind", f"one of {', '.join(FORM_KINDS)}")
    if not 1 <= len(fields) <= MAX_FIELDS:
        raise InvalidForm("fields", f"a form has 1 to {MAX_FIELDS} fields")
    seen: set[str] = set()
    for i, f in enumerate(fields):
        where = f"fields.{i}"
        if not _SLUG.match(f.id) or f.id in seen:
            raise InvalidForm(f"{where}.id", "a distinct slug (lower-case letters, digits, _)")
        seen.add(f.id)
        if f.kind in PERSONAL_KINDS:
            if f.id != f.kind:
                raise InvalidForm(f"{where}.id", f"a {f.kind} field is called {f.kind!r}")
        elif f.kind not in CUSTOM_KINDS:
            raise InvalidForm(f"{where}.kind", f"one of {', '.join(PERSONAL_KINDS + CUSTOM_KINDS)}")
        if not f.label.strip() or len(f.label) > 200:
            raise InvalidForm(f"{where}.label", "1 to 200 characters")
        if f.kind in ("choice", "multi_choice"):
            if not 2 <= len(f.choices) <= 20 or len(set(f.choices)) != len(f.choices):
                raise InvalidForm(f"{where}.choices", "2 to 20 distinct options")
            if any(not c.strip() or len(c) > 100 for c in f.choices):
                raise InvalidForm(f"{where}.choices", "options are 1 to 100 characters")
        elif f.choices:
            raise InvalidForm(f"{where}.choices", f"a {f.kind} field has no options")
        if (f.minimum is not None or f.maximum is not None) and f.kind != "number":
            raise InvalidForm(f"{where}.minimum", "bounds are for number fields")
    if kind == "membership" and "member_no" in seen:
        raise InvalidForm("fields", "a membership application issues the member number: no member_no field")
    if not seen & {"email", "phone", "member_no"}:
        raise InvalidForm("fields", "a form asks for an e-mail, a phone or a member number to know who it is")
    if not _SLUG.match(consent.purpose):
        raise InvalidForm("consent.purpose", "a slug such as marketing or event_updates")
    if not consent.wording.strip() or len(consent.wording) > 2000:
        raise InvalidForm("consent.wording", "1 to 2000 characters")
    if not 1 <= len(consent.wording_version) <= 32:
        raise InvalidForm("consent.wording_version", "1 to 32 characters")
    if len(set(consent.channels)) != len(consent.channels) or any(
        c not in CONSENT_CHANNELS for c in consent.channels
    ):
        raise InvalidForm("consent.channels", f"distinct channels of {', '.join(CONSENT_CHANNELS)}")
    if kind == "event_registration":
        if capacity is None or not 1 <= capacity <= 100_000:
            raise InvalidForm("capacity", "an event registration form has a capacity of 1 to 100,000")
        if not 0 <= waitlist <= 100_000:
            raise InvalidForm("waitlist", "0 to 100,000 places")
    elif capacity is not None or waitlist:
        raise InvalidForm("capacity", "only event registration forms have a capacity and a waitlist")


def check_submission(
    fields: Sequence[FormField], values: Mapping[str, Any], today: date
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(personal values for identity, non-personal answers), or :class:`InvalidSubmission`
    naming the field. Empty strings count as not given; a birthday after ``today`` is
    refused."""
    known = {f.id for f in fields}
    for key in values:
        if key not in known:
            raise InvalidSubmission(f"fields.{str(key)[:64]}", "not a field of this form")
    personal: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for f in fields:
        value = values.get(f.id)
        if isinstance(value, str):
            value = value.strip() or None
        if value is None or value == []:
            if f.required:
                raise InvalidSubmission(f"fields.{f.id}", "required")
            continue
        target = personal if f.kind in PERSONAL_KINDS else custom
        target[f.id] = _check_value(f, value, today)
    return personal, custom


def _check_value(f: FormField, value: Any, today: date) -> Any:
    where = f"fields.{f.id}"
    if f.kind == "postal_code":
        # People type １２３－４５６７ as often as 123-4567: width folded, dashes unified.
        code = unicodedata.normalize("NFKC", value).replace("ー", "-") if isinstance(value, str) else ""
        code = code.replace("−", "-").replace("‐", "-").replace(" ", "")
        if not _POSTAL.match(code):
            raise InvalidSubmission(where, "a postal code such as 123-4567")
        return code
    if f.kind in _TEXT_LIMITS:
        if not isinstance(value, str) or len(value) > _TEXT_LIMITS[f.kind]:
            raise InvalidSubmission(where, f"text of at most {_TEXT_LIMITS[f.kind]} characters")
        return value
    if f.kind == "birthday":
        try:
            day = date.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            day = None
        if day is None or not date(1900, 1, 1) <= day <= today:
            raise InvalidSubmission(where, "a date YYYY-MM-DD, not in the future")
        return day.isoformat()
    if f.kind == "gender":
        if value not in _GENDERS:
            raise InvalidSubmission(where, f"one of {', '.join(_GENDERS)}")
        return value
    if f.kind == "choice":
        if not isinstance(value, str) or value not in f.choices:
            raise InvalidSubmission(where, "one of the field's options")
        return value
    if f.kind == "multi_choice":
        if not isinstance(value, list) or not all(isinstance(v, str) and v in f.choices for v in value):
            raise InvalidSubmission(where, "a list of the field's options")
        if len(set(value)) != len(value):
            raise InvalidSubmission(where, "an option is chosen once")
        return [c for c in f.choices if c in value]
    if f.kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidSubmission(where, "true or false")
        return value
    # number
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSubmission(where, "a whole number")
    if (f.minimum is not None and value < f.minimum) or (f.maximum is not None and value > f.maximum):
        raise InvalidSubmission(where, f"between {f.minimum} and {f.maximum}")
    return value


def check_consent(request: ConsentRequest, given: Mapping[str, Any]) -> dict[str, bool]:
    """The channels the person ticked or left unticked, only among those the form asked."""
    out: dict[str, bool] = {}
    for channel, granted in given.items():
        if channel not in request.channels:
            raise InvalidSubmission(f"consent.{str(channel)[:32]}", "this form does not ask for it")
        if not isinstance(granted, bool):
            raise InvalidSubmission(f"consent.{channel}", "true or false")
        out[channel] = granted
    return out


def submission_id(form_id: uuid.UUID, submission_key: str) -> uuid.UUID:
    return uuid.uuid5(FORM_NAMESPACE, f"submission:{form_id}:{submission_key}")


@dataclass
class Registration:
    submission_id: str
    customer_id: str
    status: str  # confirmed | waitlisted | cancelled
    at: datetime


class Form(Aggregate):
    class Created(Aggregate.Created):
        kind: str
        title: str
        fields: list[dict[str, Any]]
        consent: dict[str, Any]
        capacity: int | None
        waitlist: int
        event_starts_at: datetime | None
        created_at: datetime

    @event(Created)
    def __init__(
        self,
        kind: str,
        title: str,
        fields: list[dict[str, Any]],
        consent: dict[str, Any],
        capacity: int | None,
        waitlist: int,
        event_starts_at: datetime | None,
        created_at: datetime,
    ) -> None:
        self.kind = kind
        self.title = title
        self.fields = fields
        self.consent = consent
        self.capacity = capacity
        self.waitlist = waitlist
        self.event_starts_at = event_starts_at
        self.created_at = created_at
        self.status = "open"
        #: customer_id -> registration (event forms)
        self.registrations: dict[str, Registration] = {}

    @classmethod
    def define(
        cls,
        form_id: uuid.UUID,
        kind: str,
        title: str,
        fields: Sequence[FormField],
        consent: ConsentRequest,
        at: datetime,
        capacity: int | None = None,
        waitlist: int = 0,
        event_starts_at: datetime | None = None,
    ) -> Form:
        if not title.strip() or len(title) > 200:
            raise InvalidForm("title", "1 to 200 characters")
        validate_definition(kind, fields, consent, capacity, waitlist)
        return cls._create(
            cls.Created,
            id=form_id,
            kind=kind,
            title=title,
            fields=[f.as_dict() for f in fields],
            consent=consent.as_dict(),
            capacity=capacity,
            waitlist=waitlist,
            event_starts_at=event_starts_at,
            created_at=at,
        )

    def field_list(self) -> list[FormField]:
        return [FormField.from_dict(f) for f in self.fields]

    def consent_request(self) -> ConsentRequest:
        c = self.consent
        return ConsentRequest(c["purpose"], c["wording"], c["wording_version"], tuple(c["channels"]))

    # -- capacity and waitlist -------------------------------------------------------

    def confirmed(self) -> list[Registration]:
        return [r for r in self.registrations.values() if r.status == "confirmed"]

    def waiting(self) -> list[Registration]:
        return sorted(
            (r for r in self.registrations.values() if r.status == "waitlisted"), key=lambda r: r.at
        )

    def position(self, customer_id: str) -> int | None:
        for i, r in enumerate(self.waiting()):
            if r.customer_id == customer_id:
                return i + 1
        return None

    def has_room(self) -> bool:
        """A place or a waitlist place is free (checked before identity is asked, so a
        full event does not register people it then turns away)."""
        assert self.capacity is not None
        return len(self.confirmed()) < self.capacity or len(self.waiting()) < self.waitlist

    class Registered(Aggregate.Event):
        submission_id: str
        customer_id: str
        status: str
        capacity: int
        waitlist_position: int | None
        event_starts_at: datetime | None
        at: datetime

    def register(self, submission_id: str, customer_id: str, at: datetime) -> Registration:
        """A place for the customer: confirmed while places remain, else on the waitlist,
        else :class:`EventFull`. A customer already holding a place keeps it (one place
        per person, whichever submission asked)."""
        if self.kind != "event_registration":
            raise FormError("only event registration forms take registrations")
        if self.status != "open":
            raise FormClosed("registration is closed")
        held = self.registrations.get(customer_id)
        if held is not None and held.status != "cancelled":
            return held
        assert self.capacity is not None
        if len(self.confirmed()) < self.capacity:
            status, position = "confirmed", None
        elif len(self.waiting()) < self.waitlist:
            status, position = "waitlisted", len(self.waiting()) + 1
        else:
            raise EventFull(f"all {self.capacity} places and the waitlist are taken")
        self._registered(
            submission_id=submission_id,
            customer_id=customer_id,
            status=status,
            capacity=self.capacity,
            waitlist_position=position,
            event_starts_at=self.event_starts_at,
            at=at,
        )
        return self.registrations[customer_id]

    @event(Registered)
    def _registered(
        self,
        submission_id: str,
        customer_id: str,
        status: str,
        capacity: int,
        waitlist_position: int | None,
        event_starts_at: datetime | None,
        at: datetime,
    ) -> None:
        self.registrations[customer_id] = Registration(submission_id, customer_id, status, at)

    class RegistrationCancelled(Aggregate.Event):
        submission_id: str
        customer_id: str
        at: datetime

    class RegistrationPromoted(Aggregate.Event):
        submission_id: str
        customer_id: str
        at: datetime

    def cancel(self, submission_id: str, at: datetime) -> Registration | None:
        """Cancel a registration; a confirmed place freed goes to the first waiting.
        Returns the registration promoted, if any."""
        found = next((r for r in self.registrations.values() if r.submission_id == submission_id), None)
        if found is None:
            raise RegistrationNotFound(f"no registration from submission {submission_id}")
        if found.status == "cancelled":
            return None
        freed = found.status == "confirmed"
        self._cancelled(submission_id=submission_id, customer_id=found.customer_id, at=at)
        waiting = self.waiting()
        if freed and waiting:
            first = waiting[0]
            self._promoted(submission_id=first.submission_id, customer_id=first.customer_id, at=at)
            return self.registrations[first.customer_id]
        return None

    @event(RegistrationCancelled)
    def _cancelled(self, submission_id: str, customer_id: str, at: datetime) -> None:
        self.registrations[customer_id].status = "cancelled"

    @event(RegistrationPromoted)
    def _promoted(self, submission_id: str, customer_id: str, at: datetime) -> None:
        self.registrations[customer_id].status = "confirmed"

    class Closed(Aggregate.Event):
        at: datetime

    def close(self, at: datetime) -> None:
        if self.status != "closed":
            self._closed(at=at)

    @event(Closed)
    def _closed(self, at: datetime) -> None:
        self.status = "closed"


class FormSubmission(Aggregate):
    class Submitted(Aggregate.Created):
        form_id: uuid.UUID
        form_kind: str
        customer_id: str
        outcome: str
        #: (kind, blind index) of the identifiers given
        identifiers: list[list[str]]
        consent: dict[str, Any]
        answers: dict[str, Any]
        registration: str | None
        submitted_at: datetime
        #: a membership application: the blind index of the member number issued, and
        #: which of the submission's candidate numbers it is (the number is derived, so
        #: a retry can give it again without it being stored in clear)
        member_no_hash: str | None
        member_candidate: int | None

    @event(Submitted)
    def __init__(
        self,
        form_id: uuid.UUID,
        form_kind: str,
        customer_id: str,
        outcome: str,
        identifiers: list[list[str]],
        consent: dict[str, Any],
        answers: dict[str, Any],
        registration: str | None,
        submitted_at: datetime,
        member_no_hash: str | None = None,
        member_candidate: int | None = None,
    ) -> None:
        self.form_id = form_id
        self.form_kind = form_kind
        self.customer_id = customer_id
        self.outcome = outcome
        self.identifiers = identifiers
        self.consent = consent
        self.answers = answers
        self.registration = registration
        self.submitted_at = submitted_at
        self.member_no_hash = member_no_hash
        self.member_candidate = member_candidate

    @classmethod
    def record(
        cls,
        form: Form,
        submission_key: str,
        customer_id: str,
        outcome: str,
        identifiers: list[list[str]],
        consent: Mapping[str, bool],
        answers: dict[str, Any],
        registration: str | None,
        at: datetime,
        member: tuple[str, int] | None = None,
    ) -> FormSubmission:
        request = form.consent_request()
        return cls._create(
            cls.Submitted,
            id=submission_id(form.id, submission_key),
            form_id=form.id,
            form_kind=form.kind,
            customer_id=customer_id,
            outcome=outcome,
            identifiers=identifiers,
            consent={
                "purpose": request.purpose,
                "wording_version": request.wording_version,
                "channels": dict(consent),
            },
            answers=answers,
            registration=registration,
            submitted_at=at,
            member_no_hash=member[0] if member else None,
            member_candidate=member[1] if member else None,
        )


# -- double opt-in ---------------------------------------------------------------------

#: channels a public form's consent can be confirmed on, and the identifier whose
#: address receives the proof: a link by e-mail, a code by SMS
CONFIRMABLE_CHANNELS = {"email": "email", "sms": "phone"}
#: wrong codes before an SMS confirmation is locked (a code has 10^6 values)
MAX_CODE_ATTEMPTS = 5


class ConfirmationError(FormError):
    pass


class ConfirmationExpired(ConfirmationError):
    """The link's time is up (HTTP 410): submit the form again for a new one."""


class ConfirmationUsed(ConfirmationError):
    """The link was used already (HTTP 409): a confirmation link works once."""


class ConfirmationLocked(ConfirmationError):
    """Too many wrong codes (HTTP 409): submit the form again for a new one."""


class WrongCode(ConfirmationError):
    """The code does not match (HTTP 422 naming ``code``)."""


def confirmation_id(submission: uuid.UUID, channel: str) -> uuid.UUID:
    """One confirmation per submission and channel: a retried submission finds it."""
    return uuid.uuid5(FORM_NAMESPACE, f"confirmation:{submission}:{channel}")


class ConsentConfirmation(Aggregate):
    """A consent ticked on a public form, waiting for the person to prove they hold the
    address (double opt-in): a signed, expiring, single-use link sent there. Until then
    the consent is granted nowhere. Holds no personal data: the address as its blind
    index, the form, the submission, the wording's version."""

    class Requested(Aggregate.Created):
        form_id: uuid.UUID
        submission_id: uuid.UUID
        channel: str
        #: (kind, blind index) of the address the link is sent to
        identifier: list[str]
        purpose: str
        wording_version: str
        requested_at: datetime
        expires_at: datetime

    @event(Requested)
    def __init__(
        self,
        form_id: uuid.UUID,
        submission_id: uuid.UUID,
        channel: str,
        identifier: list[str],
        purpose: str,
        wording_version: str,
        requested_at: datetime,
        expires_at: datetime,
    ) -> None:
        self.form_id = form_id
        self.submission_id = submission_id
        self.channel = channel
        self.identifier = list(identifier)
        self.purpose = purpose
        self.wording_version = wording_version
        self.requested_at = requested_at
        self.expires_at = expires_at
        self.sent_at: datetime | None = None
        self.confirmed_at: datetime | None = None
        self.granted: bool | None = None
        self.wrong_codes = 0

    @classmethod
    def request(
        cls,
        submission: FormSubmission,
        channel: str,
        identifier: list[str],
        at: datetime,
        expires_at: datetime,
    ) -> ConsentConfirmation:
        if CONFIRMABLE_CHANNELS.get(channel) != (identifier[0] if identifier else None):
            raise ConfirmationError(f"consent on {channel} cannot be confirmed at a {identifier[:1]} address")
        return cls._create(
            cls.Requested,
            id=confirmation_id(submission.id, channel),
            form_id=submission.form_id,
            submission_id=submission.id,
            channel=channel,
            identifier=identifier,
            purpose=submission.consent["purpose"],
            wording_version=submission.consent["wording_version"],
            requested_at=at,
            expires_at=expires_at,
        )

    class Sent(Aggregate.Event):
        at: datetime

    def mark_sent(self, at: datetime) -> None:
        if self.sent_at is None:
            self._sent(at=at)

    @event(Sent)
    def _sent(self, at: datetime) -> None:
        self.sent_at = at

    class Confirmed(Aggregate.Event):
        at: datetime
        #: whether identity granted it (False: no single customer holds the address)
        granted: bool

    def check_usable(self, at: datetime) -> None:
        if self.confirmed_at is not None:
            raise ConfirmationUsed("this confirmation was used already")
        if at >= self.expires_at:
            raise ConfirmationExpired("this confirmation has expired")
        if self.wrong_codes >= MAX_CODE_ATTEMPTS:
            raise ConfirmationLocked("too many wrong codes: submit the form again")

    class CodeRefused(Aggregate.Event):
        at: datetime

    def refuse_code(self, at: datetime) -> None:
        self.check_usable(at)
        self._code_refused(at=at)

    @event(CodeRefused)
    def _code_refused(self, at: datetime) -> None:
        self.wrong_codes += 1

    def confirm(self, at: datetime, granted: bool) -> None:
        self.check_usable(at)
        self._confirmed(at=at, granted=granted)

    @event(Confirmed)
    def _confirmed(self, at: datetime, granted: bool) -> None:
        self.confirmed_at = at
        self.granted = granted
