"""The engagement HTTP API (port 8002): commerce ingestion.

Ingestion keys are write-only and name their source: scope ``engagement:ingest`` plus
``source:<name>`` (e.g. ``source:pos``, ``source:webshop``), whose allow-list says which
event types it may send (``engagement.ingest.sources``), and, to bind a key to some
stores, ``store:<id>`` scopes. Staff keys (``engagement:read``/``write``) cannot ingest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from aiokafka import AIOKafkaClient
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from crm_contracts.envelope import AwareDatetime
from crm_platform.crypto import BlindIndexer
from crm_platform.http import ApiError, OrjsonRoute, Principal, create_app, require_scope
from crm_platform.identifiers import InvalidIdentifier
from crm_platform.kafka import EventProducer
from crm_platform.settings import Settings
from engagement.adapters.ledger import open_ledger
from engagement.bootstrap import build_membership
from engagement.domain.membership import Member, MembershipError, NotEnoughPoints
from engagement.entrypoints import campaign_routes, form_routes
from engagement.ingest.pipeline import Ingestor, Source
from engagement.ingest.schemas import MAX_BATCH_EVENTS, BatchResult, EventResult, Incoming
from engagement.ingest.sources import SourceRules
from engagement.membership import ConcurrentUpdate, MemberExists, MemberNotFound, MembershipApplication

log = logging.getLogger(__name__)
ingest = APIRouter(prefix="/v1", tags=["ingestion"], route_class=OrjsonRoute)
_INCOMING_REF = {"$ref": "#/components/schemas/Incoming"}
Ingesting = Annotated[Principal, Depends(require_scope("engagement:ingest"))]


class BatchIn(BaseModel):
    events: list[Any] = Field(description=f"up to {MAX_BATCH_EVENTS} events, each judged on its own")


async def _source(principal: Ingesting, request: Request) -> Source:
    """The key's source, the event types it may send, and the stores it is bound to."""
    names = sorted(s.split(":", 1)[1] for s in principal.scopes if s.startswith("source:"))
    stores = frozenset(s.split(":", 1)[1] for s in principal.scopes if s.startswith("store:"))
    name = names[0] if names else principal.key_id
    rules: SourceRules = request.app.state.source_rules
    return Source(name=name, stores=stores, allowed=rules.for_source(name))


Sending = Annotated[Source, Depends(_source)]


async def _ingestor(request: Request) -> Ingestor:
    ingestor: Ingestor = request.app.state.ingestor
    return ingestor


@ingest.post(
    "/events",
    status_code=202,
    response_model=EventResult,
    summary="Ingest one fact: a POS transaction, an online order, a return or an interaction",
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Incoming"}}}
        }
    },
    responses={
        202: {"description": "on the broker"},
        403: {"description": "the key's source may not send this type, or it is bound to other stores"},
        409: {"description": "the order or return id was ingested as another event"},
        413: {"description": "event too large"},
        422: {"description": "invalid; `errors` name the fields"},
        503: {"description": "the broker did not acknowledge in time: retry with the same event_id"},
    },
)
async def ingest_one(
    event: Annotated[dict[str, Any], Body()],
    source: Sending,
    ingestor: Annotated[Ingestor, Depends(_ingestor)],
) -> JSONResponse:
    [item] = await ingestor.ingest([event], source)
    result = item.result()
    if item.status in ("accepted", "duplicate"):
        return JSONResponse(result.model_dump(mode="json"), status_code=202)
    code = "unavailable" if item.http_status == 503 else "invalid_event"
    summary = "; ".join(f"{e['field'] or 'event'}: {e['reason']}" for e in item.errors)
    return JSONResponse(
        {
            "error": {"code": code, "message": summary, "fields": item.errors},
            **result.model_dump(mode="json"),
        },
        status_code=item.http_status,
        headers={"Retry-After": "1"} if item.http_status == 503 else None,
    )


