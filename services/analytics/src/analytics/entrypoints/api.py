"""The analytics HTTP API (port 8004) and the dashboard at ``/``.

Every endpoint needs ``analytics:read``; figures are attributed to the current
customer (see ``analytics.queries``). Each query runs within a time and memory budget
(``CRM_QUERY_TIMEOUT_S``, ``CRM_QUERY_MAX_MEMORY_BYTES``): past it ClickHouse stops it
and the caller gets 422 ``query_budget_exceeded`` instead of a slow service. A query
stopped because ClickHouse as a whole is short of memory gets 503 ``unavailable``.

In embedded mode (chDB) the sink runs in this process — chDB allows one process per
data directory; with a ClickHouse server it is its own process (``python -m analytics
sink``) unless ``embedded_sink=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import queue
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from analytics.entrypoints import campaign_routes, survey_routes
from analytics.entrypoints import responses as R
from analytics.entrypoints.metrics import CONTENT_TYPE
from analytics.entrypoints.metrics import render as render_metrics
from analytics.entrypoints.params import Day, Instant
from analytics.entrypoints.support import router as support_router
from analytics.queries import (
    CHANNELS,
    MAX_COHORT_PERIODS,
    MAX_OVERVIEW_BUCKETS,
    OVERVIEW_SERIES,
    SEGMENTS,
    Queries,
    RfmRules,
    SeriesMetric,
    buckets,
    cohort_periods,
)
from analytics.sink import Sink, dead_letter_producer
from analytics.store.clickhouse import connect, embedded, query_budget
from analytics.store.migrations import migrate
from crm_platform.http import ApiError, Principal, create_app, require_scope
from crm_platform.kafka import EventProducer, ensure_topics
from crm_platform.settings import Settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "static"
MAX_PERIOD_DAYS = 3_660
_STEP_TEXT = r"[a-z][a-z_.]{0,63}(:[a-z_]{1,32})?"
_STEP = re.compile(f"^{_STEP_TEXT}$")
#: 2 to 10 steps, comma-separated (spaces around a step are allowed)
STEPS_PATTERN = rf"^ *{_STEP_TEXT} *(, *{_STEP_TEXT} *){{1,9}}$"
#: A query past its own ``max_memory_usage`` (ClickHouse's wording, then older releases');
#: the server's total and a user's limit are worded "(total)" / "for user".
_QUERY_MEMORY = re.compile(r"Query memory limit exceeded|Memory limit \(for query\) exceeded", re.IGNORECASE)
T = TypeVar("T")

Reader = Annotated[Principal, Depends(require_scope("analytics:read"))]
ChannelParam = Annotated[Literal["all", "store", "online", "app"], Query(description=f"one of {CHANNELS}")]
Start = Annotated[Day, Query(description="first day of the period (Asia/Tokyo), inclusive")]
End = Annotated[
    Day,
    Query(
        description=f"day after the period's last, exclusive: after start, at most {MAX_PERIOD_DAYS} days on"
    ),
]

v1 = APIRouter(prefix="/v1", tags=["analytics"])


class ClientPool:
    """A few ClickHouse clients: a client serialises its calls, so concurrent queries
    each take their own (chDB runs them side by side in one process)."""

    def __init__(self, factory: Callable[[], Client], size: int) -> None:
        self._clients: queue.SimpleQueue[Client] = queue.SimpleQueue()
        self._all = [factory() for _ in range(size)]
        for client in self._all:
            self._clients.put(client)

    @contextlib.contextmanager
    def client(self) -> Iterator[Client]:
        client = self._clients.get()
        try:
            yield client
        finally:
            self._clients.put(client)

    def close(self) -> None:
        for client in self._all:
            with contextlib.suppress(Exception):
                client.close()


class Analytics:
    def __init__(self, settings: Settings, pool: ClientPool) -> None:
        self.settings = settings
        self.pool = pool
        self.budget = query_budget(settings)
        self.sink: Sink | None = None

    async def run(self, fn: Callable[[Queries], T]) -> T:
        def call() -> T:
            with self.pool.client() as client:
                return fn(Queries(client, self.budget))

        try:
            return await asyncio.to_thread(call)
        except DatabaseError as exc:
            text = str(exc)
            if "TIMEOUT_EXCEEDED" in text or "Timeout exceeded" in text:
                raise ApiError(
                    422,
                    "query_budget_exceeded",
                    f"the query ran past its {self.settings.query_timeout_s:g} s budget and was stopped;"
                    " narrow the period or the filter",
                ) from None
            if "MEMORY_LIMIT_EXCEEDED" in text or "memory limit exceeded" in text.lower():
                if _QUERY_MEMORY.search(text):
                    raise ApiError(
                        422,
                        "query_budget_exceeded",
                        f"the query needed more than its {self.settings.query_max_memory_bytes // 2**20} MiB"
                        " memory budget and was stopped; narrow the period or the filter",
                    ) from None
                # The server's or the user's limit, reached by all the queries running
                # together: this one may fit its budget, and may pass in a moment.
                raise ApiError(
                    503,
                    "unavailable",
                    "ClickHouse is short of memory (its own limit, not this query's budget) and"
                    " stopped the query; try again shortly",
                    headers={"Retry-After": "5"},
                ) from None
            raise


async def _analytics(request: Request) -> Analytics:
    analytics: Analytics = request.app.state.analytics
    return analytics


AnalyticsDep = Annotated[Analytics, Depends(_analytics)]


def _period(start: date, end: date) -> None:
    if end <= start:
        raise ApiError(422, "invalid_period", f"end ({end}) must be after start ({start})")
    if (end - start).days > MAX_PERIOD_DAYS:
        raise ApiError(422, "invalid_period", f"a period is at most {MAX_PERIOD_DAYS} days")


@v1.get("/kpis/overview", response_model=R.KpiOverview, summary="KPI overview for a period and channel")
async def kpi_overview(
    analytics: AnalyticsDep, _: Reader, start: Start, end: End, channel: ChannelParam = "all"
) -> dict[str, Any]:
    _period(start, end)
    return await analytics.run(lambda q: q.kpi_overview(start, end, channel))


@v1.get("/kpis/timeseries", response_model=R.Timeseries, summary="A KPI per day, week or month")
async def kpi_timeseries(
    analytics: AnalyticsDep,
    _: Reader,
    metric: SeriesMetric,
    start: Start,
    end: End,
    interval: Literal["day", "week", "month"] = "day",
    channel: ChannelParam = "all",
) -> dict[str, Any]:
    _period(start, end)
    if metric in OVERVIEW_SERIES and len(buckets(start, end, interval)) > MAX_OVERVIEW_BUCKETS:
        raise ApiError(
            422,
            "invalid_period",
            f"a series of {metric} covers at most {MAX_OVERVIEW_BUCKETS} {interval}s: a shorter period"
            " or a coarser interval",
        )
    points = await analytics.run(lambda q: q.timeseries(metric, start, end, interval, channel))
    return {"metric": metric, "interval": interval, "channel": channel, "points": points}


@v1.get("/cohorts", response_model=R.Cohorts, summary="Retention matrix by first-purchase month or week")
async def cohorts(
    analytics: AnalyticsDep,
    _: Reader,
    start: Start,
    end: End,
    grain: Literal["month", "week"] = "month",
    channel: ChannelParam = "all",
) -> dict[str, Any]:
    _period(start, end)
    periods = cohort_periods(start, end, grain)[1]
    if periods > MAX_COHORT_PERIODS:
        limit = f"a cohort matrix covers at most {MAX_COHORT_PERIODS} {grain}s, not {periods}"
        raise ApiError(422, "invalid_period", limit)
    return await analytics.run(lambda q: q.cohorts(start, end, grain, channel))


async def _rules(
    dormant_days: Annotated[int, Query(ge=1, le=3650)] = RfmRules.dormant_days,
    loyal_min_orders: Annotated[int, Query(ge=1, le=10_000)] = RfmRules.loyal_min_orders,
    loyal_min_revenue: Annotated[int, Query(ge=0, le=10**12)] = RfmRules.loyal_min_revenue,
) -> RfmRules:
    return RfmRules(
        dormant_days=dormant_days, loyal_min_orders=loyal_min_orders, loyal_min_revenue=loyal_min_revenue
    )


Rules = Annotated[RfmRules, Depends(_rules)]
AsOf = Annotated[Day | None, Query(description="the day segments are computed for (default: tomorrow, JST)")]


def _as_of(value: date | None) -> date:
    return value or (datetime.now(UTC) + timedelta(hours=9)).date() + timedelta(days=1)


@v1.get(
    "/segments",
    response_model=R.Segments,
    summary="RFM segments (new / repeat / loyal / dormant) and R-F-M ranks",
)
async def segments(
    analytics: AnalyticsDep, _: Reader, rules: Rules, as_of: AsOf = None, channel: ChannelParam = "all"
) -> dict[str, Any]:
    day = _as_of(as_of)
    return await analytics.run(lambda q: q.segments(day, channel, rules))


@v1.get(
    "/segments/{segment}/customers",
    response_model=R.SegmentMembers,
    summary="The customers of a segment, paged; CSV with format=csv",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def segment_customers(
    analytics: AnalyticsDep,
    _: Reader,
    segment: Annotated[
        str,
        PathParam(
            description="an RFM segment (another name answers 404 unknown_segment)",
            json_schema_extra={"enum": list(SEGMENTS)},
        ),
    ],
    rules: Rules,
    as_of: AsOf = None,
    channel: ChannelParam = "all",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    format: Literal["json", "csv"] = "json",
) -> Response:
    if segment not in SEGMENTS:
        raise ApiError(404, "unknown_segment", f"unknown segment {segment!r}; one of {', '.join(SEGMENTS)}")
    day = _as_of(as_of)
    if format == "csv":
        return StreamingResponse(
            _csv_pages(analytics, segment, day, channel, rules),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="segment-{segment}-{day}.csv"'},
        )
    rows = await analytics.run(lambda q: q.segment_members(segment, day, channel, rules, limit, offset))
    import orjson

    body = {"segment": segment, "as_of": day.isoformat(), "limit": limit, "offset": offset, "customers": rows}
    return Response(orjson.dumps(body), media_type="application/json")


async def _csv_pages(
    analytics: Analytics, segment: str, day: date, channel: str, rules: RfmRules
) -> AsyncIterator[bytes]:
    columns = ["customer_id", "rfm", "orders", "revenue", "recency_days", "first_day", "last_day"]
    page, offset = 10_000, 0
    out = io.StringIO()
    csv.writer(out).writerow(columns)
    yield out.getvalue().encode()
    while True:
        rows = await analytics.run(
            lambda q: q.segment_members(segment, day, channel, rules, page, offset)  # type: ignore[arg-type]  # noqa: B023
        )
        out = io.StringIO()
        writer = csv.writer(out)
        for row in rows:
            writer.writerow([row[c] for c in columns])
        yield out.getvalue().encode()
        if len(rows) < page:
            return
        offset += page


@v1.get("/funnels", response_model=R.Funnel, summary="Customers through ordered steps within a time window")
async def funnel(
    analytics: AnalyticsDep,
    _: Reader,
    steps: Annotated[
        str,
        Query(
            description="2–10 comma-separated steps: event_type or event_type:kind",
            max_length=800,
            pattern=STEPS_PATTERN,
        ),
    ],
    start: Start,
    end: End,
    window_seconds: Annotated[int, Query(ge=1, le=90 * 86400)] = 86_400,
) -> dict[str, Any]:
    _period(start, end)
    parsed: list[tuple[str, str | None]] = []
    for raw_step in steps.split(","):
        step = raw_step.strip()
        if not _STEP.match(step):
            raise ApiError(422, "invalid_step", f"steps: {step!r} is not event_type or event_type:kind")
        event_type, _sep, kind = step.partition(":")
        parsed.append((event_type, kind or None))
    if not 2 <= len(parsed) <= 10:
        raise ApiError(422, "invalid_step", "steps: a funnel has 2 to 10 steps")
    return await analytics.run(lambda q: q.funnel(parsed, start, end, window_seconds))


@v1.get(
    "/customers/{customer_id}",
    response_model=R.CustomerSummary,
    summary="The 360 summary of a customer (no personal data)",
)
async def customer(analytics: AnalyticsDep, _: Reader, customer_id: uuid.UUID) -> dict[str, Any]:
    summary = await analytics.run(lambda q: q.customer_summary(str(customer_id)))
    if summary is None:
        raise ApiError(404, "customer_not_found", f"no events or profile for customer {customer_id}")
    return summary


@v1.get(
    "/customers/{customer_id}/timeline",
    response_model=R.Timeline,
    summary="A customer's events across channels, newest first",
)
async def timeline(
    analytics: AnalyticsDep,
    _: Reader,
    customer_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[Instant | None, Query(description="paging: the last row's occurred_at")] = None,
    before_event: Annotated[
        uuid.UUID | None, Query(description="paging: the last row's event_id (with before)")
    ] = None,
) -> dict[str, Any]:
    after_id = str(before_event) if before_event else None
    events = await analytics.run(lambda q: q.timeline(str(customer_id), limit, before, after_id))
    return {"customer_id": str(customer_id), "events": events}


@v1.get("/status", response_model=R.Status, summary="The sink's progress and the data's freshness")
async def status(analytics: AnalyticsDep, _: Reader) -> dict[str, Any]:
    fresh = await analytics.run(lambda q: q.freshness())
    sink = analytics.sink
    return {
        **fresh,
        "sink": None
        if sink is None
        else {
            "records_in": sink.stats.records_in,
            "rows_inserted": sink.stats.rows_inserted,
            "batches": sink.stats.batches,
            "dead_lettered": sink.stats.dead_lettered,
            "consumer_lag": sink.stats.total_lag(),
        },
    }


def create(settings: Settings, *, embedded_sink: bool | None = None, pool_size: int = 3) -> FastAPI:
    run_sink = embedded(settings) if embedded_sink is None else embedded_sink

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await asyncio.to_thread(ClientPool, lambda: connect(settings), pool_size)
        with pool.client() as client:
            await asyncio.to_thread(migrate, client)
        analytics = Analytics(settings, pool)
        app.state.analytics = analytics
        stop = asyncio.Event()
        task: asyncio.Task[None] | None = None
        producer: EventProducer | None = None
        sink_client: Client | None = None
        if run_sink:
            await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
            producer = dead_letter_producer(settings)
            await producer.start()
            sink_client = await asyncio.to_thread(connect, settings)
            sink = Sink.for_settings(settings, sink_client, producer)
            await sink.start()
            analytics.sink = sink
            task = asyncio.create_task(sink.run(stop), name="analytics-sink")
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=15)
            if analytics.sink is not None:
                await analytics.sink.stop()
            if producer is not None:
                await producer.stop()
            if sink_client is not None:
                sink_client.close()
            # chDB: one data directory per process while a client is open on it
            pool.close()

    async def clickhouse_ready() -> None:
        await app.state.analytics.run(lambda q: q.freshness())

    app = create_app(
        settings=settings,
        title="CRM analytics",
        description="KPIs, cohorts, RFM segments, funnels and the customer timeline, from ClickHouse.",
        readiness_checks={"clickhouse": clickhouse_ready},
        lifespan=lifespan,
    )
    app.include_router(v1)
    app.include_router(support_router)
    app.include_router(campaign_routes.router)  # campaign reports (analytics.campaigns)
    app.include_router(survey_routes.router)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics: sink throughput and consumer lag")
    async def metrics(request: Request) -> PlainTextResponse:
        sink = request.app.state.analytics.sink
        return PlainTextResponse(render_metrics(sink.stats if sink else None), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
