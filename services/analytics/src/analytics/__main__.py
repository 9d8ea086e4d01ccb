"""``python -m analytics api|sink|migrate|render-cluster|render-roles``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from crm_platform.process import process_settings, run_until_signal
from crm_platform.settings import Settings

cli = typer.Typer(add_completion=False, help="analytics service processes")


def _settings(role: str) -> Settings:
    return process_settings("analytics", role)


@cli.command()
def api(
    host: str | None = None,
    port: int | None = None,
    sink: Annotated[
        bool | None, typer.Option(help="run the sink in this process (default: only with embedded chDB)")
    ] = None,
) -> None:
    """Serve the query API and the dashboard (default 127.0.0.1:8004)."""
    import uvicorn

    from analytics.entrypoints.api import create

    settings = _settings("api")
    uvicorn.run(
        create(settings, embedded_sink=sink),
        host=host or settings.http_host,
        port=port or settings.http_port or 8004,
        log_config=None,
        access_log=False,
    )


@cli.command("sink")
def sink_() -> None:
    """Run the sink alone (a ClickHouse server deployment; chDB runs it inside the API),
    with /metrics and /healthz on CRM_SINK_METRICS_PORT (default 127.0.0.1:8014)."""
    from analytics.entrypoints.sink import run

    settings = _settings("sink")
    run_until_signal(lambda stop: run(settings, stop))


@cli.command()
def replay() -> None:
    """Rebuild every ClickHouse table from the Kafka log (stop the API/sink first)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from analytics.replay import replay as run_replay
    from analytics.store.clickhouse import connect

    settings = _settings("replay")
    client = connect(settings)
    with Progress(
        TextColumn("replaying the log"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bars:
        task = bars.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            bars.update(task, completed=done, total=total)

        result = asyncio.run(
            run_replay(
                client,
                bootstrap=settings.kafka_bootstrap,
                group_id=settings.analytics_sink_group,
                topic_prefix=settings.kafka_topic_prefix,
                validators=settings.sink_validators,
                progress=progress,
            )
        )
    client.close()
    typer.echo(
        f"rebuilt from {result.records:,} records in {result.seconds:.1f}s: {result.rate:,.0f} events/s"
        f" ({result.consuming_rate:,.0f} events/s while consuming, start-up aside)"
    )


@cli.command()
def migrate() -> None:
    """Apply the ClickHouse migrations that are not applied yet."""
    from analytics.store.clickhouse import connect
    from analytics.store.migrations import migrate as apply

    done = apply(connect(_settings("migrate")))
    typer.echo(
        f"applied {len(done)} migration(s): {', '.join(f'{m.version:04d}_{m.name}' for m in done) or '-'}"
    )


@cli.command("rebuild-lookup")
def rebuild_lookup() -> None:
    """Build identity_lookup (who owns each key, in memory) afresh from identity_map."""
    from analytics.store import lookup
    from analytics.store.clickhouse import connect

    size = lookup.rebuild(connect(_settings("migrate")))
    typer.echo(f"identity_lookup: {size.keys:,} keys, {size.bytes / 2**20:.0f} MiB")


@cli.command("render-cluster")
def render_cluster(
    cluster: Annotated[str, typer.Option(help="the cluster's name in remote_servers")] = "crm",
    database: str = "crm",
) -> None:
    """Print the schema as DDL for a replicated, sharded ClickHouse cluster."""
    from analytics.store.migrations import render

    typer.echo(render(cluster, database), nl=False)


@cli.command("render-roles")
def render_roles(database: str = "crm", role: str = "bi_reader") -> None:
    """Print the DDL of the read-only role for BI tools (server deployments)."""
    from analytics.store.migrations import readonly_role

    typer.echo(readonly_role(database, role), nl=False)


if __name__ == "__main__":
    cli()