@ingest.post(
    "/batch",
    response_model=BatchResult,
    summary="Ingest a batch; each event is accepted or rejected on its own",
    responses={
        202: {"model": BatchResult, "description": "at least one event is on the broker; see `results`"},
        413: {"description": f"more than {MAX_BATCH_EVENTS} events"},
        422: {"model": BatchResult, "description": "no event was acceptable"},
        503: {
            "model": BatchResult,
            "description": "the broker did not acknowledge some events: retry them (same event ids)",
        },
    },
)
async def ingest_batch(
    batch: BatchIn, source: Sending, ingestor: Annotated[Ingestor, Depends(_ingestor)]
) -> Response:
    if len(batch.events) > MAX_BATCH_EVENTS:
        raise ApiError(413, "payload_too_large", f"a batch holds at most {MAX_BATCH_EVENTS} events")
    items = await ingestor.ingest(batch.events, source)
    results = [i.as_json() for i in items]  # a BatchResult, written straight as JSON
    accepted = sum(r["status"] in ("accepted", "duplicate") for r in results)
    if any(r["status"] == "unavailable" for r in results):
        status = 503
    elif accepted or not results:
        status = 202
    else:
        status = 422
    return Response(
        orjson.dumps({"accepted": accepted, "rejected": len(results) - accepted, "results": results}),
        status_code=status,
        media_type="application/json",
        headers={"Retry-After": "1"} if status == 503 else None,
    )


members = APIRouter(prefix="/v1/members", tags=["membership"])
Reader = Annotated[Principal, Depends(require_scope("engagement:read"))]
Writer = Annotated[Principal, Depends(require_scope("engagement:write"))]


class Enrolment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member_no: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="the number on the member's card; omitted, the programme issues one (13 digits, Luhn)",
    )
    channel: Literal["store", "online", "app", "form", "import"]
    enrolled_at: AwareDatetime | None = None
    birthday_month: int | None = Field(default=None, ge=1, le=12)


class Redemption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    redemption_id: str = Field(min_length=1, max_length=128, description="makes a retry harmless")
    points: int = Field(gt=0, le=10_000_000)
    reason: str = Field(default="checkout", min_length=1, max_length=64)


class MemberView(BaseModel):
    member_no: str | None = Field(
        default=None,
        description="the member number the programme issued: only in the answer to an enrolment "
        "without one (print it on the card; it is stored only as its blind index)",
    )
    member_key: str = Field(description="blind index of the member number")
    channel: str
    enrolled_at: datetime
    rank: str
    points: int
    usable_points: int
    spend_12m: int
    visits_12m: int
    benefits: dict[str, Any]
    next_rank: dict[str, Any] | None


async def _membership(request: Request) -> MembershipApplication:
    app: MembershipApplication = request.app.state.membership
    return app


MembershipDep = Annotated[MembershipApplication, Depends(_membership)]


def _view(app: MembershipApplication, member: Member, now: datetime) -> MemberView:
    spend, visits = member.window(now, app.programme)
    ranks = [r.name for r in app.programme.ranks]
    position = ranks.index(app.programme.rank(member.rank).name)
    upcoming = app.programme.ranks[position + 1] if position + 1 < len(ranks) else None
    return MemberView(
        member_key=member.member_no_hash,
        channel=member.channel,
        enrolled_at=member.enrolled_at,
        rank=member.rank,
        points=member.points,
        usable_points=member.usable_points(now),
        spend_12m=spend,
        visits_12m=visits,
        benefits=member.benefits(now, app.programme),
        next_rank=None
        if upcoming is None
        else {
            "rank": upcoming.name,
            "spend_needed": max(0, upcoming.min_spend - spend),
            "visits_needed": max(0, upcoming.min_visits - visits) if upcoming.min_visits else None,
        },
    )


def _member_hash(app: MembershipApplication, member_no: str) -> str:
    try:
        return app.member_hash(member_no)
    except InvalidIdentifier as exc:
        raise RequestValidationError(
            [{"loc": ("body", "member_no"), "msg": exc.reason, "type": "value_error"}]
        ) from None


@members.post("", status_code=201, response_model=MemberView, summary="Enrol a member (store, online, form)")
async def enrol(body: Enrolment, app: MembershipDep, _: Writer) -> MemberView:
    now = datetime.now(UTC)
    if body.member_no is None:
        issued, member = await asyncio.to_thread(
            app.enrol_new, body.channel, body.enrolled_at or now, body.birthday_month
        )
        return _view(app, member, now).model_copy(update={"member_no": issued})
    try:
        app.member_hash(body.member_no)
    except InvalidIdentifier as exc:
        raise RequestValidationError(
            [{"loc": ("body", "member_no"), "msg": exc.reason, "type": "value_error"}]
        ) from None
    member = await asyncio.to_thread(
        app.enrol, body.member_no, body.channel, body.enrolled_at or now, body.birthday_month
    )
    return _view(app, member, now)


class MemberLookup(BaseModel):
    """A member number, in the body: numbers never travel in URLs (access logs, traces)."""

    model_config = ConfigDict(extra="forbid")
    member_no: str = Field(min_length=1, max_length=64, description="the number on the member's card")


