"""Campaign routes of the engagement API, and the tracking endpoints messages link to.

``/v1/campaigns`` (staff keys: ``engagement:read`` / ``engagement:write``): create a
campaign (checked whole: channels, variants, rules, every template — a template naming
an unknown field, or past a bound of ``engagement.dispatch.render``, is a 422 naming the
variant's field and the reason; templates are checked in worker processes, never on the
event loop), launch it (the audience is
resolved — an analytics segment or an explicit list — and frozen), pause, resume,
cancel, and read its progress. ``POST /v1/messages/{id}/bounces`` takes a provider's
bounce report.

``/t/...`` (no key: they are in the messages): the open pixel, the click redirect and the
unsubscribe page, each behind a signed token (``engagement.tracking``). A token that
does not verify is a 404, a link the message did not contain is refused; nothing
personal is in the URL.

Included from ``entrypoints/api.py``; its own lifespan opens the campaigns' store and
the clients of identity and analytics.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_contracts.envelope import AwareDatetime
from crm_platform.http import ApiError, Principal, require_scope
from crm_platform.paging import DEFAULT_LIMIT, Cursor, Limit, decode_cursor, encode_cursor, invalid_cursor
from engagement.campaigns import (
    CampaignApplication,
    CampaignNotFound,
    ConcurrentCampaignUpdate,
    MessageNotFound,
)
from engagement.dispatch.clients import AudienceTooLarge, ServiceClients, ServiceUnavailable, UnknownSegment
from engagement.dispatch.render import TemplateLimitError, TemplateWorkers, TemplateWorkersUnavailable
from engagement.dispatch.settings import MessagingSettings
from engagement.dispatch.wiring import build_campaigns, build_clients, build_signer
from engagement.domain.campaign import (
    CONDITIONS,
    ENHANCED_STATUS,
    Campaign,
    CampaignError,
    CampaignStateError,
    InvalidCampaign,
    validate_plan,
)
from engagement.tracking import InvalidToken, TrackingSigner

log = logging.getLogger(__name__)
T = TypeVar("T")

Channel = Literal["email", "sms", "line", "app_push"]
Condition = Literal["rank", "segment", "prefecture", "age_band", "gender", "birthday_month"]
_HOST = r"^[A-Za-z0-9.-]{1,253}$"
#: 1×1 transparent GIF
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.settings
    messaging: MessagingSettings = getattr(app.state, "messaging", None) or MessagingSettings()
    app.state.messaging = messaging
    app.state.campaigns = await asyncio.to_thread(build_campaigns, settings)
    app.state.campaign_clients = build_clients(messaging)
    app.state.tracking_signer = build_signer(settings)
    # templates are checked in worker processes, never on this event loop
    app.state.templates = TemplateWorkers(messaging.template_workers, messaging.template_time_limit_s)
    try:
        yield
    finally:
        await app.state.templates.aclose()
        await app.state.campaign_clients.aclose()
        app.state.campaigns.close()


router = APIRouter(lifespan=_lifespan)
campaigns = APIRouter(prefix="/v1", tags=["campaigns"])
tracking = APIRouter(prefix="/t", tags=["tracking"])
Reader = Annotated[Principal, Depends(require_scope("engagement:read"))]
Writer = Annotated[Principal, Depends(require_scope("engagement:write"))]


async def _app(request: Request) -> CampaignApplication:
    app: CampaignApplication = request.app.state.campaigns
    return app


CampaignsDep = Annotated[CampaignApplication, Depends(_app)]


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """Run a store command off the event loop; domain errors become HTTP errors."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (CampaignNotFound, MessageNotFound) as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except (CampaignStateError, ConcurrentCampaignUpdate) as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except InvalidCampaign as exc:
        raise ApiError(422, "invalid_campaign", str(exc)) from None
    except CampaignError as exc:
        raise ApiError(422, "campaign_error", str(exc)) from None


