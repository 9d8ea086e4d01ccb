"""``python -m engagement api``: one process role per invocation."""

from __future__ import annotations

import os

import typer

from crm_platform.logs import setup_logging
from crm_platform.settings import Settings
from crm_platform.telemetry import setup_tracing

cli = typer.Typer(add_completion=False, help="engagement service processes")


def _settings(role: str) -> Settings:
    settings = Settings(service_name=os.environ.get("CRM_SERVICE_NAME", f"engagement-{role}"))
    setup_logging(settings.log_level)
    setup_tracing(settings.service_name, otlp_endpoint=settings.otel_exporter_otlp_endpoint)
    return settings


@cli.command()
def api(host: str | None = None, port: int | None = None) -> None:
    """Serve the HTTP API (default 127.0.0.1:8002): commerce ingestion."""
    import uvicorn

    from engagement.entrypoints.api import create

    settings = _settings("api")
    uvicorn.run(
        create(settings),
        host=host or settings.http_host,
        port=port or settings.http_port or 8002,
        log_config=None,
        access_log=False,
    )


@cli.command()
def worker() -> None:
    """Run the membership worker: credit purchases and returns from every channel."""
    import asyncio
    import signal

    from engagement.worker import run_worker

    settings = _settings("worker")

    async def main() -> None:
        from crm_platform.kafka import ensure_topics

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        await run_worker(settings, stop)

    asyncio.run(main())


@cli.command()
def relay() -> None:
    """Publish the membership store's new events to Kafka (exactly one per store)."""
    import asyncio
    import signal

    from crm_platform.kafka import EventProducer, ensure_topics
    from engagement.bootstrap import build_membership, build_relay

    settings = _settings("relay")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        app = build_membership(settings)
        try:
            async with EventProducer(
                settings.kafka_bootstrap,
                client_id="engagement-relay",
                topic_prefix=settings.kafka_topic_prefix,
            ) as producer:
                await build_relay(settings, app, producer).run(stop)
        finally:
            app.close()

    asyncio.run(main())


@cli.command()
def version() -> None:
    """Print the service version."""
    typer.echo("engagement 0.1.0")


if __name__ == "__main__":
    cli()
