"""Surveys and forms over HTTP (engagement's API, port 8002).

Staff routes (``engagement:write`` to change, ``engagement:read`` to read) define
surveys and forms and invite audiences. Public routes (``/v1/public/...``) need no key:
an invitation's signed token is its own authority (one answer each), a public form or an
anonymous survey is open to anyone, so form submissions, anonymous answers and consent
confirmations are rate-limited per client address (``CRM_FORM_RATE_PER_MINUTE``). The
client address is the socket's peer, or the address a trusted proxy
(``CRM_TRUSTED_PROXIES``) names in ``X-Forwarded-For`` (uvicorn's ProxyHeadersMiddleware).
A public form never changes a customer identity knows (identity's public intake) and
its consent counts only once confirmed by the link e-mailed (double opt-in).
``install(app)`` adds the routes, their store's lifespan and the mapping of their errors
to HTTP statuses.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from crm_contracts.envelope import AwareDatetime
from crm_platform.http import ApiError, Principal, error_body, require_scope
from crm_platform.settings import Settings
from engagement.adapters.crm_clients import (
    AnalyticsClient,
    IdentityClient,
    UpstreamRejected,
    UpstreamUnavailable,
)
from engagement.bootstrap import build_membership
from engagement.dispatch.providers import SmtpProvider, WebhookProvider
from engagement.dispatch.settings import MessagingSettings
from engagement.domain.form import (
    ConfirmationExpired,
    ConfirmationLocked,
    ConfirmationUsed,
    ConsentConfirmation,
    ConsentRequest,
    EventFull,
    Form,
    FormClosed,
    FormError,
    FormField,
    FormSubmission,
    InvalidForm,
    InvalidSubmission,
    RegistrationNotFound,
    WrongCode,
)
from engagement.domain.survey import (
    AlreadyAnswered,
    AnonymousNotAllowed,
    InvalidAnswer,
    InvalidSurvey,
    Question,
    Survey,
    SurveyError,
    SurveyNotOpen,
    invitation_id,
)
from engagement.membership import MembershipApplication
from engagement.survey_bootstrap import build_surveys
from engagement.surveys import (
    ConcurrentChange,
    ConfirmationMailer,
    FormNotFound,
    InvalidToken,
    InvitationErased,
    InvitationNotFound,
    RateLimiter,
    ResponseNotFound,
    SurveyApplication,
    SurveyNotFound,
    SurveySettings,
    confirm_code,
    confirm_consent,
    submit_form,
)

Reader = Annotated[Principal, Depends(require_scope("engagement:read"))]
Writer = Annotated[Principal, Depends(require_scope("engagement:write"))]
MAX_EXPLICIT_AUDIENCE = 10_000
#: question, field and consent-purpose ids (what the domain checks, declared in the OpenAPI)
SLUG = r"^[a-z][a-z0-9_]{0,31}$"


@dataclass
class SurveyServices:
    app: SurveyApplication
    #: membership applications enrol members (its own instance on membership's store)
    membership: MembershipApplication
    settings: SurveySettings
    identity: IdentityClient
    analytics: AnalyticsClient
    limiter: RateLimiter
    #: sends consent confirmation links (double opt-in) over SMTP
    mailer: ConfirmationMailer | None = None
    #: the time (tests pass a fixed clock as ``app.state.survey_clock``)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Tests (or an embedding) may set ``app.state.survey_settings`` before start-up.
    survey_settings: SurveySettings = getattr(app.state, "survey_settings", None) or SurveySettings()
    services = SurveyServices(
        app=build_surveys(settings, survey_settings),
        membership=build_membership(settings),
        settings=survey_settings,
        identity=IdentityClient(
            survey_settings.identity_url, survey_settings.identity_api_key.get_secret_value()
        ),
        analytics=AnalyticsClient(
            survey_settings.analytics_url, survey_settings.analytics_api_key.get_secret_value()
        ),
        limiter=RateLimiter(survey_settings.form_rate_per_minute),
        mailer=_mailer(app, survey_settings),
        clock=getattr(app.state, "survey_clock", None) or (lambda: datetime.now(UTC)),
    )
    app.state.surveys = services
    try:
        yield
    finally:
        if services.mailer is not None:
            await services.mailer.aclose()
        await services.identity.close()
        await services.analytics.close()
        services.app.close()
        services.membership.close()


def _mailer(app: FastAPI, survey_settings: SurveySettings) -> ConfirmationMailer:
    """The SMTP path the campaign dispatcher uses (``CRM_SMTP_*``, ``CRM_MAIL_FROM``)."""
    messaging: MessagingSettings = getattr(app.state, "messaging", None) or MessagingSettings()
    provider = SmtpProvider(
        messaging.smtp_host,
        messaging.smtp_port,
        messaging.mail_from,
        username=messaging.smtp_username,
        password=messaging.smtp_password.get_secret_value() if messaging.smtp_password else None,
        security=messaging.smtp_security,
        timeout_s=messaging.smtp_timeout_s,
        pool_size=2,
    )
    base = survey_settings.survey_public_base_url.rstrip("/")
    sms = None
    if messaging.sms_webhook_url:
        sms = WebhookProvider(messaging.sms_webhook_url, messaging.webhook_secret.get_secret_value())
    return ConfirmationMailer(provider, f"{base}/v1/public/consent-confirmations/", sms)


class TrustedProxyHeaders:
    """uvicorn's ProxyHeadersMiddleware with the proxies of ``CRM_TRUSTED_PROXIES``
    (read when the first request arrives, from ``app.state.survey_settings`` when a test
    or an embedding set it): ``X-Forwarded-For`` names the client only when the peer
    is one of them; an empty list believes no header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inner: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inner = self._inner
        if inner is None:
            state = scope["app"].state
            survey_settings = getattr(state, "survey_settings", None) or SurveySettings()
            trusted = list(survey_settings.trusted_proxies)
            inner = self.app
            if trusted:
                inner = cast(ASGIApp, ProxyHeadersMiddleware(cast(Any, self.app), trusted_hosts=trusted))
            self._inner = inner
        await inner(scope, receive, send)


