"""Process-level tuning shared by the long-running services."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from crm_platform.logs import setup_logging
from crm_platform.settings import Settings
from crm_platform.telemetry import setup_tracing

T = TypeVar("T")


def quiet_gc() -> None:
    """Everything built at start-up lives for the whole process: keep it out of the cyclic
    GC's generations, and collect the youngest generation less often. Request handlers
    and stream processors allocate many short-lived objects per event; the default
    threshold (700) makes the collector run every few events, and a full collection walks
    every long-lived object (tail latency for the APIs, throughput for the streams)."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def process_settings(service: str, role: str) -> Settings:
    """Settings, logging and tracing for one process role (``CRM_SERVICE_NAME``, set by
    compose and the chart, wins over ``<service>-<role>``)."""
    settings = Settings(service_name=os.environ.get("CRM_SERVICE_NAME", f"{service}-{role}"))
    setup_logging(settings.log_level)
    setup_tracing(settings.service_name, otlp_endpoint=settings.otel_exporter_otlp_endpoint)
    return settings


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop (the loop uvicorn serves the APIs on): a good deal less
    overhead per callback than the default loop for processes that do many small I/Os."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on a fresh loop; SIGTERM or SIGINT sets ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    run(runner())