# -- schemas ----------------------------------------------------------------------------


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="unique in the campaign")
    subject: str | None = Field(default=None, max_length=500, description="e-mail subject (template)")
    body: str = Field(min_length=1, max_length=20_000, description="text body (template)")
    html: str | None = Field(default=None, max_length=20_000, description="e-mail HTML body (template)")


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: str = Field(min_length=1, max_length=64)
    when: dict[Condition, list[Annotated[str, Field(min_length=1, max_length=64)]]] = Field(
        description=f"conditions ({', '.join(CONDITIONS)}), each with the values it accepts; all must hold"
    )


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segment: Literal["new", "repeat", "loyal", "dormant"] | None = Field(
        default=None, description="an analytics RFM segment, resolved at launch"
    )
    customer_ids: list[uuid.UUID] | None = Field(default=None, max_length=20_000)

    @model_validator(mode="after")
    def _one(self) -> AudienceIn:
        if (self.segment is None) == (self.customer_ids is None):
            raise ValueError("name either a segment or customer_ids")
        return self


#: campaign ids derived from clients' request ids
_REQUESTS = uuid.UUID("2f1d8a4e-6b0c-5e7a-9c3d-8e5f1a2b4c6d")


class CampaignCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._:-]{1,128}$",
        description="the client's id for this request: a retry returns the campaign it created",
    )
    name: str = Field(min_length=1, max_length=200)
    channels: list[Channel] = Field(min_length=1, max_length=4, description="in order of preference")
    audience: AudienceIn
    variants: list[VariantIn] = Field(min_length=1, max_length=500)
    rules: list[RuleIn] = Field(default=[], max_length=1000, description="first match wins")
    default_variant: str = Field(min_length=1, max_length=64)
    send_at: AwareDatetime | None = Field(default=None, description="default: at launch")
    holdout_pct: float = Field(default=0, ge=0, le=50, description="control group kept out, for uplift")
    attribution_days: int = Field(default=14, ge=1, le=90, description="conversion window of the report")
    quiet_hours: tuple[Annotated[int, Field(ge=0, le=23)], Annotated[int, Field(ge=0, le=23)]] | None = Field(
        default=None, description="[start, end) local hours nothing is sent in, e.g. [21, 8]"
    )
    link_hosts: list[Annotated[str, Field(pattern=_HOST)]] = Field(
        default=[], max_length=50, description="hosts whose links are click-tracked (and redirected to)"
    )


class Cancellation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="cancelled by staff", min_length=1, max_length=200)


class BounceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["hard", "soft"]
    reason: str = Field(
        default="",
        pattern=ENHANCED_STATUS,
        description="the RFC 3463 enhanced status code of the bounce (e.g. 5.1.1), or empty. A bounce's "
        "text is not accepted: it quotes addresses, and the reason is published",
    )


class CampaignView(BaseModel):
    campaign_id: uuid.UUID
    name: str
    status: Literal["draft", "launched", "paused", "cancelled", "completed"]
    channels: list[Channel]
    audience: dict[str, Any] = Field(description="the segment's name, or how many customer ids were listed")
    variants: list[str]
    default_variant: str
    rules: list[dict[str, Any]]
    send_at: datetime
    holdout_pct: float
    attribution_days: int
    quiet_hours: list[int] | None
    link_hosts: list[str]
    created_at: datetime
    launched_at: datetime | None
    recipients: int
    holdout: int


class CampaignProgress(BaseModel):
    pending: int
    sending: int
    sent: int
    failed: int
    skipped: dict[str, int] = Field(description="per reason")
    sent_by_variant: dict[str, int]
    opened: int
    clicked: int
    bounced: int
    opted_out: int


class CampaignDetail(CampaignView):
    progress: CampaignProgress


class BounceRecorded(BaseModel):
    message_id: uuid.UUID
    recorded: bool = Field(description="false when the message's bounce was recorded before")


def _view(campaign: Campaign) -> dict[str, Any]:
    return {
        "campaign_id": str(campaign.id),
        "name": campaign.name,
        "status": campaign.status,
        "channels": campaign.channels,
        "audience": {"segment": campaign.audience["segment"]}
        if "segment" in campaign.audience
        else {"customer_ids": len(campaign.audience.get("customer_ids", []))},
        "variants": [v["id"] for v in campaign.variants],
        "default_variant": campaign.default_variant,
        "rules": campaign.rules,
        "send_at": campaign.send_at.isoformat(),
        "holdout_pct": campaign.holdout_pct,
        "attribution_days": campaign.attribution_days,
        "quiet_hours": campaign.quiet_hours,
        "link_hosts": campaign.link_hosts,
        "created_at": campaign.created_at.isoformat(),
        "launched_at": campaign.launched_at.isoformat() if campaign.launched_at else None,
        "recipients": len(campaign.recipients),
        "holdout": sum(r.holdout for r in campaign.recipients),
    }


