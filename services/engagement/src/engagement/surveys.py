"""The surveys-and-forms application: its store, signed invitation links, and the
submission flow that goes through identity.

**Store.** ``SurveyApplication`` keeps surveys, responses, forms and submissions in a
store of their own next to membership's (``var/engagement/surveys.sqlite``, or the
``surveys_*`` tables of engagement's PostgreSQL database), with its own outbox relay
(``engagement.surveys-relay``, run by ``python -m engagement relay`` beside
membership's): SQLite keeps one notification log per file, PostgreSQL one per
application, so two applications in one file would each relay the other's events.

**Invitation links.** A token is ``v1.<invitation id>.<HMAC>``: the invitation's id (a
UUID derived from the survey and the customer key — no personal data) signed with
``CRM_SURVEY_TOKEN_KEY`` (HMAC-SHA256, 128 bits kept). The link a message carries is
``CRM_SURVEY_PUBLIC_BASE_URL/v1/public/survey-invitations/<token>``; templates name it ``survey_url``.

**One answer per invitation.** A second answer that differs is refused with 409
(answers are facts others already counted); the same answer again is a retry and
answers 200 with the first result.

**Free text is sealed.** A response with free text gets a data key of its own
(``crm_platform.datakeys``: table ``survey_text_keys`` beside the store, key id
``survey-response-<response id>``, wrapped by the master key); the text is sealed
(AES-256-GCM, associated data binding the response and the question) before it reaches
the store, so the store, its backups and the relay hold only ciphertext and the length.
An invitation's key is recorded under the invited customer id; erasure
(``engagement.eraser``, on ``customer.erased``) deletes that customer's keys and the
text is gone for good, while scores and choices still count.

**Form submissions** are validated against the form, then the person is registered
with identity under the public-intake rules (``POST /customers/intake``, scope
``identity:public-intake``: a form anyone may submit never links, merges or grants
consent for a customer identity knows already; identity files what it cannot verify in
its review queue), and only then the submission is recorded (with the event
registration, if any, and the consent confirmation, in the same transaction). The
submission's id derives from the client's ``submission_id`` (or, without one, from the
form and the first identifier given), so a retry finds the first submission and answers
the same.

**Double opt-in.** A ticked consent is granted nowhere until the person confirms it: a
link with a signed token (``c1.<confirmation id>.<HMAC>``, no personal data) is e-mailed
to the address given, over SMTP as the campaign dispatcher sends (``CRM_SMTP_*``); it
expires (``CRM_CONSENT_CONFIRMATION_TTL_S``) and works once. Confirming asks identity to
record the consent with its proof for the customer holding that address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from crm_platform.crypto import BlindIndexer
from crm_platform.datakeys import ContentErased, DataKeys
from crm_platform.eventstore import project
from crm_platform.identifiers import InvalidIdentifier, normalise
from crm_platform.settings import Environment
from engagement.adapters.crm_clients import IdentityClient, NotHeld
from engagement.dispatch.providers import (
    OutcomeUnknown,
    Outgoing,
    PermanentFailure,
    Provider,
    TemporaryFailure,
)
from engagement.domain.form import (
    CONFIRMABLE_CHANNELS,
    IDENTIFIER_KINDS,
    ConsentConfirmation,
    ConsentRequest,
    EventFull,
    Form,
    FormClosed,
    FormError,
    FormField,
    FormSubmission,
    InvalidSubmission,
    WrongCode,
    check_consent,
    check_submission,
    confirmation_id,
    submission_id,
)
from engagement.domain.survey import (
    Question,
    Survey,
    SurveyError,
    SurveyResponse,
    invitation_id,
)
from engagement.membership import MemberExists, MembershipApplication, luhn_digit

T = TypeVar("T")
_TOKYO = ZoneInfo("Asia/Tokyo")
APP_NAME = "surveys"
#: the table of free-text data keys (beside the surveys store) and their key ids' prefix
TEXT_KEY_TABLE = "survey_text_keys"
TEXT_KEY_PREFIX = "survey-response"
DEV_SURVEY_TOKEN_KEY = base64.b64encode(b"crm-dev-survey-token-key-32byte!").decode()
#: Values docker-compose.yml once shipped as defaults: published, so refused in production.
PUBLISHED_SURVEY_SECRETS = {
    "CRM_SURVEY_TOKEN_KEY": "Hq0m3uGQe2V1m5c8vC3Zl6pT0yXr7sWb4nK9dJfA2aE=",
    "CRM_IDENTITY_API_KEY": "laptop-only-identity-admin",
    "CRM_ANALYTICS_API_KEY": "laptop-only-analytics-reader",
}


class SurveySettings(BaseSettings):
    """Settings of surveys and forms (``CRM_*`` like every other setting)."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    env: Environment = Environment.DEVELOPMENT
    #: identity's API, for form submissions (scope identity:public-intake, nothing more)
    identity_url: str = "http://127.0.0.1:8001"
    identity_api_key: SecretStr = SecretStr("dev-admin-key")
    #: analytics' API, for survey audiences from segments (scope analytics:read)
    analytics_url: str = "http://127.0.0.1:8004"
    analytics_api_key: SecretStr = SecretStr("dev-read-key")
    #: signs invitation links (base64, 32 bytes)
    survey_token_key: SecretStr = SecretStr(DEV_SURVEY_TOKEN_KEY)
    #: where the public survey and form routes are reached from outside (a ``survey_url``
    #: is ``<this>/v1/public/survey-invitations/<token>``)
    survey_public_base_url: str = "http://127.0.0.1:8002"
    #: public form submissions per client address and minute (per API process)
    form_rate_per_minute: int = Field(default=30, ge=1, le=100_000)
    #: the most customers one invitation request (or segment) may invite
    survey_max_audience: int = Field(default=50_000, ge=1, le=1_000_000)
    #: how long a consent confirmation link (double opt-in) works, in seconds
    consent_confirmation_ttl_s: int = Field(default=72 * 3600, ge=1, le=30 * 86_400)
    #: proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For names the client for
    #: the public routes' rate limits; from any other peer the socket address counts.
    #: Empty (the default): nobody's header is believed.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for item in value or ():
            ipaddress.ip_network(item, strict=False)  # a ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _no_dev_secrets_in_production(self) -> SurveySettings:
        if self.env is Environment.PRODUCTION and (
            self.survey_token_key.get_secret_value() == DEV_SURVEY_TOKEN_KEY
            or self.identity_api_key.get_secret_value() == "dev-admin-key"
            or self.analytics_api_key.get_secret_value() == "dev-read-key"
        ):
            raise ValueError(
                "production refuses development secrets: set CRM_SURVEY_TOKEN_KEY, "
                "CRM_IDENTITY_API_KEY and CRM_ANALYTICS_API_KEY"
            )
        return self

    @model_validator(mode="after")
    def _no_published_secrets_in_production(self) -> SurveySettings:
        if self.env is not Environment.PRODUCTION:
            return self
        values = {
            "CRM_SURVEY_TOKEN_KEY": self.survey_token_key,
            "CRM_IDENTITY_API_KEY": self.identity_api_key,
            "CRM_ANALYTICS_API_KEY": self.analytics_api_key,
        }
        offending = [n for n, v in values.items() if v.get_secret_value() == PUBLISHED_SURVEY_SECRETS[n]]
        if offending:
            raise ValueError(
                f"production refuses values published in docker-compose.yml: set {', '.join(offending)}"
            )
        return self

    @property
    def invitation_url_prefix(self) -> str:
        return self.survey_public_base_url.rstrip("/") + "/v1/public/survey-invitations/"

    @property
    def token_key_bytes(self) -> bytes:
        raw = base64.b64decode(self.survey_token_key.get_secret_value(), validate=True)
        if len(raw) != 32:
            raise ValueError("CRM_SURVEY_TOKEN_KEY must decode to 32 bytes")
        return raw


