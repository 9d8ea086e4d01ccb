"""``python -m engagement api``: one process role per invocation.

Each command imports what its role needs: the processes this module starts (the API's
workers, the CSV reader) import it again, and should not pay for the other roles."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from crm_platform.settings import Settings

cli = typer.Typer(add_completion=False, help="engagement service processes")


def _settings(role: str) -> Settings:
    from crm_platform.process import process_settings

    return process_settings("engagement", role)


@cli.command()
def api(
    host: str | None = None,
    port: int | None = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="processes serving the port (default CRM_API_WORKERS, 1)"),
    ] = None,
) -> None:
    """Serve the HTTP API (default 127.0.0.1:8002): commerce ingestion."""
    import uvicorn

    settings = _settings("api")
    workers = workers or settings.api_workers
    options: dict[str, object] = {
        "host": host or settings.http_host,
        "port": port or settings.http_port or 8002,
        "log_config": None,
        "access_log": False,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default; the app does
        # it only for CRM_TRUSTED_PROXIES (engagement.entrypoints.form_routes)
        "proxy_headers": False,
    }
    if workers == 1:
        from engagement.entrypoints.api import create

        uvicorn.run(create(settings), **options)  # type: ignore[arg-type]
    else:  # each worker process builds its own app (producer, ledger connection)
        uvicorn.run("engagement.entrypoints.api:serve", factory=True, workers=workers, **options)  # type: ignore[arg-type]


@cli.command()
def worker() -> None:
    """Run the membership worker: credit purchases and returns from every channel."""
    from crm_platform.kafka import ensure_topics
    from crm_platform.process import run_until_signal
    from engagement.worker import run_worker

    settings = _settings("worker")

    async def main(stop: asyncio.Event) -> None:
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        await run_worker(settings, stop)

    run_until_signal(main)


@cli.command()
def eraser() -> None:
    """Shred an erased customer's survey free text (follows crm.identity.customer)."""
    from crm_platform.kafka import ensure_topics
    from crm_platform.process import run_until_signal
    from engagement.eraser import run_eraser

    settings = _settings("eraser")

    async def main(stop: asyncio.Event) -> None:
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        await run_eraser(settings, stop)

    run_until_signal(main)


@cli.command()
def relay() -> None:
    """Publish the new events of engagement's stores to Kafka: membership's, campaigns'
    and surveys and forms' (one relay per store, all in this one process)."""
    from crm_platform.kafka import EventProducer, ensure_topics
    from crm_platform.process import run_until_signal
    from engagement.bootstrap import build_membership, build_relay
    from engagement.dispatch.wiring import build_campaign_relay, build_campaigns
    from engagement.survey_bootstrap import build_survey_relay, build_surveys

    settings = _settings("relay")

    async def main(stop: asyncio.Event) -> None:
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        app = build_membership(settings)
        campaigns = build_campaigns(settings)
        surveys = build_surveys(settings)
        try:
            # One failing relay stops the others (and the process, for its supervisor).
            async with (
                EventProducer(
                    settings.kafka_bootstrap,
                    client_id="engagement-relay",
                    topic_prefix=settings.kafka_topic_prefix,
                ) as producer,
                asyncio.TaskGroup() as relays,
            ):
                relays.create_task(build_relay(settings, app, producer).run(stop))
                relays.create_task(build_campaign_relay(settings, campaigns, producer).run(stop))
                relays.create_task(build_survey_relay(surveys, producer).run(stop))
        finally:
            campaigns.close()
            surveys.close()
            app.close()

    run_until_signal(main)


@cli.command()
def dispatcher() -> None:
    """Send the campaigns' due messages: e-mail over SMTP, SMS/LINE/app push over webhooks."""
    from crm_platform.kafka import ensure_topics
    from crm_platform.process import run_until_signal
    from engagement.dispatch.process import run_dispatcher
    from engagement.dispatch.settings import MessagingSettings

    settings = _settings("dispatcher")
    messaging = MessagingSettings()

    async def main(stop: asyncio.Event) -> None:
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        await run_dispatcher(settings, messaging, stop)

    run_until_signal(main)