def _progress(app: CampaignApplication, campaign: Campaign) -> dict[str, Any]:
    status: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    variants: Counter[str] = Counter()
    responses: Counter[str] = Counter()
    for _, _, m in app.messages(campaign):
        if m is None:
            status["pending"] += 1
            continue
        status[m.status] += 1
        if m.status == "skipped":
            skipped[m.reason or "unknown"] += 1
        if m.status == "sent":
            variants[m.variant or ""] += 1
            responses["opened"] += m.opened_at is not None
            responses["clicked"] += bool(m.clicked)
            responses["bounced"] += m.bounced is not None
        responses["opted_out"] += m.opted_out_at is not None
    return {
        "pending": status["pending"],
        "sending": status["sending"],
        "sent": status["sent"],
        "failed": status["failed"],
        "skipped": dict(skipped),
        "sent_by_variant": dict(variants),
        "opened": responses["opened"],
        "clicked": responses["clicked"],
        "bounced": responses["bounced"],
        "opted_out": responses["opted_out"],
    }


# -- campaigns --------------------------------------------------------------------------


@campaigns.post(
    "/campaigns",
    status_code=201,
    response_model=CampaignView,
    summary="Create a campaign (a draft until launched)",
    responses={200: {"model": CampaignView, "description": "a retry with the same request_id"}},
)
async def create_campaign(
    body: CampaignCreate, app: CampaignsDep, _: Writer, request: Request, response: Response
) -> dict[str, Any]:
    """Checks the whole campaign first: every problem is listed, each naming its field.
    With a ``request_id`` a retried request answers 200 with the campaign it created; the
    same id with another plan is a 409."""
    variants = [v.model_dump(exclude_none=True) for v in body.variants]
    rules = [r.model_dump() for r in body.rules]
    membership = getattr(request.app.state, "membership", None)
    ranks = [r.name for r in membership.programme.ranks] if membership is not None else None
    problems = validate_plan(body.channels, variants, rules, body.default_variant, body.holdout_pct, ranks)
    templates: TemplateWorkers = request.app.state.templates
    try:
        problems += await templates.check(variants, body.link_hosts)
    except TemplateLimitError as exc:  # the worker did not answer at all: its pool was replaced
        problems.append(("variants", str(exc)))
    except TemplateWorkersUnavailable:
        log.exception("template workers unavailable")
        raise ApiError(503, "unavailable", "templates cannot be checked now; try again") from None
    if problems:
        raise RequestValidationError(
            [
                {"loc": ("body", *field.split(".")), "msg": reason, "type": "value_error.campaign"}
                for field, reason in problems
            ]
        )
    now = datetime.now(UTC)
    audience: dict[str, Any] = (
        {"segment": body.audience.segment}
        if body.audience.segment
        else {"customer_ids": [str(c) for c in body.audience.customer_ids or []]}
    )
    campaign, new = await _call(
        lambda: app.create_once(
            campaign_id=None if body.request_id is None else uuid.uuid5(_REQUESTS, body.request_id),
            name=body.name,
            channels=list(body.channels),
            audience=audience,
            variants=variants,
            rules=rules,
            default_variant=body.default_variant,
            send_at=body.send_at or now,
            holdout_pct=body.holdout_pct,
            attribution_days=body.attribution_days,
            quiet_hours=list(body.quiet_hours) if body.quiet_hours else None,
            link_hosts=[h.lower() for h in body.link_hosts],
            created_at=now,
        )
    )
    if not new:
        response.status_code = 200
    return _view(campaign)


class CampaignPage(BaseModel):
    """A page of campaigns, newest first."""

    campaigns: list[CampaignView]
    limit: int
    next: str | None = Field(description="the cursor of the next page; null on the last page")