async def _services(request: Request) -> SurveyServices:
    services: SurveyServices = request.app.state.surveys
    return services


Services = Annotated[SurveyServices, Depends(_services)]


async def _run(fn: Callable[..., Any], *args: Any) -> Any:
    """Store work is blocking I/O: off the event loop."""
    return await asyncio.to_thread(fn, *args)


def _now() -> datetime:
    return datetime.now(UTC)


# -- schemas -------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuestionIn(_Strict):
    id: str = Field(pattern=SLUG, description="slug: a-z, 0-9, _ (a letter first)")
    kind: Literal["nps", "csat", "single_choice", "multiple_choice", "free_text"]
    text: str = Field(min_length=1, max_length=500)
    required: bool = True
    choices: list[str] = Field(default_factory=list, max_length=20)
    max_choices: int | None = Field(default=None, ge=1, le=20)
    max_length: int = Field(default=500, ge=1, le=2000, description="free text: characters")

    def domain(self) -> Question:
        return Question(
            self.id,
            self.kind,
            self.text,
            self.required,
            tuple(self.choices),
            self.max_choices,
            self.max_length,
        )


class SurveyCreate(_Strict):
    title: str = Field(min_length=1, max_length=200)
    questions: list[QuestionIn] = Field(min_length=1, max_length=50)
    allow_anonymous: bool = Field(default=False, description="answers by a public link, without invitation")
    open: bool = Field(default=True, description="open for answers at once")


class QuestionsEdit(_Strict):
    questions: list[QuestionIn] = Field(min_length=1, max_length=50)


class SurveyView(BaseModel):
    survey_id: uuid.UUID
    title: str
    status: str
    version: int
    versions: int
    allow_anonymous: bool
    questions: list[dict[str, Any]]
    public_url: str | None = Field(description="the anonymous answer link, when allowed")


class SegmentAudience(_Strict):
    name: Literal["new", "repeat", "loyal", "dormant"]
    channel: Literal["all", "store", "online", "app"] = "all"
    limit: int = Field(default=10_000, ge=1, le=1_000_000)


class InvitationsCreate(_Strict):
    customer_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None, max_length=MAX_EXPLICIT_AUDIENCE, description="customer ids (or keys) to invite"
    )
    segment: SegmentAudience | None = Field(default=None, description="an analytics segment to invite")


class InvitationView(BaseModel):
    invitation_id: uuid.UUID
    customer_id: str
    survey_url: str = Field(description="the signed per-recipient link: a template's `survey_url`")
    new: bool


class InvitationsResult(BaseModel):
    survey_id: uuid.UUID
    audience: str
    invited: int
    already_invited: int
    invitations: list[InvitationView]


class AnswersIn(_Strict):
    answers: dict[str, int | str | list[str] | None] = Field(max_length=50)


