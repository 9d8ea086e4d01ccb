"""The support HTTP API (port 8003): inquiry tickets (問い合わせ).

Scopes: ``support:read`` to read and search — ticket ids, status, timings, SLA,
codes, never what was written — ``support:pii`` for the content (subjects, bodies,
replies, the requester's identifiers and name, the rating comment), ``support:write``
to open and work tickets (its answers carry the content only for keys with
``support:pii`` too), ``support:audit`` for the audit log (``GET /v1/audit``). Every
answer carrying content is written to the audit log first. ``occurred_at`` in a request
is honoured only for keys with ``support:import`` (a retailer's history, the demo):
anyone else's changes happen now, so nobody can back-date a reply to meet an SLA.

Domain errors map to status codes in one place (``create``): an unknown ticket 404,
a change that does not fit the ticket's status 409, an invalid value 422 naming the field.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_contracts.envelope import AwareDatetime
from crm_platform.audit import AuditEntry, AuditLog, audit_router
from crm_platform.http import ApiError, Principal, create_app, require_scope
from crm_platform.identifiers import InvalidIdentifier
from crm_platform.paging import Cursor, decode_cursor, encode_cursor, invalid_cursor
from crm_platform.settings import Settings
from support.adapters.index import Filters
from support.adapters.keys import ContentErased
from support.application import (
    ConcurrentUpdate,
    OpenTicket,
    SupportApplication,
    TicketConflict,
    TicketNotFound,
)
from support.bootstrap import build
from support.domain.policy import CHANNELS, PRIORITIES
from support.domain.ticket import STATUSES, InvalidTransition, Ticket, TicketError

Channel = Literal["phone", "email", "chat", "store", "form", "line"]
Priority = Literal["low", "normal", "high", "urgent"]
Status = Literal["open", "pending", "resolved", "closed"]
#: Categories and resolutions are codes: lower case, digits, underscores.
CODE = r"^[a-z][a-z0-9_]{0,63}$"
STAFF = r"^[^\x00-\x1f]{1,128}$"
#: How far in the future a client clock may be and still be believed.
CLOCK_SKEW = timedelta(minutes=5)

router = APIRouter(prefix="/v1", tags=["tickets"])
Reader = Annotated[Principal, Depends(require_scope("support:read"))]
Writer = Annotated[Principal, Depends(require_scope("support:write"))]


class CustomerIn(BaseModel):
    """Who wrote in, as they said it: at least one identifier finds their history."""

    model_config = ConfigDict(extra="forbid")
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=40)
    member_no: str | None = Field(default=None, max_length=64)
    pos_card: str | None = Field(default=None, max_length=64)
    ec_account: str | None = Field(default=None, max_length=128)
    line_id: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=100, description="sealed; never an identifier")

    def identifiers(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}


class TicketCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket_id: uuid.UUID | None = Field(
        default=None, description="the client's id: a retried POST opens nothing new"
    )
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="or a request id the ticket id derives from"
    )
    channel: Channel
    category: str = Field(pattern=CODE, description="e.g. delivery, product, complaint, membership, returns")
    priority: Priority = "normal"
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=10_000)
    customer: CustomerIn = Field(default_factory=CustomerIn)
    store_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    order_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    owner: str | None = Field(default=None, pattern=STAFF)
    team: str | None = Field(default=None, pattern=STAFF)
    occurred_at: AwareDatetime | None = Field(
        default=None, description="history import only (support:import)"
    )


class Stamped(BaseModel):
    model_config = ConfigDict(extra="forbid")
    occurred_at: AwareDatetime | None = Field(
        default=None, description="history import only (support:import)"
    )
    by: str | None = Field(default=None, pattern=STAFF, description="staff member; default: the API key")


class AssignmentIn(Stamped):
    owner: str | None = Field(default=None, pattern=STAFF)
    team: str | None = Field(default=None, pattern=STAFF)

    @model_validator(mode="after")
    def _someone(self) -> AssignmentIn:
        if self.owner is None and self.team is None:
            raise ValueError("name an owner or a team")
        return self


class ReplyIn(Stamped):
    author: Literal["staff", "customer"] = "staff"
    body: str = Field(min_length=1, max_length=10_000)
    request_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="makes a retry harmless"
    )


#: Reasons travel in clear (Kafka, ClickHouse): codes only, so no note can carry a name.
REASON = r"^[a-z][a-z0-9_]{0,63}$"
REASON_HELP = "a code such as complaint, vip, waiting_for_customer; a note goes in a (sealed) reply"


class EscalationIn(Stamped):
    reason: str = Field(pattern=REASON, description=REASON_HELP)
    to: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_-]{0,40}(:[A-Za-z0-9_.-]{1,64})?$",
        description="omitted: where the routing rules send the ticket",
    )


class StatusIn(Stamped):
    status: Literal["open", "pending", "closed"]
    reason: str | None = Field(default=None, pattern=REASON, description=REASON_HELP)


class ResolutionIn(Stamped):
    resolution: str = Field(pattern=CODE, description="e.g. answered, refunded, replaced, redelivered")


class RatingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: int = Field(ge=1, le=5, description="CSAT 1..5")
    comment: str | None = Field(default=None, max_length=2_000)
    occurred_at: AwareDatetime | None = Field(
        default=None, description="history import only (support:import)"
    )


class Message(BaseModel):
    at: datetime
    author: str
    by: str | None
    body: str


class ContentView(BaseModel):
    subject: str
    body: str
    customer: dict[str, str]
    messages: list[Message]
    rating_comment: str | None


class TicketView(BaseModel):
    ticket_id: uuid.UUID
    status: Status
    channel: str
    category: str
    priority: str
    owner: str | None
    team: str | None
    store_id: str | None
    order_id: str | None
    customer_key: str = Field(description="blind index of the strongest identifier given")
    identifier_kinds: list[str]
    opened_at: datetime
    first_response_at: datetime | None
    resolved_at: datetime | None
    resolution: str | None
    satisfaction: int | None
    escalations: list[dict[str, Any]]
    sla: dict[str, Any]
    reopened: int
    updated_at: datetime
    content: ContentView | None = Field(description="null once the customer was erased (content shredded)")
    content_erased: bool


class TicketPage(BaseModel):
    total: int
    limit: int
    offset: int
    tickets: list[TicketView]
    next: str | None = Field(
        default=None, description="the cursor of the next page (pass it as `cursor`); null on the last page"
    )


async def _support(request: Request) -> SupportApplication:
    app: SupportApplication = request.app.state.support
    return app


Support = Annotated[SupportApplication, Depends(_support)]


def _at(principal: Principal, occurred_at: datetime | None) -> datetime:
    now = datetime.now(UTC)
    if occurred_at is None:
        return now
    if not principal.allows("support:import"):
        raise ApiError(403, "forbidden", "occurred_at: only keys with support:import may record past changes")
    if occurred_at > now + CLOCK_SKEW:
        raise RequestValidationError(
            [{"loc": ("body", "occurred_at"), "msg": "lies in the future", "type": "value_error"}]
        )
    return occurred_at


def _by(principal: Principal, body: Stamped) -> str:
    return body.by or principal.key_id


def view(app: SupportApplication, ticket: Ticket, now: datetime, content: bool = True) -> TicketView:
    from support.translator import customer_key

    opened = app.content(ticket) if content else None
    return TicketView(
        ticket_id=ticket.id,
        status=ticket.status,
        channel=ticket.channel,
        category=ticket.category,
        priority=ticket.priority,
        owner=ticket.owner,
        team=ticket.team,
        store_id=ticket.store_id,
        order_id=ticket.order_id,
        customer_key=customer_key(ticket.id, ticket.identifiers),
        identifier_kinds=[i["kind"] for i in ticket.identifiers],
        opened_at=ticket.opened_at,
        first_response_at=ticket.first_response_at,
        resolved_at=ticket.resolved_at,
        resolution=ticket.resolution,
        satisfaction=ticket.satisfaction,
        escalations=ticket.escalations,
        sla=ticket.sla(now),
        reopened=ticket.reopened,
        updated_at=ticket.last_at,
        content=None
        if opened is None
        else ContentView(
            subject=opened["subject"],
            body=opened["body"],
            customer={**opened["identifiers"], **opened["contact"]},
            messages=[Message(**m) for m in opened["messages"]],
            rating_comment=opened["rating_comment"],
        ),
        content_erased=content and opened is None,
    )


def _pii(principal: Principal) -> bool:
    return principal.allows("support:pii")


async def _answer(
    request: Request,
    principal: Principal,
    app: SupportApplication,
    ticket: Ticket,
    now: datetime,
    action: str,
) -> TicketView:
    """The ticket as this key may see it: its content only with support:pii, and then
    recorded in the audit log before it is answered."""
    answer = await asyncio.to_thread(view, app, ticket, now, _pii(principal))
    if answer.content is not None:
        await _audit(request, principal, action, [answer])
    return answer


async def _audit(request: Request, principal: Principal, action: str, views: list[TicketView]) -> None:
    """One entry per ticket whose content was answered, naming the ticket, not the
    customer: a ticket's customer key is a blind index of an identifier, and the
    append-only log must hold no identifier an erasure would have to remove (the
    ticket id leads to the customer while the ticket exists)."""
    log: AuditLog = request.app.state.audit
    await log.arecord(
        *(
            AuditEntry(
                key_id=principal.key_id,
                action=action,
                purpose="ticket content",
                subject=f"ticket:{v.ticket_id}",
            )
            for v in views
            if v.content is not None
        )
    )


@router.post(
    "/tickets",
    status_code=201,
    response_model=TicketView,
    summary="Open a ticket (idempotent with ticket_id or request_id)",
    responses={
        200: {"description": "a retry: the ticket this request opened before"},
        409: {"description": "the ticket id or request id belongs to another ticket"},
        422: {"description": "invalid; `fields` name them"},
    },
)
async def open_ticket(
    body: TicketCreate, request: Request, app: Support, principal: Writer, response: Response
) -> TicketView:
    at = _at(principal, body.occurred_at)
    identifiers = body.customer.identifiers()
    try:
        app.blind(identifiers)
    except InvalidIdentifier as exc:
        raise RequestValidationError(
            [{"loc": ("body", "customer", exc.kind), "msg": exc.reason, "type": "value_error"}]
        ) from None
    contact = {"name": body.customer.name} if body.customer.name else {}
    cmd = OpenTicket(
        channel=body.channel,
        category=body.category,
        priority=body.priority,
        subject=body.subject,
        body=body.body,
        at=at,
        identifiers=identifiers,
        contact=contact,
        store_id=body.store_id,
        order_id=body.order_id,
        owner=body.owner,
        team=body.team,
        ticket_id=body.ticket_id,
        request_id=body.request_id,
    )
    ticket, created = await asyncio.to_thread(app.open, cmd)
    if not created:
        response.status_code = 200
    return await _answer(request, principal, app, ticket, datetime.now(UTC), "POST /v1/tickets")


@router.get(
    "/tickets/{ticket_id}", response_model=TicketView, summary="A ticket with its messages and SLA state"
)
async def get_ticket(ticket_id: uuid.UUID, request: Request, app: Support, principal: Reader) -> TicketView:
    """Status, timings, SLA and codes; the content (subject, messages, the requester)
    for keys with support:pii, audited."""
    ticket = await asyncio.to_thread(app.ticket, ticket_id)
    return await _answer(request, principal, app, ticket, datetime.now(UTC), "GET /v1/tickets/{ticket_id}")


class CustomerQuery(BaseModel):
    """The customer's identifiers, as written: in a body, so they stay out of URLs
    (proxy and access logs, traces)."""

    model_config = ConfigDict(extra="forbid")
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=40)
    member_no: str | None = Field(default=None, max_length=64)
    pos_card: str | None = Field(default=None, max_length=64)
    ec_account: str | None = Field(default=None, max_length=128)
    line_id: str | None = Field(default=None, max_length=128)


class TicketSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer: CustomerQuery = Field(default_factory=CustomerQuery)
    status: Status | None = None
    owner: str | None = Field(default=None, max_length=128)
    team: str | None = Field(default=None, max_length=128)
    category: str | None = Field(default=None, pattern=CODE)
    channel: Channel | None = None
    priority: Priority | None = None
    store_id: str | None = Field(default=None, max_length=64)
    escalated_to: str | None = Field(default=None, max_length=128)
    breached: bool | None = Field(default=None, description="SLA breached now (true) or not (false)")
    opened_from: AwareDatetime | None = None
    opened_to: AwareDatetime | None = None
    limit: int = Field(default=50, ge=1, le=200)
    offset: int = Field(
        default=0, ge=0, le=100_000, description="prefer `cursor`: an offset shifts with new tickets"
    )
    cursor: str | None = Field(default=None, max_length=512, description="the `next` of the previous page")
    content: bool = Field(default=False, description="include subjects and messages (support:pii)")


@router.get("/tickets", response_model=TicketPage, summary="List tickets: by status, owner, SLA, channel...")
async def list_tickets(
    request: Request,
    app: Support,
    principal: Reader,
    status: Status | None = None,
    owner: Annotated[str | None, Query(max_length=128)] = None,
    team: Annotated[str | None, Query(max_length=128)] = None,
    category: Annotated[str | None, Query(pattern=CODE)] = None,
    channel: Channel | None = None,
    priority: Priority | None = None,
    store_id: Annotated[str | None, Query(max_length=64)] = None,
    escalated_to: Annotated[str | None, Query(max_length=128)] = None,
    breached: Annotated[bool | None, Query(description="SLA breached now (true) or not (false)")] = None,
    opened_from: Annotated[AwareDatetime | None, Query()] = None,
    opened_to: Annotated[AwareDatetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    content: Annotated[bool, Query(description="include subjects and messages (support:pii)")] = False,
    cursor: Cursor = None,
) -> TicketPage:
    """Newest first. A customer's tickets: ``POST /v1/tickets/search`` (their
    identifiers go in the body, never in a URL)."""
    misplaced = sorted(set(request.query_params) & set(CustomerQuery.model_fields))
    if misplaced:  # refused, not ignored: an unfiltered list would look like an answer
        raise RequestValidationError(
            [
                {
                    "loc": ("query", key),
                    "msg": "customer identifiers go in POST /v1/tickets/search",
                    "type": "value_error",
                }
                for key in misplaced
            ]
        )
    search = TicketSearch(
        status=status,
        owner=owner,
        team=team,
        category=category,
        channel=channel,
        priority=priority,
        store_id=store_id,
        escalated_to=escalated_to,
        breached=breached,
        opened_from=opened_from,
        opened_to=opened_to,
        limit=limit,
        offset=offset,
        content=content,
        cursor=cursor,
    )
    return await _search(request, principal, app, search, "GET /v1/tickets", where="query")


@router.post("/tickets/search", response_model=TicketPage, summary="Search tickets, by customer too")
async def search_tickets(body: TicketSearch, request: Request, app: Support, principal: Reader) -> TicketPage:
    """Newest first. Customer identifiers are normalised and blind-indexed like at
    every edge (``03-1234-5678`` finds ``+81312345678``); several given find tickets
    carrying any of them. The other filters are those of ``GET /v1/tickets``."""
    return await _search(request, principal, app, body, "POST /v1/tickets/search")


def _position(search: TicketSearch, where: str) -> tuple[float, str] | None:
    """The keyset position of ``search.cursor``: the last ticket shown (opened_at, id)."""
    position = decode_cursor(search.cursor, "at", "id", loc=(where, "cursor"))
    if position is None:
        return None
    if search.offset:
        raise RequestValidationError(
            [{"loc": (where, "offset"), "msg": "a cursor page has no offset", "type": "value_error"}]
        )
    at, tid = position["at"], position["id"]
    if not isinstance(at, int | float) or not isinstance(tid, str):
        raise invalid_cursor(loc=(where, "cursor"))
    return float(at), tid


async def _search(
    request: Request,
    principal: Principal,
    app: SupportApplication,
    search: TicketSearch,
    action: str,
    where: str = "body",
) -> TicketPage:
    if search.content and not _pii(principal):
        raise ApiError(403, "forbidden", "content: subjects and messages need the scope 'support:pii'")
    given = {k: v for k, v in search.customer.model_dump().items() if v is not None}
    try:
        hashes = tuple(i["hash"] for i in app.blind(given))
    except InvalidIdentifier as exc:
        raise RequestValidationError(
            [{"loc": ("body", "customer", exc.kind), "msg": exc.reason, "type": "value_error"}]
        ) from None
    filters = Filters(
        identifier_hashes=hashes,
        status=search.status,
        owner=search.owner,
        team=search.team,
        category=search.category,
        channel=search.channel,
        priority=search.priority,
        store_id=search.store_id,
        escalated_to=search.escalated_to,
        breached=search.breached,
        opened_from=search.opened_from,
        opened_to=search.opened_to,
        before=_position(search, where),
    )
    now = datetime.now(UTC)
    # one more than the page: whether there is a next one
    total, tickets = await asyncio.to_thread(app.search, filters, now, search.limit + 1, search.offset)
    more, tickets = len(tickets) > search.limit, tickets[: search.limit]
    views = [await asyncio.to_thread(view, app, t, now, search.content) for t in tickets]
    await _audit(request, principal, action, views)
    last = tickets[-1] if tickets else None
    return TicketPage(
        total=total,
        limit=search.limit,
        offset=search.offset,
        tickets=views,
        next=encode_cursor({"at": last.opened_at.timestamp(), "id": str(last.id)}) if more and last else None,
    )


@router.post(
    "/tickets/{ticket_id}/assignment", response_model=TicketView, summary="Assign to a staff member/team"
)
async def assign(
    ticket_id: uuid.UUID, body: AssignmentIn, request: Request, app: Support, principal: Writer
) -> TicketView:
    at = _at(principal, body.occurred_at)
    ticket = await asyncio.to_thread(app.assign, ticket_id, body.owner, body.team, at, _by(principal, body))
    return await _answer(
        request, principal, app, ticket, datetime.now(UTC), "POST /v1/tickets/{ticket_id}/assignment"
    )


@router.post(
    "/tickets/{ticket_id}/replies", response_model=TicketView, summary="Add a staff or customer message"
)
async def reply(
    ticket_id: uuid.UUID, body: ReplyIn, request: Request, app: Support, principal: Writer
) -> TicketView:
    """The first staff reply is the ticket's first response (SLA). A customer's reply
    brings a pending ticket back to open and reopens a resolved one."""
    at = _at(principal, body.occurred_at)
    by = _by(principal, body) if body.author == "staff" else None
    ticket = await asyncio.to_thread(app.reply, ticket_id, body.author, body.body, at, by, body.request_id)
    return await _answer(
        request, principal, app, ticket, datetime.now(UTC), "POST /v1/tickets/{ticket_id}/replies"
    )


@router.post(
    "/tickets/{ticket_id}/escalations",
    response_model=TicketView,
    summary="Escalate (routing rules decide where)",
)
async def escalate(
    ticket_id: uuid.UUID, body: EscalationIn, request: Request, app: Support, principal: Writer
) -> TicketView:
    at = _at(principal, body.occurred_at)
    ticket = await asyncio.to_thread(app.escalate, ticket_id, body.reason, at, body.to, _by(principal, body))
    return await _answer(
        request, principal, app, ticket, datetime.now(UTC), "POST /v1/tickets/{ticket_id}/escalations"
    )


@router.post(
    "/tickets/{ticket_id}/status", response_model=TicketView, summary="Pending, back to open, reopen, close"
)
async def change_status(
    ticket_id: uuid.UUID, body: StatusIn, request: Request, app: Support, principal: Writer
) -> TicketView:
    at = _at(principal, body.occurred_at)
    ticket = await asyncio.to_thread(
        app.change_status, ticket_id, body.status, at, body.reason, _by(principal, body)
    )
    return await _answer(
        request, principal, app, ticket, datetime.now(UTC), "POST /v1/tickets/{ticket_id}/status"
    )


@router.post(
    "/tickets/{ticket_id}/resolution", response_model=TicketView, summary="Resolve an open or pending ticket"
)
async def resolve(
    ticket_id: uuid.UUID, body: ResolutionIn, request: Request, app: Support, principal: Writer
) -> TicketView:
    at = _at(principal, body.occurred_at)
    ticket = await asyncio.to_thread(app.resolve, ticket_id, body.resolution, at, _by(principal, body))
    return await _answer(
        request, principal, app, ticket, datetime.now(UTC), "POST /v1/tickets/{ticket_id}/resolution"
    )


@router.post(
    "/tickets/{ticket_id}/rating",
    response_model=TicketView,
    summary="The customer's CSAT (once, after resolution)",
)
async def rate(
    ticket_id: uuid.UUID, body: RatingIn, request: Request, app: Support, principal: Writer
) -> TicketView:
    now = datetime.now(UTC)
    at = now if body.occurred_at is None else _at(principal, body.occurred_at)
    ticket = await asyncio.to_thread(app.rate, ticket_id, body.score, at, body.comment)
    return await _answer(request, principal, app, ticket, now, "POST /v1/tickets/{ticket_id}/rating")


class SlaTarget(BaseModel):
    first_response_seconds: int
    resolution_seconds: int


class RoutingRule(BaseModel):
    name: str
    target: str
    categories: list[str]
    priorities: list[str]
    channels: list[str]
    needs_store: bool
    on_open: bool


class PolicyView(BaseModel):
    sla: dict[str, SlaTarget] = Field(description="per priority")
    routing: list[RoutingRule] = Field(description="the first rule that matches a ticket routes it")
    statuses: list[str]
    channels: list[str]
    priorities: list[str]


@router.get(
    "/policy",
    response_model=PolicyView,
    summary="The SLA targets per priority and the escalation routing rules in force",
)
async def policy(app: Support, _: Reader) -> dict[str, Any]:
    return {
        **app.policy.describe(),
        "statuses": list(STATUSES),
        "channels": list(CHANNELS),
        "priorities": list(PRIORITIES),
    }


def create(settings: Settings | None = None, *, clock: Callable[[], datetime] | None = None) -> FastAPI:
    """``clock``: the audit log's now (tests pass a fixed one)."""
    settings = settings or Settings(service_name="support")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        support = await asyncio.to_thread(build, settings)
        app.state.support = support
        app.state.audit = await asyncio.to_thread(AuditLog.open, settings, "support", clock)
        try:
            yield
        finally:
            app.state.audit.close()
            support.close()
            if support.index is not None:
                support.index.close()

    async def store_ready() -> None:
        await asyncio.to_thread(app.state.support.recorder.max_notification_id)

    app = create_app(
        settings=settings,
        title="support",
        description="Inquiry tickets (問い合わせ履歴): status, owner, SLA, escalation routing and "
        "satisfaction.",
        readiness_checks={"event_store": store_ready},
        lifespan=lifespan,
        error_map={
            TicketNotFound: 404,
            ContentErased: 410,
            TicketConflict: 409,
            ConcurrentUpdate: 409,
            InvalidTransition: 409,
            TicketError: 422,
        },
    )
    app.include_router(router)
    app.include_router(audit_router("support", lambda request: request.app.state.audit))
    return app


def serve() -> FastAPI:
    """The app of one of several worker processes (``support api --workers N``)."""
    from crm_platform.process import process_settings

    return create(process_settings("support", "api"))