@campaigns.get("/campaigns", response_model=CampaignPage, summary="Campaigns, newest first, a page at a time")
async def list_campaigns(
    app: CampaignsDep, _: Reader, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> CampaignPage:
    """Newest first; ``next`` is the cursor of the following page (``null`` on the last).
    The cursor is the position of the last campaign shown in the store's list of
    campaigns, which only grows at its end: a campaign created while a client pages
    comes before the pages it has read, never inside them."""
    position = decode_cursor(cursor, "before", "id")

    def read() -> CampaignPage:
        ids = app.campaign_ids()
        end = len(ids)
        if position is not None:
            end = position["before"]
            if not isinstance(end, int) or not 0 <= end < len(ids) or str(ids[end]) != position["id"]:
                raise invalid_cursor()
        start = max(0, end - limit)
        page = [_view(app.campaign(cid)) for cid in reversed(ids[start:end])]
        more = encode_cursor({"before": start, "id": str(ids[start])}) if start > 0 else None
        return CampaignPage(campaigns=page, limit=limit, next=more)

    return await _call(read)


CampaignId = Annotated[uuid.UUID, Path(description="the campaign's id")]


@campaigns.get(
    "/campaigns/{campaign_id}",
    response_model=CampaignDetail,
    summary="A campaign and its progress (sent, skipped by reason, responses)",
)
async def get_campaign(campaign_id: CampaignId, app: CampaignsDep, _: Reader) -> dict[str, Any]:
    def read() -> dict[str, Any]:
        campaign = app.campaign(campaign_id)
        return {**_view(campaign), "progress": _progress(app, campaign)}

    return await _call(read)


@campaigns.post(
    "/campaigns/{campaign_id}/launch",
    response_model=CampaignView,
    summary="Resolve and freeze the audience, then send from send_at",
    responses={
        422: {"description": "an unknown segment, an audience too large, or an empty one"},
        503: {"description": "analytics (the segment) did not answer: retry"},
    },
)
async def launch_campaign(
    campaign_id: CampaignId, request: Request, app: CampaignsDep, _: Writer
) -> dict[str, Any]:
    """A segment is read from analytics now; the recipients (and who is in the holdout)
    are recorded with the campaign, so it is reproducible whatever the segment becomes."""
    campaign = await _call(app.campaign, campaign_id)
    if campaign.status != "draft":
        raise ApiError(409, "conflict", f"only a draft can be launched; this campaign is {campaign.status}")
    clients: ServiceClients = request.app.state.campaign_clients
    messaging: MessagingSettings = request.app.state.messaging
    if "segment" in campaign.audience:
        try:
            ids = await clients.segment_members(
                campaign.audience["segment"], messaging.campaign_max_recipients
            )
        except UnknownSegment as exc:
            raise ApiError(422, "unknown_segment", str(exc)) from None
        except AudienceTooLarge as exc:
            raise ApiError(422, "audience_too_large", str(exc)) from None
        except ServiceUnavailable as exc:
            raise ApiError(503, "unavailable", f"analytics: {exc}", {"Retry-After": "5"}) from None
    else:
        ids = [uuid.UUID(c) for c in campaign.audience.get("customer_ids", [])]
    if not ids:
        raise ApiError(422, "empty_audience", "the audience has no customers: nothing to launch")
    launched = await _call(app.launch, campaign_id, ids, datetime.now(UTC))
    return _view(launched)


@campaigns.post(
    "/campaigns/{campaign_id}/pause", response_model=CampaignView, summary="Stop sending until resumed"
)
async def pause_campaign(campaign_id: CampaignId, app: CampaignsDep, _: Writer) -> dict[str, Any]:
    return _view(await _call(app.pause, campaign_id, datetime.now(UTC)))


@campaigns.post(
    "/campaigns/{campaign_id}/resume", response_model=CampaignView, summary="Send again after a pause"
)
async def resume_campaign(campaign_id: CampaignId, app: CampaignsDep, _: Writer) -> dict[str, Any]:
    return _view(await _call(app.resume, campaign_id, datetime.now(UTC)))


@campaigns.post(
    "/campaigns/{campaign_id}/cancel",
    response_model=CampaignView,
    summary="Never send again; unsent recipients are skipped",
)
async def cancel_campaign(
    campaign_id: CampaignId, app: CampaignsDep, _: Writer, body: Cancellation | None = None
) -> dict[str, Any]:
    reason = (body or Cancellation()).reason
    return _view(await _call(app.cancel, campaign_id, datetime.now(UTC), reason))


@campaigns.post(
    "/messages/{message_id}/bounces",
    status_code=202,
    response_model=BounceRecorded,
    summary="A provider's bounce report",
)
async def report_bounce(
    message_id: uuid.UUID, body: BounceIn, app: CampaignsDep, _: Writer
) -> dict[str, Any]:
    """Records ``message.bounced`` once per message (a repeated report changes nothing)."""
    recorded = await _call(app.bounce, message_id, body.kind, body.reason, datetime.now(UTC))
    return {"message_id": str(message_id), "recorded": recorded}


# -- tracking ---------------------------------------------------------------------------

Token = Annotated[str, Path(min_length=10, max_length=64, pattern=r"^[A-Za-z0-9_=.-]+$")]


def _verify(request: Request, token: str, kind: Literal["o", "c", "u"]) -> uuid.UUID:
    signer: TrackingSigner = request.app.state.tracking_signer
    try:
        return signer.verify(token, kind).message_id
    except InvalidToken:
        raise ApiError(404, "not_found", "unknown tracking link") from None


def _verify_click(request: Request, token: str) -> tuple[uuid.UUID, int]:
    signer: TrackingSigner = request.app.state.tracking_signer
    try:
        tracked = signer.verify(token, "c")
    except InvalidToken:
        raise ApiError(404, "not_found", "unknown tracking link") from None
    return tracked.message_id, tracked.link_no


@tracking.get("/o/{token}.gif", summary="Open pixel", response_class=Response)
async def open_pixel(token: Token, request: Request, app: CampaignsDep) -> Response:
    mid = _verify(request, token, "o")
    await _call(app.respond, mid, "open", datetime.now(UTC))
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store, private"})


@tracking.get(
    "/c/{token}", summary="Click redirect to a link of the message", response_class=RedirectResponse
)
async def click(token: Token, request: Request, app: CampaignsDep) -> RedirectResponse:
    mid, link_no = _verify_click(request, token)
    message = await _call(app.message, mid)
    if link_no >= len(message.links):
        raise ApiError(404, "not_found", "the message has no such link")
    target = message.links[link_no]
    campaign = await _call(app.campaign, message.campaign_id)
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or (parts.hostname or "").lower() not in campaign.link_hosts:
        raise ApiError(400, "refused_target", "the link's target is not one the campaign allows")
    await _call(app.respond, mid, "click", datetime.now(UTC), link_no)
    return RedirectResponse(target, status_code=302, headers={"Cache-Control": "no-store, private"})


_PAGE = """<!doctype html><html lang="ja"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width"><title>配信停止 / Unsubscribe</title></head>
<body style="font-family:sans-serif;max-width:32rem;margin:3rem auto">{content}</body></html>"""


@tracking.get("/u/{token}", summary="Unsubscribe page (confirms with a POST)", response_class=HTMLResponse)
async def unsubscribe_page(token: Token, request: Request, app: CampaignsDep) -> HTMLResponse:
    mid = _verify(request, token, "u")
    message = await _call(app.message, mid)
    if message.opted_out_at is not None:
        return HTMLResponse(_PAGE.format(content="<p>配信を停止しました。You are unsubscribed.</p>"))
    form = (
        f'<form method="post" action="/t/u/{token}"><p>この配信（{message.channel}）を停止しますか？'
        "<br>Stop these messages?</p><button type=submit>配信停止 / Unsubscribe</button></form>"
    )
    return HTMLResponse(_PAGE.format(content=form))


@tracking.post(
    "/u/{token}",
    summary="Unsubscribe (RFC 8058 one-click, or the page's button)",
    response_class=HTMLResponse,
)
async def unsubscribe(token: Token, request: Request, app: CampaignsDep) -> HTMLResponse:
    """Recorded in engagement's store at once (the dispatcher honours it from now on,
    ``message.opted_out`` is published), then passed on to identity's consent; if
    identity cannot be reached, the dispatcher passes it on later."""
    mid = _verify(request, token, "u")
    now = datetime.now(UTC)
    message, record = await _call(app.opt_out, mid, now)
    if record.forwarded_at is None and message.channel is not None:
        clients: ServiceClients = request.app.state.campaign_clients
        if await clients.withdraw_consent(message.customer_id, message.channel, record.at):
            await _call(app.opt_out_forwarded, message.customer_id, message.channel, datetime.now(UTC))
        else:
            log.warning("identity not told of an opt-out yet; the dispatcher retries")
    return HTMLResponse(_PAGE.format(content="<p>配信を停止しました。You are unsubscribed.</p>"))


router.include_router(campaigns)
router.include_router(tracking)