class AnonymousAnswersIn(AnswersIn):
    response_id: uuid.UUID = Field(description="made by the client once per response: a retry sends it again")


class AnswerResult(BaseModel):
    response_id: uuid.UUID
    survey_id: uuid.UUID
    survey_version: int
    answered_at: datetime
    recorded: bool = Field(description="false when this was a retry of an answer recorded before")


class PublicSurvey(BaseModel):
    survey_id: uuid.UUID
    title: str
    version: int
    questions: list[dict[str, Any]]
    answered: bool


class FieldIn(_Strict):
    id: str = Field(pattern=SLUG, description="slug: a-z, 0-9, _ (a letter first); unique in the form")
    kind: Literal[
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
        "choice",
        "multi_choice",
        "boolean",
        "number",
    ]
    label: str = Field(min_length=1, max_length=200)
    required: bool = False
    choices: list[str] = Field(default_factory=list, max_length=20)
    minimum: int | None = None
    maximum: int | None = None

    def domain(self) -> FormField:
        return FormField(
            self.id, self.kind, self.label, self.required, tuple(self.choices), self.minimum, self.maximum
        )


class ConsentIn(_Strict):
    purpose: str = Field(pattern=SLUG, description="a slug: marketing, event_updates, ...")
    wording: str = Field(min_length=1, max_length=2000, description="the text the person agrees to")
    wording_version: str = Field(min_length=1, max_length=32)
    channels: list[Literal["email", "sms", "line", "app_push", "postal"]] = Field(max_length=5)


class FormCreate(_Strict):
    kind: Literal["signup", "membership", "event_registration"]
    title: str = Field(min_length=1, max_length=200)
    fields: list[FieldIn] = Field(min_length=1, max_length=30)
    consent: ConsentIn
    capacity: int | None = Field(default=None, ge=1, le=100_000, description="event registration: places")
    waitlist: int = Field(default=0, ge=0, le=100_000, description="event registration: waitlist places")
    event_starts_at: AwareDatetime | None = None


class FormView(BaseModel):
    form_id: uuid.UUID
    kind: str
    title: str
    status: str
    fields: list[dict[str, Any]]
    consent: dict[str, Any]
    capacity: int | None
    waitlist: int
    event_starts_at: datetime | None
    confirmed: int
    waitlisted: int


class SubmissionIn(_Strict):
    submission_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="made by the client once per submission: a retry sends it again. Without it, "
        "the same person submitting the form again is the same submission",
    )
    fields: dict[str, str | int | bool | list[str] | None] = Field(max_length=30)
    consent: dict[str, bool] = Field(default_factory=dict, max_length=5)


class SubmissionResult(BaseModel):
    """What the person submitting learns: nothing about whether the retailer knew them
    already (no customer id, no outcome: a public form must not tell a stranger whether
    an e-mail is on file). Staff read the rest at ``GET /v1/forms/{id}/submissions/{sid}``.
    ``consent`` is what was ticked; none of it is granted before it is confirmed."""

    submission_id: uuid.UUID
    form_id: uuid.UUID
    registration: str | None = Field(description="event forms: confirmed | waitlisted | cancelled")
    waitlist_position: int | None
    member_no: str | None = Field(
        description="membership applications: the member number issued (in the first answer, and in "
        "a retry that carries the client's own submission_id)"
    )
    consent: dict[str, Any]
    confirmation: dict[str, str] = Field(
        default_factory=dict,
        description="per consent channel ticked that can be confirmed (`email`: a link by "
        "e-mail; `sms`: a code by SMS, when an SMS provider is configured): `sent` (nothing "
        "is granted until it is confirmed), `unsent` (it could not be sent: retry the "
        "submission), `confirmed`, `expired`",
    )
    submitted_at: datetime


class ConfirmationView(BaseModel):
    """What a confirmation page shows: no personal data, no customer."""

    form_id: uuid.UUID
    title: str
    purpose: str
    wording: str
    wording_version: str
    channel: str
    status: Literal["pending", "confirmed", "expired"]
    expires_at: datetime


class ConfirmationResult(BaseModel):
    form_id: uuid.UUID
    channel: str
    status: Literal["confirmed"]
    confirmed_at: datetime


class SubmissionView(BaseModel):
    submission_id: uuid.UUID
    form_id: uuid.UUID
    form_kind: str
    customer_id: uuid.UUID
    outcome: str = Field(description="identity's answer: created | linked | matched | merged")
    registration: str | None
    member_key: str | None = Field(description="blind index of the member number issued")
    consent: dict[str, Any]
    answers: dict[str, Any]
    submitted_at: datetime