class RedemptionByNumber(Redemption):
    member_no: str = Field(min_length=1, max_length=64, description="the number on the member's card")


@members.post(
    "/lookup",
    response_model=MemberView,
    summary="Rank, points and benefits of a member (the number in the body)",
    responses={404: {"description": "no member with that number"}},
)
async def lookup_member(body: MemberLookup, app: MembershipDep, _: Reader) -> MemberView:
    """A read, sent as a POST so that the member number stays out of URLs."""
    member = await asyncio.to_thread(app.member, _member_hash(app, body.member_no))
    return _view(app, member, datetime.now(UTC))


@members.post(
    "/redemptions",
    response_model=MemberView,
    summary="Spend points (idempotent; the number in the body)",
    responses={404: {"description": "no member with that number"}, 409: {"description": "not enough points"}},
)
async def redeem(body: RedemptionByNumber, app: MembershipDep, _: Writer) -> MemberView:
    now = datetime.now(UTC)
    member = await asyncio.to_thread(
        app.redeem, _member_hash(app, body.member_no), body.redemption_id, now, body.points, body.reason
    )
    return _view(app, member, now)


_MOVED = (
    "member numbers are not sent in URLs any more: POST /v1/members/lookup or POST /v1/members/redemptions"
    " with the number in the body"
)


@members.get("/{_number}", include_in_schema=False, status_code=410)
@members.post("/{_number}/redemptions", include_in_schema=False, status_code=410)
async def moved(_number: str) -> None:
    """The former routes with the number in the path: 410 Gone, saying where they went
    (the number is neither echoed nor looked up)."""
    raise ApiError(410, "gone", _MOVED)


def create(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings(service_name="engagement")
    source_rules = SourceRules.of(settings.ingest_sources)  # a bad allow-list stops the start

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ledger = open_ledger(settings)
        producer = EventProducer(
            settings.kafka_bootstrap,
            client_id="engagement-api",
            topic_prefix=settings.kafka_topic_prefix,
            request_timeout_ms=5000,
            # A single event waits this long for others to share its record batch. At a
            # few hundred requests a second none come (the wait is all latency: p50 7.5 ms
            # at 5 ms, 3.7 ms at 1 ms); a batch request does not wait at all.
            linger_ms=1,
        )
        app.state.kafka = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=3000)
        try:
            await asyncio.wait_for(producer.start(), timeout=10)
        except Exception as exc:
            # Without the broker the API still starts: requests answer 503 and the
            # producer connects on the first request once the broker is back.
            log.warning("Kafka not reachable at start-up (%r); ingestion answers 503 until it is", exc)
        app.state.producer = producer
        app.state.ledger = ledger
        app.state.ingestor = Ingestor(
            BlindIndexer(settings.blind_index_key_bytes), producer, ledger, native=settings.ingest_native
        )
        app.state.membership = build_membership(settings)
        try:
            yield
        finally:
            app.state.membership.close()
            await producer.stop()
            await app.state.kafka.close()
            ledger.close()

    async def kafka_ready() -> None:
        kafka: AIOKafkaClient = app.state.kafka
        await kafka.bootstrap()
        await kafka.fetch_all_metadata()

    async def ledger_ready() -> None:
        await asyncio.to_thread(app.state.ledger.ping)

    app = create_app(
        settings=settings,
        title="engagement",
        description="Commerce ingestion (POS, online orders, returns, interactions) and membership.",
        readiness_checks={"kafka": kafka_ready, "order_ledger": ledger_ready},
        lifespan=lifespan,
        error_map={
            MemberNotFound: 404,
            MemberExists: 409,
            NotEnoughPoints: 409,
            ConcurrentUpdate: 409,
            MembershipError: 422,
        },
    )
    app.state.source_rules = source_rules
    app.include_router(ingest)
    app.include_router(members)
    app.include_router(campaign_routes.router)  # campaigns, tracking links (own lifespan)
    form_routes.install(app)  # surveys and forms: routes, their store, their errors
    _document_incoming(app)
    return app


def serve() -> FastAPI:
    """The app of one of several worker processes (``engagement api --workers N``)."""
    from crm_platform.process import process_settings

    return create(process_settings("engagement", "api"))


def _document_incoming(app: FastAPI) -> None:
    """Put the ``Incoming`` union in the OpenAPI components (the routes take raw JSON so
    that each event of a batch is judged on its own)."""
    from pydantic import TypeAdapter

    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        defs = TypeAdapter(Incoming).json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["Incoming"] = defs
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