# -- signed invitation tokens --------------------------------------------------------------


class InvalidToken(Exception):
    """A token that was not issued by us, or was altered (HTTP 404: nothing to reveal)."""


class InvitationSigner:
    PREFIX = "v1"

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the token key is at least 32 bytes")
        self._key = key

    def _mac(self, invitation: uuid.UUID) -> str:
        digest = hmac.new(self._key, b"survey-invitation:v1:" + invitation.bytes, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()

    def sign(self, invitation: uuid.UUID) -> str:
        return f"{self.PREFIX}.{invitation.hex}.{self._mac(invitation)}"

    def verify(self, token: str) -> uuid.UUID:
        parts = token.split(".")
        if len(token) > 100 or len(parts) != 3 or parts[0] != self.PREFIX:
            raise InvalidToken("not an invitation token")
        try:
            invitation = uuid.UUID(hex=parts[1])
        except ValueError:
            raise InvalidToken("not an invitation token") from None
        if not hmac.compare_digest(self._mac(invitation), parts[2]):
            raise InvalidToken("not an invitation token")
        return invitation


class ConfirmationSigner:
    """Consent confirmation tokens: ``c1.<confirmation id>.<HMAC>``. The id is the
    confirmation's (no personal data); the MAC (HMAC-SHA256, 128 bits kept) under a key
    derived from ``CRM_SURVEY_TOKEN_KEY`` for this purpose only, so an invitation token
    is never a confirmation token. Expiry and single use are the confirmation's state."""

    PREFIX = "c1"

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"consent-confirmation:v1:" + key).digest()

    def _mac(self, confirmation: uuid.UUID) -> str:
        digest = hmac.new(self._key, confirmation.bytes, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()

    def sign(self, confirmation: uuid.UUID) -> str:
        return f"{self.PREFIX}.{confirmation.hex}.{self._mac(confirmation)}"

    def code(self, confirmation: uuid.UUID) -> str:
        """The six digits an SMS confirmation sends (derived, never stored)."""
        digest = hmac.new(self._key, b"sms-code:" + confirmation.bytes, hashlib.sha256).digest()
        return f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"

    def verify(self, token: str) -> uuid.UUID:
        parts = token.split(".")
        if len(token) > 100 or len(parts) != 3 or parts[0] != self.PREFIX:
            raise InvalidToken("not a confirmation token")
        try:
            confirmation = uuid.UUID(hex=parts[1])
        except ValueError:
            raise InvalidToken("not a confirmation token") from None
        if not hmac.compare_digest(self._mac(confirmation), parts[2]):
            raise InvalidToken("not a confirmation token")
        return confirmation


class MemberNumbers:
    """Member numbers for membership applications: 12 digits and a Luhn check digit, like
    the programme's own, derived from the submission (HMAC under the token key) so a
    retried submission can give the person their number again without it being stored
    in clear. Candidate ``i + 1`` is used when ``i`` is taken."""

    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"member-numbers:" + key).digest()

    def candidate(self, submission: uuid.UUID, index: int) -> str:
        digest = hmac.new(self._key, f"{submission}:{index}".encode(), hashlib.sha256).digest()
        body = str(int.from_bytes(digest[:8], "big") % (9 * 10**11) + 10**11)
        return body + luhn_digit(body)