# -- views ---------------------------------------------------------------------------------


def _survey_view(survey: Survey, services: SurveyServices) -> SurveyView:
    public = None
    if survey.allow_anonymous:
        public = f"{services.settings.survey_public_base_url}/v1/public/surveys/{survey.id}"
    return SurveyView(
        survey_id=survey.id,
        title=survey.title,
        status=survey.status,
        version=survey.current_version,
        versions=len(survey.versions),
        allow_anonymous=survey.allow_anonymous,
        questions=[q.as_dict() for q in survey.questions()],
        public_url=public,
    )


def _form_view(form: Form) -> FormView:
    return FormView(
        form_id=form.id,
        kind=form.kind,
        title=form.title,
        status=form.status,
        fields=form.fields,
        consent=form.consent,
        capacity=form.capacity,
        waitlist=form.waitlist,
        event_starts_at=form.event_starts_at,
        confirmed=len(form.confirmed()),
        waitlisted=len(form.waiting()),
    )


def _client_address(request: Request) -> str:
    """The socket's peer, or the client a trusted proxy named (``TrustedProxyHeaders``).
    An IPv6 client counts by its /64: one connection holds the whole network, so each
    address on its own would be a fresh bucket per request."""
    host = request.client.host if request.client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return host


def _limit(services: SurveyServices, request: Request, what: str) -> None:
    if not services.limiter.allow(f"{what}:{_client_address(request)}"):
        raise ApiError(
            429,
            "rate_limited",
            f"at most {services.limiter.per_minute} submissions a minute from one address",
            {"Retry-After": "60"},
        )


# -- surveys (staff) -----------------------------------------------------------------------

surveys = APIRouter(prefix="/v1/surveys", tags=["surveys"])


@surveys.post("", status_code=201, response_model=SurveyView, summary="Define a survey (typed questions)")
async def create_survey(body: SurveyCreate, services: Services, _: Writer) -> SurveyView:
    """Questions: ``nps`` (0–10), ``csat`` (1–5), ``single_choice``, ``multiple_choice``
    (2–20 options) and ``free_text`` (``max_length`` characters), each required or not."""
    app = services.app
    survey = await _run(
        app.define_survey, body.title, [q.domain() for q in body.questions], body.allow_anonymous, _now()
    )
    if body.open:
        survey = await _run(app.set_survey_status, survey.id, "open", _now())
    return _survey_view(survey, services)


@surveys.get("/{survey_id}", response_model=SurveyView, summary="A survey's current questions and state")
async def get_survey(survey_id: uuid.UUID, services: Services, _: Reader) -> SurveyView:
    return _survey_view(await _run(services.app.survey, survey_id), services)


@surveys.put("/{survey_id}/questions", response_model=SurveyView, summary="Edit the questions")
async def edit_questions(
    survey_id: uuid.UUID, body: QuestionsEdit, services: Services, _: Writer
) -> SurveyView:
    """Before any answer, the current version is rewritten; after answers exist, the
    edit is a new version and earlier answers keep the version they answered."""
    survey = await _run(services.app.edit_survey, survey_id, [q.domain() for q in body.questions], _now())
    return _survey_view(survey, services)


@surveys.post("/{survey_id}/open", response_model=SurveyView, summary="Open a survey for answers")
async def open_survey(survey_id: uuid.UUID, services: Services, _: Writer) -> SurveyView:
    return _survey_view(await _run(services.app.set_survey_status, survey_id, "open", _now()), services)


@surveys.post("/{survey_id}/close", response_model=SurveyView, summary="Close a survey (no more answers)")
async def close_survey(survey_id: uuid.UUID, services: Services, _: Writer) -> SurveyView:
    return _survey_view(await _run(services.app.set_survey_status, survey_id, "closed", _now()), services)


