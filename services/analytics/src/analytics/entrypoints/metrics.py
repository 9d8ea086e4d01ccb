"""The sink's metrics as Prometheus text, and the small HTTP server of the standalone sink.

An embedded sink (chDB, inside the API's process) is measured at the API's ``/metrics``;
a sink in its own process (``python -m analytics sink``) serves the same text on a port
of its own, ``CRM_SINK_METRICS_PORT`` (8014) on ``CRM_HTTP_HOST`` (127.0.0.1 unless set;
the image sets 0.0.0.0), with ``/healthz`` (the process answers) and ``/readyz`` (the
sink makes progress) beside it. Both render with :func:`render`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from analytics.sink import SinkStats

log = logging.getLogger(__name__)
#: The Prometheus text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4"


def render(stats: SinkStats | None) -> str:
    """Sink throughput and consumer lag per partition in Prometheus text; no sink, no lines."""
    lines: list[str] = []
    if (s := stats) is not None:
        for name, kind, value, help_ in (
            ("crm_sink_records_total", "counter", s.records_in, "records consumed from Kafka"),
            ("crm_sink_rows_inserted_total", "counter", s.rows_inserted, "rows inserted into ClickHouse"),
            ("crm_sink_batches_total", "counter", s.batches, "batches flushed"),
            (
                "crm_sink_dead_lettered_total",
                "counter",
                s.dead_lettered,
                "records sent to the dead-letter topic",
            ),
            ("crm_sink_insert_failures_total", "counter", s.insert_failures, "failed inserts (retried)"),
            ("crm_sink_last_batch_rows", "gauge", s.last_batch_rows, "rows in the last batch"),
            ("crm_sink_last_insert_seconds", "gauge", s.last_insert_seconds, "duration of the last insert"),
        ):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += [
            "# HELP crm_sink_consumer_lag records not yet committed",
            "# TYPE crm_sink_consumer_lag gauge",
        ]
        for tp, lag in sorted(s.lag.items()):
            topic, partition = tp.rsplit("/", 1)
            lines.append(f'crm_sink_consumer_lag{{topic="{topic}",partition="{partition}"}} {lag}')
    return "\n".join(lines) + "\n"


def create(stats: SinkStats) -> FastAPI:
    """``/metrics`` and ``/healthz`` of a standalone sink. No OpenAPI pages and no spans:
    a scraper calls it every few seconds."""
    app = FastAPI(
        title="CRM analytics sink",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        """Prometheus metrics: sink throughput and consumer lag."""
        return PlainTextResponse(render(stats), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Progress: 503 when records wait and nothing was flushed for two minutes
        (ClickHouse refusing inserts, a stuck consumer), so an orchestrator or an alert
        sees a sink that is up but not sinking."""
        now = time.time()
        body = {
            "status": "stalled" if stats.stalled(now) else "ok",
            "consumer_lag": stats.total_lag(),
            "seconds_since_flush": round(now - max(stats.last_flush_at, stats.started_at), 1),
            "insert_failures": stats.insert_failures,
        }
        return JSONResponse(body, status_code=503 if body["status"] == "stalled" else 200)

    return app


class _Server(uvicorn.Server):
    """uvicorn inside a process that handles its own signals: SIGTERM sets the sink's
    stop event (``run_until_signal``), and the sink stops this server on its way out.
    uvicorn's own handlers would take SIGTERM from the sink and hold it until this
    server had shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the sink's metrics server failed; the sink goes on without it", exc_info=exc)


@contextlib.asynccontextmanager
async def serving(stats: SinkStats, host: str, port: int) -> AsyncIterator[int]:
    """Serve :func:`create` on ``host:port`` while the block runs; yields the port bound
    (``port=0``: a free one). A port in use is an ``OSError`` here, at start-up."""
    # Bound here rather than by uvicorn, which exits the process when the port is taken.
    # An IPv6 host has a colon (uvicorn's own rule).
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    config = uvicorn.Config(
        create(stats),
        host=host,
        port=sock.getsockname()[1],
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = _Server(config)
    # The socket listens already: a scrape that comes before uvicorn's start-up waits
    # in the backlog, so there is nothing to wait for here.
    task = asyncio.create_task(server.serve(sockets=[sock]), name="sink-metrics")
    task.add_done_callback(_report)
    log.info("sink metrics on http://%s:%d/metrics", host, config.port)
    try:
        yield config.port
    finally:
        server.should_exit = True
        # a failure of the server has been logged (_report): it does not hide the sink's
        done, _ = await asyncio.wait([task], timeout=5)
        if not done:
            log.warning("the sink's metrics server did not stop within 5 s")
            task.cancel()
        sock.close()