# -- a small rate limiter for the public endpoints -----------------------------------------


class RateLimiter:
    """At most ``per_minute`` calls per key in any minute (a sliding window of call
    times), remembering at most ``max_keys`` keys. Per process: behind N API workers the
    bound is N times this, which is what a captcha-free form needs — a brake on scripts,
    not an accounting system."""

    def __init__(self, per_minute: int, max_keys: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._calls: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            calls = [t for t in self._calls.pop(key, []) if t > now - 60.0]
            allowed = len(calls) < self.per_minute
            if allowed:
                calls.append(now)
            self._calls[key] = calls
            while len(self._calls) > self.max_keys:
                self._calls.popitem(last=False)
            return allowed


# -- the application -----------------------------------------------------------------------


class SurveyNotFound(SurveyError):
    pass


class InvitationNotFound(SurveyError):
    pass


class FormNotFound(FormError):
    pass


class ResponseNotFound(SurveyError):
    pass


class InvitationErased(SurveyError):
    """The invited customer was erased: their invitation takes no free text (HTTP 410)."""


class _ResponseSealer:
    """Seals and opens one response's free text with its data key. The associated data
    binds the response and the question, so sealed text cannot be replayed elsewhere.
    An invitation's key is recorded under the invited customer (the eraser finds it by
    that id); an anonymous response's has no subject."""

    def __init__(self, keys: DataKeys, response_id: uuid.UUID, customer_key: str | None) -> None:
        self._keys = keys
        self._id = response_id
        self._subject = customer_key

    def _context(self, question_id: str) -> str:
        return f"survey-answer:{self._id}:{question_id}"

    def seal(self, question_id: str, text: str) -> dict[str, str]:
        try:
            return self._keys.seal(self._id, text, self._context(question_id), subject=self._subject)
        except ContentErased:
            # The customer was erased before answering: their text is not taken.
            raise InvitationErased("this invitation's customer was erased") from None

    def open(self, question_id: str, sealed: Mapping[str, str]) -> str | None:
        try:
            text = self._keys.open(self._id, dict(sealed), self._context(question_id))
        except ContentErased:
            return None
        return str(text)

    def opens_to(self, question_id: str, sealed: Mapping[str, str], text: str) -> bool:
        return self.open(question_id, sealed) == text


class ConcurrentChange(Exception):
    """Another writer changed the same survey or form first; the request may be retried."""


@dataclass(frozen=True)
class Invitation:
    invitation_id: uuid.UUID
    customer_key: str
    token: str
    new: bool


@dataclass(frozen=True)
class Submitted:
    submission: FormSubmission
    form: Form
    created: bool
    #: the member number a membership application was issued, in clear
    member_no: str | None = None
    #: the double opt-ins waiting for the person (none: no confirmable consent ticked)
    confirmations: tuple[ConsentConfirmation, ...] = ()


class SurveyApplication(Application[uuid.UUID]):
    name = APP_NAME

    def __init__(
        self,
        env: Mapping[str, Any],
        signer: InvitationSigner,
        indexer: BlindIndexer,
        member_numbers: MemberNumbers | None = None,
        text_keys: Callable[[SurveyApplication], DataKeys] | None = None,
        confirmations: ConfirmationSigner | None = None,
    ) -> None:
        super().__init__(env=env)
        self.signer = signer
        self.confirmations = confirmations
        self.indexer = indexer
        self.member_numbers = member_numbers
        #: built from the application: on PostgreSQL the keys live in the store's database
        self._text_keys = text_keys(self) if text_keys is not None else None

    @property
    def text_keys(self) -> DataKeys:
        if self._text_keys is None:
            raise RuntimeError("this surveys application has no key store (free text needs one)")
        return self._text_keys

    def _sealer(self, response: SurveyResponse) -> _ResponseSealer:
        return _ResponseSealer(self.text_keys, response.id, response.customer_key)

    def read_response(self, response_id: uuid.UUID, *, free_text: bool = True) -> dict[str, Any]:
        """A response as staff read it: each answer with its kind and value; free text
        opened, or ``None`` with ``erased: true`` once its key was deleted. Without
        ``free_text`` (a key without ``engagement:pii``) free text is neither opened nor
        answered: ``None`` with ``withheld: true``."""
        response = self.response(response_id)
        if response is None or response.answered_at is None:
            raise ResponseNotFound(f"no answered response {response_id}")
        sealer = self._sealer(response)
        answers: list[dict[str, Any]] = []
        for qid, value in response.answers.items():
            if not free_text and (isinstance(value, dict) or response.kinds.get(qid) == "free_text"):
                answers.append({"question_id": qid, "kind": "free_text", "value": None, "withheld": True})
            elif isinstance(value, dict):  # sealed free text
                text = sealer.open(qid, value)
                answers.append(
                    {"question_id": qid, "kind": "free_text", "value": text, "erased": text is None}
                )
            else:  # scores and choices (and text answered before sealing: in clear)
                answers.append({"question_id": qid, "kind": response.kinds.get(qid), "value": value})
        return {
            "response_id": response.id,
            "survey_id": response.survey_id,
            "survey_version": response.answered_version,
            "customer_id": response.customer_key,
            "anonymous": response.customer_key is None,
            "answered_at": response.answered_at,
            "answers": answers,
        }

    def follow_merge(self, survivor: str, merged: str) -> int:
        """identity merged ``merged`` into ``survivor``: erasing the survivor erases the
        merged customer's text too (returns how many keys it now finds in addition)."""
        return self.text_keys.share_subject(merged, survivor)

    def follow_unmerge(self, survivor: str, restored: str) -> int:
        """identity undid a merge: the survivor's erasure no longer reaches the restored
        customer's text."""
        return self.text_keys.unshare_subject(restored, survivor)

    def erase_customers(self, customer_keys: Sequence[str]) -> int:
        """Shred the free text of every response these customers gave by invitation
        (idempotent); returns how many keys were live."""
        if not customer_keys:
            return 0
        erased = self.text_keys.erase_subjects(customer_keys)
        self.text_keys.purge()  # the erased keys' bytes leave the store's files
        return erased

    # -- reads ---------------------------------------------------------------------------

    def _get(self, aggregate_id: uuid.UUID) -> Any:
        return self.repository.get(aggregate_id, projector_func=project)

    def survey(self, survey_id: uuid.UUID) -> Survey:
        try:
            found = self._get(survey_id)
        except AggregateNotFoundError:
            raise SurveyNotFound(f"no survey {survey_id}") from None
        if not isinstance(found, Survey):
            raise SurveyNotFound(f"no survey {survey_id}")
        return found

    def response(self, response_id: uuid.UUID) -> SurveyResponse | None:
        try:
            found = self._get(response_id)
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, SurveyResponse) else None

    def form(self, form_id: uuid.UUID) -> Form:
        try:
            found = self._get(form_id)
        except AggregateNotFoundError:
            raise FormNotFound(f"no form {form_id}") from None
        if not isinstance(found, Form):
            raise FormNotFound(f"no form {form_id}")
        return found

    def submission(self, form_id: uuid.UUID, submission_key: str) -> FormSubmission | None:
        try:
            found = self._get(submission_id(form_id, submission_key))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, FormSubmission) else None

    def submission_by_id(self, submission: uuid.UUID) -> FormSubmission | None:
        try:
            found = self._get(submission)
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, FormSubmission) else None

    def _saving(self, *aggregates: Any) -> None:
        try:
            self.save(*aggregates)
        except IntegrityError:
            raise ConcurrentChange("changed concurrently; retry") from None

    @staticmethod
    def _retrying(change: Callable[[], T], attempts: int = 5) -> T:
        for attempt in range(attempts):
            try:
                return change()
            except ConcurrentChange:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    # -- surveys -------------------------------------------------------------------------

    def define_survey(
        self, title: str, questions: Sequence[Question], allow_anonymous: bool, at: datetime
    ) -> Survey:
        survey = Survey.define(uuid.uuid4(), title, questions, allow_anonymous, at)
        self._saving(survey)
        return survey

    def edit_survey(self, survey_id: uuid.UUID, questions: Sequence[Question], at: datetime) -> Survey:
        def change() -> Survey:
            survey = self.survey(survey_id)
            survey.edit(questions, at)
            self._saving(survey)
            return survey

        return self._retrying(change)

    def set_survey_status(self, survey_id: uuid.UUID, status: str, at: datetime) -> Survey:
        def change() -> Survey:
            survey = self.survey(survey_id)
            survey.open(at) if status == "open" else survey.close(at)
            if survey.pending_events:
                self._saving(survey)
            return survey

        return self._retrying(change)

    def invite(
        self, survey_id: uuid.UUID, customer_keys: Sequence[str], audience: str, at: datetime
    ) -> list[Invitation]:
        """Invite each customer once: a customer invited before keeps their invitation
        (and link). Saved in chunks, each chunk in one transaction."""
        survey = self.survey(survey_id)
        if survey.status == "closed":
            raise SurveyError("a closed survey takes no more invitations")
        keys = list(dict.fromkeys(customer_keys))
        out: list[Invitation] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]

            def save_chunk(chunk: list[str] = chunk) -> list[Invitation]:
                fresh, done = [], []
                for key in chunk:
                    iid = invitation_id(survey_id, key)
                    if self.response(iid) is None:
                        fresh.append(SurveyResponse.invite(survey_id, key, audience, at))
                    else:
                        done.append(Invitation(iid, key, self.signer.sign(iid), new=False))
                if fresh:
                    self._saving(*fresh)
                return done + [
                    Invitation(r.id, key, self.signer.sign(r.id), new=True)
                    for r in fresh
                    for key in [r.customer_key or ""]
                ]

            out += self._retrying(save_chunk)
        order = {k: i for i, k in enumerate(keys)}
        return sorted(out, key=lambda inv: order[inv.customer_key])

    def invitation(self, token: str) -> tuple[SurveyResponse, Survey]:
        response = self.response(self.signer.verify(token))
        if response is None or response.customer_key is None:
            raise InvitationNotFound("no such invitation")
        return response, self.survey(response.survey_id)

    def answer_invitation(
        self, token: str, answers: Mapping[str, Any], at: datetime
    ) -> tuple[SurveyResponse, bool]:
        def change() -> tuple[SurveyResponse, bool]:
            response, survey = self.invitation(token)
            recorded = response.answer(survey, answers, at, self._sealer(response))
            if recorded:
                self._saving(response, survey)
            return response, recorded

        return self._retrying(change)

    def answer_anonymously(
        self, survey_id: uuid.UUID, client_key: str, answers: Mapping[str, Any], at: datetime
    ) -> tuple[SurveyResponse, bool]:
        def change() -> tuple[SurveyResponse, bool]:
            survey = self.survey(survey_id)
            response = self.response(SurveyResponse.anonymous(survey_id, client_key).id)
            if response is None:
                response = SurveyResponse.anonymous(survey_id, client_key)
            recorded = response.answer(survey, answers, at, self._sealer(response))
            if recorded:
                self._saving(response, survey)
            return response, recorded

        return self._retrying(change)

    def survey_url(self, base: str, invitation: uuid.UUID) -> str:
        return base + self.signer.sign(invitation)

    # -- forms ---------------------------------------------------------------------------

    def define_form(
        self,
        kind: str,
        title: str,
        fields: Sequence[FormField],
        consent: ConsentRequest,
        at: datetime,
        capacity: int | None = None,
        waitlist: int = 0,
        event_starts_at: datetime | None = None,
    ) -> Form:
        form = Form.define(
            uuid.uuid4(), kind, title, fields, consent, at, capacity, waitlist, event_starts_at
        )
        self._saving(form)
        return form

    def close_form(self, form_id: uuid.UUID, at: datetime) -> Form:
        def change() -> Form:
            form = self.form(form_id)
            form.close(at)
            if form.pending_events:
                self._saving(form)
            return form

        return self._retrying(change)

    def record_submission(
        self,
        form_id: uuid.UUID,
        submission_key: str,
        customer_id: str,
        outcome: str,
        identifiers: list[list[str]],
        consent: Mapping[str, bool],
        answers: dict[str, Any],
        at: datetime,
        member: tuple[str, int] | None = None,
        confirm_on: Sequence[tuple[str, list[str], datetime]] = (),
    ) -> Submitted:
        """Record a submission identity has resolved; for an event form, with its place
        (confirmed or waitlisted), and with the consent confirmation waiting for the
        person (``confirm_on``: channel, the address's (kind, blind index), expiry), in
        the same transaction. A submission recorded before (a retry) is returned as it was."""

        def change() -> Submitted:
            form = self.form(form_id)
            existing = self.submission(form_id, submission_key)
            if existing is not None:
                return Submitted(existing, form, created=False, confirmations=self.confirmations_of(existing))
            registration = None
            if form.kind == "event_registration":
                sid = str(submission_id(form_id, submission_key))
                registration = form.register(sid, customer_id, at).status
            submission = FormSubmission.record(
                form,
                submission_key,
                customer_id,
                outcome,
                identifiers,
                consent,
                answers,
                registration,
                at,
                member,
            )
            confirmations = tuple(
                ConsentConfirmation.request(submission, channel, identifier, at, expires_at)
                for channel, identifier, expires_at in confirm_on
            )
            self._saving(submission, *([form] if form.pending_events else []), *confirmations)
            return Submitted(submission, form, created=True, confirmations=confirmations)

        return self._retrying(change)

    def confirmations_of(self, submission: FormSubmission) -> tuple[ConsentConfirmation, ...]:
        found = (self.confirmation(confirmation_id(submission.id, c)) for c in CONFIRMABLE_CHANNELS)
        return tuple(c for c in found if c is not None)

    def confirmation(self, confirmation: uuid.UUID) -> ConsentConfirmation | None:
        try:
            found = self._get(confirmation)
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, ConsentConfirmation) else None

    def confirmation_by_token(self, token: str) -> ConsentConfirmation:
        if self.confirmations is None:
            raise InvalidToken("consent confirmations are not configured")
        found = self.confirmation(self.confirmations.verify(token))
        if found is None:
            raise InvalidToken("no such confirmation")
        return found

    def confirmation_token(self, confirmation: ConsentConfirmation) -> str:
        if self.confirmations is None:
            raise RuntimeError("consent confirmations are not configured")
        return self.confirmations.sign(confirmation.id)

    def confirmation_code(self, confirmation: ConsentConfirmation) -> str:
        if self.confirmations is None:
            raise RuntimeError("consent confirmations are not configured")
        return self.confirmations.code(confirmation.id)

    def mark_confirmation_sent(self, confirmation: uuid.UUID, at: datetime) -> None:
        def change() -> None:
            found = self.confirmation(confirmation)
            if found is not None and found.sent_at is None:
                found.mark_sent(at)
                self._saving(found)

        self._retrying(change)

    def refuse_code(self, confirmation: uuid.UUID, at: datetime) -> None:
        """Count a wrong SMS code (the fifth locks the confirmation)."""

        def change() -> None:
            found = self.confirmation(confirmation)
            if found is None:
                raise InvalidToken("no such confirmation")
            found.refuse_code(at)
            self._saving(found)

        self._retrying(change)

    def record_confirmation(
        self, confirmation: uuid.UUID, at: datetime, granted: bool
    ) -> ConsentConfirmation:
        """Mark the confirmation used (once: a second use, even concurrent, is refused)."""

        def change() -> ConsentConfirmation:
            found = self.confirmation(confirmation)
            if found is None:
                raise InvalidToken("no such confirmation")
            found.confirm(at, granted)  # used already: ConfirmationUsed
            self._saving(found)  # a concurrent use loses here; retried, it is refused above
            return found

        return self._retrying(change)

    def member_no(self, submission: FormSubmission) -> str | None:
        """The member number a membership application was issued (derived again)."""
        if submission.member_candidate is None or self.member_numbers is None:
            return None
        return self.member_numbers.candidate(submission.id, submission.member_candidate)

    def enrol_applicant(
        self,
        membership: MembershipApplication,
        submission: uuid.UUID,
        birthday_month: int | None,
        at: datetime,
    ) -> tuple[str, str, int]:
        """Enrol a membership applicant under the submission's first free candidate
        number: (number, its blind index, candidate index)."""
        if self.member_numbers is None:
            raise FormError("membership applications need member numbers configured")
        for index in range(8):
            number = self.member_numbers.candidate(submission, index)
            try:
                member = membership.enrol(number, "form", at, birthday_month)
            except MemberExists:
                continue
            return number, member.member_no_hash, index
        raise ConcurrentChange("could not issue a free member number; retry")  # pragma: no cover

    def cancel_registration(self, form_id: uuid.UUID, submission: uuid.UUID, at: datetime) -> Form:
        def change() -> Form:
            form = self.form(form_id)
            form.cancel(str(submission), at)
            if form.pending_events:
                self._saving(form)
            return form

        return self._retrying(change)