@surveys.post(
    "/{survey_id}/invitations",
    response_model=InvitationsResult,
    summary="Invite an audience: explicit customer ids or an analytics segment",
    responses={
        422: {"description": "no audience, both audiences, an unknown segment"},
        503: {"description": "analytics did not answer"},
    },
)
async def invite(
    survey_id: uuid.UUID, body: InvitationsCreate, services: Services, _: Writer
) -> InvitationsResult:
    """Each customer gets one invitation with a signed link (``survey_url``) for a
    campaign's message; inviting someone again returns their existing link."""
    if (body.customer_ids is None) == (body.segment is None):
        raise ApiError(422, "invalid_request", "give exactly one of customer_ids and segment")
    if body.segment is not None:
        limit = min(body.segment.limit, services.settings.survey_max_audience)
        keys = await services.analytics.segment_customers(body.segment.name, limit, body.segment.channel)
        audience = f"segment:{body.segment.name}"
    else:
        keys = body.customer_ids or []
        audience = "customers"
    invitations = await _run(services.app.invite, survey_id, keys, audience, _now())
    base = services.settings.invitation_url_prefix
    return InvitationsResult(
        survey_id=survey_id,
        audience=audience,
        invited=sum(i.new for i in invitations),
        already_invited=sum(not i.new for i in invitations),
        invitations=[
            InvitationView(
                invitation_id=i.invitation_id,
                customer_id=i.customer_key,
                survey_url=base + i.token,
                new=i.new,
            )
            for i in invitations
        ],
    )


@surveys.get(
    "/{survey_id}/invitations/{customer_id}",
    response_model=InvitationView,
    summary="One customer's invitation and link (for a message template's `survey_url`)",
)
async def get_invitation(
    survey_id: uuid.UUID,
    customer_id: Annotated[str, Path(min_length=1, max_length=128)],
    services: Services,
    _: Reader,
) -> InvitationView:
    iid = invitation_id(survey_id, customer_id)
    response = await _run(services.app.response, iid)
    if response is None:
        raise InvitationNotFound(f"{customer_id} is not invited to survey {survey_id}")
    return InvitationView(
        invitation_id=iid,
        customer_id=customer_id,
        survey_url=services.app.survey_url(services.settings.invitation_url_prefix, iid),
        new=False,
    )


class AnswerView(BaseModel):
    question_id: str
    kind: str | None
    value: int | str | list[str] | None = Field(description="free text: null once erased")
    erased: bool = Field(default=False, description="free text whose customer was erased (its key deleted)")
    withheld: bool = Field(default=False, description="free text not shown: the key lacks engagement:pii")


class ResponseView(BaseModel):
    response_id: uuid.UUID
    survey_id: uuid.UUID
    survey_version: int | None
    customer_id: str | None
    anonymous: bool
    answered_at: datetime
    answers: list[AnswerView]


@surveys.get(
    "/{survey_id}/responses/{response_id}",
    response_model=ResponseView,
    summary="One answered response, free text included (staff)",
    responses={404: {"description": "no answered response of that id in this survey"}},
)
async def get_response(
    survey_id: uuid.UUID, response_id: uuid.UUID, services: Services, principal: Reader
) -> ResponseView:
    """The answers of one response (the invitation id, or an anonymous response's id).
    Free text is personal data (people write names and phone numbers in it): only a key
    with ``engagement:pii`` reads it, opened with the response's data key; to
    ``engagement:read`` alone it is ``null`` with ``withheld: true``. After the
    customer's erasure it reads as ``null`` with ``erased: true`` while scores and
    choices remain."""
    free_text = principal.allows("engagement:pii")
    view = await _run(functools.partial(services.app.read_response, response_id, free_text=free_text))
    if view["survey_id"] != survey_id:
        raise ResponseNotFound(f"no answered response {response_id} in survey {survey_id}")
    return ResponseView.model_validate(view)


# -- surveys (public) ----------------------------------------------------------------------

public = APIRouter(prefix="/v1/public", tags=["public: surveys and forms"])


def _public_survey(survey: Survey, answered: bool) -> PublicSurvey:
    return PublicSurvey(
        survey_id=survey.id,
        title=survey.title,
        version=survey.current_version,
        questions=[q.as_dict() for q in survey.questions()],
        answered=answered,
    )


@public.get("/survey-invitations/{token}", response_model=PublicSurvey, summary="The survey behind a link")
async def invitation_survey(token: Annotated[str, Path(max_length=100)], services: Services) -> PublicSurvey:
    """What a survey page renders for the person the link was sent to (404 for a link
    that was not issued or was altered)."""
    response, survey = await _run(services.app.invitation, token)
    return _public_survey(survey, response.answered_at is not None)


def _answer_result(response: Any, recorded: bool) -> JSONResponse:
    result = AnswerResult(
        response_id=response.id,
        survey_id=response.survey_id,
        survey_version=response.answered_version,
        answered_at=response.answered_at,
        recorded=recorded,
    )
    return JSONResponse(result.model_dump(mode="json"), status_code=201 if recorded else 200)


