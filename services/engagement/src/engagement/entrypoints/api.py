"""The engagement HTTP API (port 8002): commerce ingestion.

Ingestion keys are write-only and name their source: scope ``engagement:ingest`` plus
``source:<name>`` (e.g. ``source:pos``, ``source:webshop``) and, to bind a key to some
stores, ``store:<id>`` scopes. Staff keys (``engagement:read``/``write``) cannot ingest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from aiokafka import AIOKafkaClient
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from crm_platform.crypto import BlindIndexer
from crm_platform.http import ApiError, Principal, create_app, require_scope
from crm_platform.kafka import EventProducer
from crm_platform.settings import Settings
from engagement.adapters.ledger import SQLiteOrderLedger
from engagement.ingest.pipeline import Ingestor, Source
from engagement.ingest.schemas import MAX_BATCH_EVENTS, BatchResult, EventResult, Incoming

log = logging.getLogger(__name__)
ingest = APIRouter(prefix="/v1", tags=["ingestion"])
_INCOMING_REF = {"$ref": "#/components/schemas/Incoming"}
Ingesting = Annotated[Principal, Depends(require_scope("engagement:ingest"))]


class BatchIn(BaseModel):
    events: list[Any] = Field(description=f"up to {MAX_BATCH_EVENTS} events, each judged on its own")


def _source(principal: Principal) -> Source:
    names = sorted(s.split(":", 1)[1] for s in principal.scopes if s.startswith("source:"))
    stores = frozenset(s.split(":", 1)[1] for s in principal.scopes if s.startswith("store:"))
    return Source(name=names[0] if names else principal.key_name, stores=stores)


def _ingestor(request: Request) -> Ingestor:
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
        409: {"description": "the order or return id was ingested as another event"},
        413: {"description": "event too large"},
        422: {"description": "invalid; `errors` name the fields"},
        503: {"description": "the broker did not acknowledge in time: retry with the same event_id"},
    },
)
async def ingest_one(
    event: Annotated[dict[str, Any], Body()],
    principal: Ingesting,
    ingestor: Annotated[Ingestor, Depends(_ingestor)],
) -> JSONResponse:
    [item] = await ingestor.ingest([event], _source(principal))
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
        202: {"description": "at least one event is on the broker; see `results`"},
        413: {"description": f"more than {MAX_BATCH_EVENTS} events"},
        422: {"description": "no event was acceptable"},
        503: {"description": "the broker did not acknowledge some events: retry them (same event ids)"},
    },
)
async def ingest_batch(
    batch: BatchIn, principal: Ingesting, ingestor: Annotated[Ingestor, Depends(_ingestor)]
) -> JSONResponse:
    if len(batch.events) > MAX_BATCH_EVENTS:
        raise ApiError(413, "payload_too_large", f"a batch holds at most {MAX_BATCH_EVENTS} events")
    items = await ingestor.ingest(batch.events, _source(principal))
    results = [i.result() for i in items]
    accepted = sum(r.status in ("accepted", "duplicate") for r in results)
    body = BatchResult(accepted=accepted, rejected=len(results) - accepted, results=results)
    if any(r.status == "unavailable" for r in results):
        status = 503
    elif accepted or not results:
        status = 202
    else:
        status = 422
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=status,
        headers={"Retry-After": "1"} if status == 503 else None,
    )


def create(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings(service_name="engagement")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ledger = SQLiteOrderLedger(settings.service_dir("engagement") / "ledger.sqlite")
        producer = EventProducer(
            settings.kafka_bootstrap,
            client_id="engagement-api",
            topic_prefix=settings.kafka_topic_prefix,
            request_timeout_ms=5000,
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
        app.state.ingestor = Ingestor(BlindIndexer(settings.blind_index_key_bytes), producer, ledger)
        try:
            yield
        finally:
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
    )
    app.include_router(ingest)
    _document_incoming(app)
    return app


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
