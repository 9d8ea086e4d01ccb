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
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.common import StreamContext
from clickhouse_connect.driver.exceptions import DatabaseError
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
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
    EXPORT_COLUMNS,
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
            raise self.translate(exc) from None

    def translate(self, exc: DatabaseError) -> Exception:
        """A query ClickHouse stopped, as the caller should see it (the error itself
        when it is none of the budget's)."""
        text = str(exc)
        if "TIMEOUT_EXCEEDED" in text or "Timeout exceeded" in text:
            return ApiError(
                422,
                "query_budget_exceeded",
                f"the query ran past its {self.settings.query_timeout_s:g} s budget and was stopped;"
                " narrow the period or the filter",
            )
        if "MEMORY_LIMIT_EXCEEDED" in text or "memory limit exceeded" in text.lower():
            if _QUERY_MEMORY.search(text):
                return ApiError(
                    422,
                    "query_budget_exceeded",
                    f"the query needed more than its {self.settings.query_max_memory_bytes // 2**20} MiB"
                    " memory budget and was stopped; narrow the period or the filter",
                )
            # The server's or the user's limit, reached by all the queries running
            # together: this one may fit its budget, and may pass in a moment.
            return ApiError(
                503,
                "unavailable",
                "ClickHouse is short of memory (its own limit, not this query's budget) and"
                " stopped the query; try again shortly",
                headers={"Retry-After": "5"},
            )
        return exc


class RowStream:
    """The row blocks of one streamed query, read on a thread of its own (chDB's stream
    belongs to the thread that opened it) and handed over as they come. The query runs
    once, at ClickHouse's pace, not the client's: its blocks wait here (the query's
    LIMIT bounds them), so its time budget does not run while a slow client downloads
    and the pool's client is free as soon as ClickHouse is done. ``close()`` stops the
    reading (a client gone) and drops what is buffered."""

    def __init__(self, analytics: Analytics, open_stream: Callable[[Queries], StreamContext]) -> None:
        self._analytics = analytics
        self._open = open_stream
        self._blocks: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="analytics-export", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            with (
                self._analytics.pool.client() as client,
                self._open(Queries(client, self._analytics.budget)) as stream,
            ):
                for block in stream:
                    if self._stop.is_set():
                        return  # closed: leaving the stream ends the query
                    self._blocks.put(("rows", block))
            self._blocks.put(("end", None))
        except Exception as exc:  # handed to the reader, which raises it
            self._blocks.put(("error", exc))

    def _take(self) -> tuple[str, Any] | None:
        while not self._stop.is_set():
            try:
                return self._blocks.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    async def next(self) -> Sequence[Sequence[Any]] | None:
        """The next block of rows; ``None`` at the end."""
        item = await asyncio.to_thread(self._take)
        if item is None or item[0] == "end":
            return None
        kind, value = item
        if kind == "error":
            if isinstance(value, DatabaseError):
                raise self._analytics.translate(value) from None
            raise value
        rows: Sequence[Sequence[Any]] = value
        return rows

    def close(self) -> None:
        self._stop.set()
        while not self._blocks.empty():
            self._blocks.get_nowait()


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
    responses={
        200: {
            "description": "JSON: a page (limit, offset). CSV: the segment's customers by revenue, with"
            " `X-Total-Count` (the segment's size), `X-Export-Rows` and `X-Export-Truncated`",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        422: {"description": "`export_too_large`: the segment has more customers than an export holds"},
    },
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
    max_rows: Annotated[
        int | None,
        Query(
            ge=1,
            description="CSV only: export only the top rows by revenue (at most the export cap,"
            " CRM_EXPORT_MAX_ROWS); without it a segment larger than the cap is refused",
        ),
    ] = None,
) -> Response:
    """JSON pages for the dashboard; ``format=csv`` for a BI tool: every customer of the
    segment in one file, computed by one query (a snapshot, streamed), at most
    ``CRM_EXPORT_MAX_ROWS`` rows. A larger segment is refused before any row is sent
    (422 ``export_too_large``, with its size) rather than cut short silently; ask for
    the top ``max_rows`` by revenue to get a part of it on purpose."""
    if segment not in SEGMENTS:
        raise ApiError(404, "unknown_segment", f"unknown segment {segment!r}; one of {', '.join(SEGMENTS)}")
    day = _as_of(as_of)
    if format == "csv":
        return await _csv_export(analytics, segment, day, channel, rules, max_rows)
    rows = await analytics.run(lambda q: q.segment_members(segment, day, channel, rules, limit, offset))
    import orjson

    body = {"segment": segment, "as_of": day.isoformat(), "limit": limit, "offset": offset, "customers": rows}
    return Response(orjson.dumps(body), media_type="application/json")


async def _csv_export(
    analytics: Analytics, segment: str, day: date, channel: str, rules: RfmRules, max_rows: int | None
) -> Response:
    cap = analytics.settings.export_max_rows
    if max_rows is not None and max_rows > cap:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", "max_rows"),
                    "msg": f"at most {cap} (CRM_EXPORT_MAX_ROWS)",
                    "type": "value_error",
                }
            ]
        )
    wanted = max_rows or cap
    stream = RowStream(
        analytics,
        lambda q: q.segment_export(segment, day, channel, rules, wanted),  # type: ignore[arg-type]
    )
    try:
        first = await stream.next()
    except BaseException:
        stream.close()
        raise
    total = int(first[0][-1]) if first else 0
    if total > wanted and max_rows is None:
        stream.close()
        raise ApiError(
            422,
            "export_too_large",
            f"segment {segment} has {total} customers, more than an export holds ({cap},"
            " CRM_EXPORT_MAX_ROWS): narrow it (channel, as_of, the rules) or ask for the top rows by"
            f" revenue with max_rows (at most {cap})",
        )
    return StreamingResponse(
        _csv_blocks(stream, first),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="segment-{segment}-{day}.csv"',
            "X-Total-Count": str(total),
            "X-Export-Rows": str(min(total, wanted)),
            "X-Export-Truncated": "true" if total > wanted else "false",
        },
    )


async def _csv_blocks(stream: RowStream, first: Sequence[Sequence[Any]] | None) -> AsyncIterator[bytes]:
    """The CSV: a header, then each block of the one query as it comes (the trailing
    ``total`` column left out). A failure half-way ends the response unfinished (the
    client sees a broken transfer, never a short file that looks whole)."""
    try:
        out = io.StringIO()
        csv.writer(out).writerow(EXPORT_COLUMNS)
        yield out.getvalue().encode()
        block = first
        while block:
            out = io.StringIO()
            writer = csv.writer(out)
            for row in block:
                writer.writerow(_csv_cell(v) for v in row[: len(EXPORT_COLUMNS)])
            yield out.getvalue().encode()
            block = await stream.next()
    finally:
        stream.close()


def _csv_cell(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


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

    if settings.serves_metrics:  # in production only with CRM_PUBLIC_METRICS

        @app.get("/metrics", tags=["ops"], summary="Prometheus metrics: sink throughput and consumer lag")
        async def metrics(request: Request) -> PlainTextResponse:
            sink = request.app.state.analytics.sink
            return PlainTextResponse(render_metrics(sink.stats if sink else None), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