# -- the submission flow (async: it waits for identity) --------------------------------


@dataclass(frozen=True)
class Prepared:
    """A submission checked against its form, ready for identity."""

    form: Form
    submission_key: str
    registration_body: dict[str, Any]
    identifiers: list[list[str]]
    consent: dict[str, bool]
    answers: dict[str, Any]


def prepare_submission(
    app: SurveyApplication,
    form: Form,
    values: Mapping[str, Any],
    consent: Mapping[str, Any],
    client_key: str | None,
    at: datetime,
) -> Prepared:
    """Validate a submission (names the field at fault) and build identity's request."""
    if form.status != "open":
        raise FormClosed("this form is closed")
    # the day in Japan, where the retailer's customers fill the forms in
    personal, answers = check_submission(form.field_list(), values, at.astimezone(_TOKYO).date())
    ticked = check_consent(form.consent_request(), consent)
    identifiers: list[list[str]] = []
    for kind in IDENTIFIER_KINDS:
        if kind in personal:
            try:
                value = normalise(kind, personal[kind])
            except InvalidIdentifier as exc:
                raise InvalidSubmission(f"fields.{kind}", exc.reason) from None
            identifiers.append([kind, app.indexer.index(kind, value)])
    if not identifiers:
        raise InvalidSubmission("fields", "an e-mail, a phone or a member number is needed")
    # No consents: identity's public intake takes none. A ticked box is granted only
    # once the person confirms it (double opt-in); one left unticked is no consent given
    # here, not the withdrawal of one given elsewhere. The submission keeps both (the
    # record of what was asked and answered).
    body: dict[str, Any] = {"channel": "form", **personal, "registered_at": at.isoformat()}
    # Without a client key, a person submitting the same form again is the same submission.
    key = client_key or f"{identifiers[0][0]}:{identifiers[0][1]}"
    return Prepared(form, key, body, identifiers, ticked, answers)


