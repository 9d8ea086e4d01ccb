"""The sink as its own process (``python -m analytics sink``), for a ClickHouse server
deployment (with chDB the sink runs inside the API's process): the topics, the schema,
the dead-letter producer, the sink, and its ``/metrics`` and ``/healthz`` on
``CRM_SINK_METRICS_PORT``."""

from __future__ import annotations

import asyncio

from analytics.entrypoints import metrics
from analytics.sink import Sink, dead_letter_producer
from analytics.store.clickhouse import connect
from analytics.store.migrations import migrate
from crm_platform.kafka import ensure_topics
from crm_platform.process import quiet_gc
from crm_platform.settings import Settings


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Consume into ClickHouse until ``stop`` is set; the batch in hand is flushed first."""
    await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
    client = await asyncio.to_thread(connect, settings)
    try:
        await asyncio.to_thread(migrate, client)
        async with dead_letter_producer(settings) as producer:
            sink = Sink.for_settings(settings, client, producer)
            async with metrics.serving(sink.stats, settings.http_host, settings.sink_metrics_port):
                await sink.start()
                quiet_gc()
                try:
                    await sink.run(stop)
                finally:
                    await sink.stop()
    finally:
        # chDB: one process per data directory while a client is open on it
        client.close()
