"""Process-level tuning shared by the long-running services."""

from __future__ import annotations

import gc


def quiet_gc() -> None:
    """Everything built at start-up lives for the whole process: keep it out of the cyclic
    GC's generations, and collect the youngest generation less often. Request handlers
    and stream processors allocate many short-lived objects per event; the default
    threshold (700) makes the collector run every few events, and a full collection walks
    every long-lived object (tail latency for the APIs, throughput for the streams)."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