async def submit_form(
    app: SurveyApplication,
    identity: IdentityClient,
    form_id: uuid.UUID,
    values: Mapping[str, Any],
    consent: Mapping[str, Any],
    client_key: str | None,
    run: Callable[..., Any],
    membership: MembershipApplication | None = None,
    mailer: ConfirmationMailer | None = None,
    at: datetime | None = None,
    confirmation_ttl: timedelta = timedelta(hours=72),
) -> Submitted:
    """Validate, (for a membership application) enrol, register with identity's public
    intake, record, and send the consent confirmation (double opt-in). ``run`` runs
    blocking store work off the event loop. A retry of a recorded submission returns it
    without calling identity (and sends a confirmation that could not be sent before)."""
    at = at or datetime.now(UTC)
    form = await run(app.form, form_id)
    prepared = prepare_submission(app, form, values, consent, client_key, at)
    existing = await run(app.submission, form_id, prepared.submission_key)
    if existing is not None:
        confirmations = await run(app.confirmations_of, existing)
        if mailer is not None:
            confirmations = await _send_confirmations(app, mailer, form, confirmations, values, run, at)
        return Submitted(
            existing, form, created=False, member_no=app.member_no(existing), confirmations=confirmations
        )
    if form.kind == "event_registration" and not form.has_room():
        # Refused before identity is asked: nobody is registered only to be turned away.
        # (A place taken between this check and the recording still gets EventFull.)
        raise EventFull(f"all {form.capacity} places and the waitlist are taken")
    sid = submission_id(form_id, prepared.submission_key)
    body = {**prepared.registration_body, "source": {"form_id": str(form_id), "submission_id": str(sid)}}
    member: tuple[str, int] | None = None
    if form.kind == "membership":
        if membership is None:
            raise FormError("membership applications need the membership programme")
        birthday = body.get("birthday")
        number, member_hash, index = await run(
            app.enrol_applicant, membership, sid, int(birthday[5:7]) if birthday else None, at
        )
        # identity links the new member number to a new person, so purchases made with
        # the card count for them; for someone it knows already, it files it for review
        body = {**body, "member_no": number}
        member = (member_hash, index)
    registered = await identity.intake(body)
    identifiers = prepared.identifiers + ([["member_no", member[0]]] if member else [])
    # Only what the customer holds: the resolver links what form.submitted carries, and
    # a public form must not link (or merge) through it either.
    identifiers = [i for i in identifiers if i[0] in registered.held]
    confirm_on = []
    for channel, kind in CONFIRMABLE_CHANNELS.items():
        address = next((i for i in prepared.identifiers if i[0] == kind), None)
        if not prepared.consent.get(channel) or address is None or app.confirmations is None:
            continue
        if channel == "sms" and (mailer is None or mailer.sms is None):
            continue  # no SMS provider: nothing could ever confirm it
        confirm_on.append((channel, address, at + confirmation_ttl))
    submitted: Submitted = await run(
        app.record_submission,
        form_id,
        prepared.submission_key,
        str(registered.customer_id),
        registered.outcome,
        identifiers,
        prepared.consent,
        prepared.answers,
        at,
        member,
        confirm_on,
    )
    confirmations = submitted.confirmations
    if mailer is not None:
        confirmations = await _send_confirmations(app, mailer, form, confirmations, values, run, at)
    return Submitted(
        submitted.submission,
        submitted.form,
        submitted.created,
        app.member_no(submitted.submission),
        confirmations,
    )