@public.post(
    "/survey-invitations/{token}/answers",
    response_model=AnswerResult,
    status_code=201,
    summary="Answer by invitation (once)",
    responses={
        200: {"description": "the same answer again (a retry): nothing changed"},
        409: {"description": "answered before with other answers, or the survey is not open"},
        422: {"description": "an answer does not fit its question: `fields` name it"},
    },
)
async def answer_invitation(
    token: Annotated[str, Path(max_length=100)], body: AnswersIn, services: Services
) -> JSONResponse:
    """Not rate-limited: a signed invitation takes one answer, so its own bound is one
    per invitation sent (a campaign's thousands of recipients may share a proxy's address)."""
    response, recorded = await _run(services.app.answer_invitation, token, body.answers, _now())
    return _answer_result(response, recorded)


@public.get("/surveys/{survey_id}", response_model=PublicSurvey, summary="An anonymous survey's questions")
async def anonymous_survey(survey_id: uuid.UUID, services: Services) -> PublicSurvey:
    survey = await _run(services.app.survey, survey_id)
    if not survey.allow_anonymous:
        raise SurveyNotFound(f"no public survey {survey_id}")
    return _public_survey(survey, False)


@public.post(
    "/surveys/{survey_id}/answers",
    response_model=AnswerResult,
    status_code=201,
    summary="Answer anonymously by the public link (when the survey allows it)",
    responses={200: {"description": "a retry of the same response"}, 403: {"description": "invitation only"}},
)
async def answer_anonymously(
    survey_id: uuid.UUID, body: AnonymousAnswersIn, services: Services, request: Request
) -> JSONResponse:
    _limit(services, request, "answer")
    response, recorded = await _run(
        services.app.answer_anonymously, survey_id, str(body.response_id), body.answers, _now()
    )
    return _answer_result(response, recorded)


# -- forms ---------------------------------------------------------------------------------

forms = APIRouter(prefix="/v1/forms", tags=["forms"])


@forms.post("", status_code=201, response_model=FormView, summary="Define a form")
async def create_form(body: FormCreate, services: Services, _: Writer) -> FormView:
    """A sign-up, membership application or event/seminar registration (with capacity
    and waitlist). Personal fields go to identity; the consent is asked with its purpose
    and the version of its wording, which every submission records."""
    consent = ConsentRequest(
        body.consent.purpose, body.consent.wording, body.consent.wording_version, tuple(body.consent.channels)
    )
    form = await _run(
        services.app.define_form,
        body.kind,
        body.title,
        [f.domain() for f in body.fields],
        consent,
        _now(),
        body.capacity,
        body.waitlist,
        body.event_starts_at,
    )
    return _form_view(form)


@forms.get("/{form_id}", response_model=FormView, summary="A form, with its registrations")
async def get_form(form_id: uuid.UUID, services: Services, _: Reader) -> FormView:
    return _form_view(await _run(services.app.form, form_id))


@forms.post("/{form_id}/close", response_model=FormView, summary="Stop taking submissions")
async def close_form(form_id: uuid.UUID, services: Services, _: Writer) -> FormView:
    return _form_view(await _run(services.app.close_form, form_id, _now()))


@forms.delete(
    "/{form_id}/registrations/{submission_id}",
    response_model=FormView,
    summary="Cancel an event registration (the first on the waitlist moves up)",
)
async def cancel_registration(
    form_id: uuid.UUID, submission_id: uuid.UUID, services: Services, _: Writer
) -> FormView:
    return _form_view(await _run(services.app.cancel_registration, form_id, submission_id, _now()))


@public.get("/forms/{form_id}", response_model=FormView, summary="A form to render")
async def public_form(form_id: uuid.UUID, services: Services) -> FormView:
    return _form_view(await _run(services.app.form, form_id))