@cli.command()
def mailsink(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SMTP port (CRM_SMTP_PORT's default)")] = 8025,
    webhook_port: Annotated[int, typer.Option(help="HTTP port of the SMS/LINE/app push webhooks")] = 8026,
) -> None:
    """Local mode's providers: SMTP into var/engagement/mail (a Maildir), and SMS/LINE/app
    push webhooks (POST /sms, /line, /app_push) into var/engagement/outbox/*.jsonl."""
    import signal
    import threading

    from engagement.dispatch.mailsink import start_mailsink, start_webhook_sink

    settings = _settings("mailsink")
    path = settings.service_dir("engagement") / "mail"
    controller = start_mailsink(path, host, port)
    outbox = settings.service_dir("engagement") / "outbox"
    hooks = start_webhook_sink(outbox, host, webhook_port)
    typer.echo(f"mail sink on {host}:{port} into {path}; webhooks on {host}:{webhook_port} into {outbox}")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    hooks.shutdown()
    controller.stop()


@cli.command("import")
def import_(
    path: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="CSV export, one row per order line")
    ],
    source: Annotated[str, typer.Option(help="source name recorded with the events")] = "import",
    restart: Annotated[bool, typer.Option(help="ignore a saved position and start from the top")] = False,
) -> None:
    """Import historical transactions from CSV (resumable; rejected rows to <file>.rejected.csv)."""
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from crm_platform.crypto import BlindIndexer
    from crm_platform.kafka import EventProducer, ensure_topics
    from crm_platform.process import quiet_gc, run
    from engagement.adapters.ledger import open_ledger
    from engagement.importer import import_csv
    from engagement.ingest.pipeline import Ingestor, Source

    settings = _settings("import")
    console = Console(stderr=True)
    size = path.stat().st_size

    async def main() -> None:
        await ensure_topics(settings.kafka_bootstrap, prefix=settings.kafka_topic_prefix)
        quiet_gc()  # many short-lived objects per order: collect the young generation less often
        ledger = open_ledger(settings)
        try:
            async with EventProducer(
                settings.kafka_bootstrap,
                client_id="engagement-import",
                topic_prefix=settings.kafka_topic_prefix,
            ) as producer:
                ingestor = Ingestor(
                    BlindIndexer(settings.blind_index_key_bytes),
                    producer,
                    ledger,
                    ack_timeout=30,
                    native=settings.ingest_native,
                )
                with Progress(
                    TextColumn("[bold]importing"),
                    BarColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=console,
                ) as bar:
                    task = bar.add_task("csv", total=size)
                    started = time.perf_counter()
                    report = await import_csv(
                        path,
                        ingestor,
                        Source(name=source),
                        restart=restart,
                        progress=lambda done, total: bar.update(task, completed=done, total=total),
                    )
                    seconds = time.perf_counter() - started
        finally:
            ledger.close()
        console.print(
            f"{report.rows:,} rows, {report.orders:,} orders in {seconds:.1f} s "
            f"({report.rows / max(seconds, 1e-9):,.0f} rows/s): {report.accepted:,} accepted, "
            f"{report.duplicates:,} already imported, {report.rejected_orders:,} rejected "
            f"({report.rejected_rows:,} rows"
            + (f", see {path.name}.rejected.csv)" if report.rejected_rows else ")")
            + (f"; resumed at byte {report.resumed_at:,}" if report.resumed_at else ""),
            soft_wrap=True,
        )

    try:
        run(main())
    except ConnectionError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(75) from None


@cli.command()
def version() -> None:
    """Print the service version."""
    typer.echo("engagement 0.1.0")


if __name__ == "__main__":
    cli()