# -- double opt-in: the confirmation mail and the confirmation ---------------------------


class ConfirmationMailer:
    """Sends consent confirmations through the campaign dispatcher's providers: a link
    by e-mail over SMTP (``CRM_SMTP_*``; locally ``python -m engagement mailsink``), a
    code by SMS over the SMS webhook (``CRM_SMS_WEBHOOK_URL``; none: no SMS opt-in)."""

    def __init__(self, provider: Provider, link_prefix: str, sms: Provider | None = None) -> None:
        self.provider = provider
        self.sms = sms
        #: ``<public base>/v1/public/consent-confirmations/``
        self.link_prefix = link_prefix

    async def send_code(self, to: str, form: Form, confirmation: ConsentConfirmation, code: str) -> None:
        if self.sms is None:
            raise RuntimeError("no SMS provider")
        await self.sms.send(
            Outgoing(
                message_id=uuid.uuid5(confirmation.id, "sms"),
                channel="sms",
                to=to,
                body=f"【{form.title}】確認コード {code}"
                "(SMSでのご案内への同意の確認。心当たりがなければ破棄してください)",
                metadata={"Confirmation": confirmation.id.hex},
            )
        )

    async def send(self, to: str, form: Form, confirmation: ConsentConfirmation, token: str) -> None:
        link = self.link_prefix + token
        wording = form.consent_request().wording
        body = (
            f"「{form.title}」へのお申し込みありがとうございます。\n\n"
            f"次の内容への同意を確認するため、下記のリンクを開いてください。\n"
            f"{wording}\n\n{link}\n\n"
            f"このリンクは一度だけ有効で、{confirmation.expires_at:%Y-%m-%d %H:%M} (UTC) まで使えます。\n"
            "お心当たりのない場合は、このメールを破棄してください。同意は記録されません。\n"
        )
        await self.provider.send(
            Outgoing(
                message_id=uuid.uuid5(confirmation.id, "mail"),
                channel="email",
                to=to,
                subject=f"【確認】{form.title}: ご同意の確認",
                body=body,
                metadata={"Confirmation": confirmation.id.hex},
            )
        )

    async def aclose(self) -> None:
        await self.provider.aclose()
        if self.sms is not None:
            await self.sms.aclose()