@public.post(
    "/forms/{form_id}/submissions",
    response_model=SubmissionResult,
    status_code=201,
    summary="Submit a form: creates or links the customer in identity, records consent",
    responses={
        200: {"description": "a retry of a recorded submission: the same result"},
        409: {"description": "the form is closed, or the event and its waitlist are full"},
        422: {"description": "invalid: `fields` name the field"},
        429: {"description": "too many submissions from this address"},
        503: {"description": "identity did not answer: retry with the same submission_id"},
    },
)
async def submit(
    form_id: uuid.UUID, body: SubmissionIn, services: Services, request: Request
) -> JSONResponse:
    _limit(services, request, "form")
    done = await submit_form(
        services.app,
        services.identity,
        form_id,
        body.fields,
        body.consent,
        body.submission_id,
        _run,
        services.membership,
        services.mailer,
        services.clock(),
        timedelta(seconds=services.settings.consent_confirmation_ttl_s),
    )
    s, form = done.submission, done.form
    registration, position = _registration(form, s)
    # A retry without the client's own key is keyed by the e-mail (or phone): whoever
    # knows that must not learn the member number from it.
    member_no = done.member_no if done.created or body.submission_id is not None else None
    result = SubmissionResult(
        submission_id=s.id,
        form_id=form.id,
        registration=registration,
        waitlist_position=position,
        member_no=member_no,
        consent=s.consent,
        confirmation={c.channel: _confirmation_state(c, services.clock()) for c in done.confirmations},
        submitted_at=s.submitted_at,
    )
    return JSONResponse(result.model_dump(mode="json"), status_code=201 if done.created else 200)


def _confirmation_state(confirmation: ConsentConfirmation, now: datetime) -> str:
    if confirmation.confirmed_at is not None:
        return "confirmed"
    if now >= confirmation.expires_at:
        return "expired"
    return "sent" if confirmation.sent_at is not None else "unsent"


@public.get(
    "/consent-confirmations/{token}",
    response_model=ConfirmationView,
    summary="What a consent confirmation link confirms (for a confirmation page)",
    responses={404: {"description": "not a link we issued"}, 429: {"description": "rate limited"}},
)
async def confirmation_page(
    token: Annotated[str, Path(max_length=100)], services: Services, request: Request
) -> ConfirmationView:
    """Reading changes nothing (mail scanners open links): confirming is the POST."""
    _limit(services, request, "confirm")
    confirmation = await _run(services.app.confirmation_by_token, token)
    form = await _run(services.app.form, confirmation.form_id)
    request_ = form.consent_request()
    state = _confirmation_state(confirmation, services.clock())
    if confirmation.channel != "email":
        raise InvalidToken("not a link confirmation")
    return ConfirmationView(
        form_id=form.id,
        title=form.title,
        purpose=confirmation.purpose,
        wording=request_.wording,
        wording_version=confirmation.wording_version,
        channel=confirmation.channel,
        status="confirmed" if state == "confirmed" else "expired" if state == "expired" else "pending",
        expires_at=confirmation.expires_at,
    )


@public.post(
    "/consent-confirmations/{token}",
    response_model=ConfirmationResult,
    summary="Confirm the consent given on a form (double opt-in): once, before it expires",
    responses={
        404: {"description": "not a link we issued (altered, forged)"},
        409: {"description": "`already_confirmed`: the link was used (it works once)"},
        410: {"description": "`confirmation_expired`: submit the form again for a new link"},
        429: {"description": "rate limited"},
        503: {"description": "identity did not answer: use the link again"},
    },
)
async def confirm(
    token: Annotated[str, Path(max_length=100)], services: Services, request: Request
) -> ConfirmationResult:
    """identity records the consent with its proof (form, submission, wording version,
    how and when it was confirmed, the token's id) for the customer holding the address
    the link was sent to."""
    _limit(services, request, "confirm")
    done = await confirm_consent(services.app, services.identity, token, _run, services.clock())
    c = done.confirmation
    assert c.confirmed_at is not None
    return ConfirmationResult(
        form_id=c.form_id, channel=c.channel, status="confirmed", confirmed_at=c.confirmed_at
    )


class CodeIn(_Strict):
    code: str = Field(pattern=r"^[0-9]{6}$", description="the six digits sent by SMS")


@public.post(
    "/forms/{form_id}/submissions/{submission_id}/sms-confirmation",
    response_model=ConfirmationResult,
    summary="Confirm the SMS consent given on a form with the code sent by SMS (double opt-in)",
    responses={
        404: {"description": "no SMS confirmation for this submission"},
        409: {"description": "`already_confirmed`, or `too_many_attempts` (5 wrong codes)"},
        410: {"description": "`confirmation_expired`"},
        422: {"description": "`invalid_code`: the code does not match (counted)"},
        429: {"description": "rate limited"},
    },
)
async def confirm_sms(
    form_id: uuid.UUID, submission_id: uuid.UUID, body: CodeIn, services: Services, request: Request
) -> ConfirmationResult:
    """identity records SMS consent with its proof (``confirmed_via: sms``) for the
    customer holding the phone the code was sent to."""
    _limit(services, request, "confirm")
    s = await _run(services.app.submission_by_id, submission_id)
    if s is None or s.form_id != form_id:
        raise FormNotFound(f"no submission {submission_id} of form {form_id}")
    done = await confirm_code(
        services.app, services.identity, submission_id, body.code, _run, services.clock()
    )
    c = done.confirmation
    assert c.confirmed_at is not None
    return ConfirmationResult(
        form_id=c.form_id, channel=c.channel, status="confirmed", confirmed_at=c.confirmed_at
    )


