"""``python -m support api``: one process role per invocation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from crm_platform.settings import Settings

cli = typer.Typer(add_completion=False, help="support service processes")


def _settings(role: str) -> Settings:
    from crm_platform.process import process_settings

    return process_settings("support", role)


@cli.command()
def api(
    host: str | None = None,
    port: int | None = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="processes serving the port (default CRM_API_WORKERS, 1)"),
    ] = None,
) -> None:
    """Serve the HTTP API (default 127.0.0.1:8003): inquiry tickets."""
    import uvicorn

    settings = _settings("api")
    workers = workers or settings.api_workers
    options: dict[str, object] = {
        "host": host or settings.http_host,
        "port": port or settings.http_port or 8003,
        "log_config": None,
        "access_log": False,
    }
    if workers == 1:
        from support.entrypoints.api import create

        uvicorn.run(create(settings), **options)  # type: ignore[arg-type]
    else:
        uvicorn.run("support.entrypoints.api:serve", factory=True, workers=workers, **options)  # type: ignore[arg-type]


@cli.command()
def relay() -> None:
    """Publish the ticket store's new events to Kafka (exactly one per store)."""
    from crm_platform.kafka import EventProducer, ensure_topics
    from crm_platform.process import run_until_signal
    from support.bootstrap import build, build_relay

    settings = _settings("relay")

    async def main(stop: asyncio.Event) -> None:
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        app = build(settings, with_index=False)
        try:
            async with EventProducer(
                settings.kafka_bootstrap, client_id="support-relay", topic_prefix=settings.kafka_topic_prefix
            ) as producer:
                await build_relay(settings, app, producer).run(stop)
        finally:
            app.close()

    run_until_signal(main)


@cli.command()
def eraser() -> None:
    """Shred the content of an erased customer's tickets (follows crm.identity.customer)."""
    from crm_platform.kafka import ensure_topics
    from crm_platform.process import run_until_signal
    from support.eraser import run_eraser

    settings = _settings("eraser")

    async def main(stop: asyncio.Event) -> None:
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        await run_eraser(settings, stop)

    run_until_signal(main)


@cli.command()
def version() -> None:
    """Print the service version."""
    typer.echo("support 0.1.0")


if __name__ == "__main__":
    cli()