async def _send_confirmations(
    app: SurveyApplication,
    mailer: ConfirmationMailer,
    form: Form,
    confirmations: Sequence[ConsentConfirmation],
    values: Mapping[str, Any],
    run: Callable[..., Any],
    at: datetime,
) -> tuple[ConsentConfirmation, ...]:
    """Send each unsent confirmation to the address given (a link by e-mail, a code by
    SMS); a failure leaves it unsent (a retry of the submission sends it) and the
    submission stands."""
    out = []
    for confirmation in confirmations:
        if confirmation.sent_at is None and confirmation.confirmed_at is None:
            out.append(await _send_one(app, mailer, form, confirmation, values, run, at))
        else:
            out.append(confirmation)
    return tuple(out)


async def _send_one(
    app: SurveyApplication,
    mailer: ConfirmationMailer,
    form: Form,
    confirmation: ConsentConfirmation,
    values: Mapping[str, Any],
    run: Callable[..., Any],
    at: datetime,
) -> ConsentConfirmation:
    kind = CONFIRMABLE_CHANNELS[confirmation.channel]
    raw = str(values.get(kind) or "").strip()
    if not raw:
        return confirmation
    try:
        value = normalise(kind, raw)
    except InvalidIdentifier:
        return confirmation
    # A retry is found by the submission's first identifier (the e-mail): whoever sends
    # it may give another phone. The proof goes only to the address it was made for.
    if not hmac.compare_digest(app.indexer.index(kind, value), confirmation.identifier[1]):
        return confirmation
    try:
        if confirmation.channel == "email":
            await mailer.send(raw, form, confirmation, app.confirmation_token(confirmation))
        else:
            await mailer.send_code(value, form, confirmation, app.confirmation_code(confirmation))
    except (TemporaryFailure, PermanentFailure, OutcomeUnknown):  # not sent (or unknown): a retry sends it
        return confirmation
    await run(app.mark_confirmation_sent, confirmation.id, at)
    found: ConsentConfirmation = await run(app.confirmation, confirmation.id) or confirmation
    return found