def _registration(form: Form, s: FormSubmission) -> tuple[str | None, int | None]:
    held = form.registrations.get(s.customer_id)
    if held is not None and held.submission_id == str(s.id):
        return held.status, form.position(s.customer_id)
    return s.registration, None


@forms.get(
    "/{form_id}/submissions/{submission_id}",
    response_model=SubmissionView,
    summary="A submission: the customer identity resolved, the consent given",
)
async def get_submission(
    form_id: uuid.UUID, submission_id: uuid.UUID, services: Services, _: Reader
) -> SubmissionView:
    form = await _run(services.app.form, form_id)
    s = await _run(services.app.submission_by_id, submission_id)
    if s is None or s.form_id != form.id:
        raise FormNotFound(f"no submission {submission_id} of form {form_id}")
    return SubmissionView(
        submission_id=s.id,
        form_id=form.id,
        form_kind=s.form_kind,
        customer_id=uuid.UUID(s.customer_id),
        outcome=s.outcome,
        registration=_registration(form, s)[0],
        member_key=s.member_no_hash,
        consent=s.consent,
        answers=s.answers,
        submitted_at=s.submitted_at,
    )


# -- errors --------------------------------------------------------------------------------


def _field_error(status: int, code: str, field: str, reason: str) -> JSONResponse:
    fields = [{"field": field, "reason": reason, "type": "value_error"}]
    return JSONResponse(error_body(code, f"{field}: {reason}", fields=fields), status_code=status)


async def _handle(_: Request, exc: Exception) -> Response:
    if isinstance(exc, InvalidAnswer):
        return _field_error(422, "invalid_answer", f"answers.{exc.question}", exc.reason)
    if isinstance(exc, WrongCode):
        return _field_error(422, "invalid_code", "code", str(exc))
    if isinstance(exc, InvalidSurvey | InvalidForm | InvalidSubmission):
        return _field_error(422, "invalid_request", exc.field, exc.reason)
    if isinstance(exc, UpstreamRejected):
        return JSONResponse(error_body("invalid_request", str(exc), fields=exc.fields), status_code=422)
    if isinstance(exc, UpstreamUnavailable):
        return JSONResponse(
            error_body("unavailable", str(exc)), status_code=503, headers={"Retry-After": "2"}
        )
    status, code = _STATUS.get(type(exc), (422, "unprocessable"))
    return JSONResponse(error_body(code, str(exc)), status_code=status)


_STATUS: dict[type[Exception], tuple[int, str]] = {
    SurveyNotFound: (404, "not_found"),
    FormNotFound: (404, "not_found"),
    InvitationNotFound: (404, "not_found"),
    ResponseNotFound: (404, "not_found"),
    InvitationErased: (410, "erased"),
    InvalidToken: (404, "not_found"),
    RegistrationNotFound: (404, "not_found"),
    AlreadyAnswered: (409, "already_answered"),
    SurveyNotOpen: (409, "survey_not_open"),
    ConfirmationUsed: (409, "already_confirmed"),
    ConfirmationLocked: (409, "too_many_attempts"),
    ConfirmationExpired: (410, "confirmation_expired"),
    FormClosed: (409, "form_closed"),
    EventFull: (409, "event_full"),
    ConcurrentChange: (409, "concurrent_update"),
    AnonymousNotAllowed: (403, "invitation_only"),
}

_HANDLED: tuple[type[Exception], ...] = (
    SurveyError,
    FormError,
    InvalidToken,
    ConcurrentChange,
    UpstreamRejected,
    UpstreamUnavailable,
)


def install(app: FastAPI) -> None:
    """Add the survey and form routes, their store's lifespan and error mapping."""
    root = APIRouter(lifespan=_lifespan)
    for router in (surveys, forms, public):
        root.include_router(router)
    app.include_router(root)
    handler: Callable[[Request, Exception], Awaitable[Response]] = _handle
    for exc_type in _HANDLED:
        app.add_exception_handler(exc_type, handler)
    app.add_middleware(TrustedProxyHeaders)