@dataclass(frozen=True)
class ConfirmResult:
    confirmation: ConsentConfirmation
    #: whether identity recorded the consent (False: no single customer holds the address)
    granted: bool


async def confirm_consent(
    app: SurveyApplication, identity: IdentityClient, token: str, run: Callable[..., Any], at: datetime
) -> ConfirmResult:
    """The person followed the link: check it (signed, not expired, not used), have
    identity record the consent with its proof, then mark the link used. identity's
    recording is idempotent by the token's id, so a crash between the two steps is
    repaired by using the link again."""
    confirmation: ConsentConfirmation = await run(app.confirmation_by_token, token)
    if confirmation.channel != "email":
        raise InvalidToken("not a link confirmation")
    return await _grant(app, identity, confirmation, run, at)


async def confirm_code(
    app: SurveyApplication,
    identity: IdentityClient,
    submission: uuid.UUID,
    code: str,
    run: Callable[..., Any],
    at: datetime,
) -> ConfirmResult:
    """The person typed the code sent by SMS: a wrong one is counted (the fifth locks
    the confirmation), the right one grants as a link does."""
    confirmation = await run(app.confirmation, confirmation_id(submission, "sms"))
    if confirmation is None:
        raise InvalidToken("no SMS confirmation for this submission")
    confirmation.check_usable(at)
    if not hmac.compare_digest(app.confirmation_code(confirmation), code):
        await run(app.refuse_code, confirmation.id, at)
        raise WrongCode("the code does not match")
    return await _grant(app, identity, confirmation, run, at)


async def _grant(
    app: SurveyApplication,
    identity: IdentityClient,
    confirmation: ConsentConfirmation,
    run: Callable[..., Any],
    at: datetime,
) -> ConfirmResult:
    confirmation.check_usable(at)
    body = {
        "identifier": {"kind": confirmation.identifier[0], "hash": confirmation.identifier[1]},
        "channel": confirmation.channel,
        "proof": {
            "form_id": str(confirmation.form_id),
            "submission_id": str(confirmation.submission_id),
            "purpose": confirmation.purpose,
            "wording_version": confirmation.wording_version,
            "confirmed_via": confirmation.channel,
            "confirmed_at": at.isoformat(),
            "token_id": str(confirmation.id),
        },
    }
    try:
        await identity.confirm_consent(body)
        granted = True
    except NotHeld:
        granted = False
    used = await run(app.record_confirmation, confirmation.id, at, granted)
    return ConfirmResult(used, granted)
