"""The ``crm`` operator CLI.

One Typer sub-app per command group; add a group with ``app.add_typer(...)`` (e.g.
``crm run`` for the supervisor). Command bodies stay thin: the work lives in modules
such as `crm_cli.kafka_local` so it can be tested and reused without the CLI.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crm_cli.kafka_local import KafkaLocalError, LocalKafka

app = typer.Typer(
    name="crm",
    help="Operate the CRM/CDP platform locally.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
kafka_app = typer.Typer(
    help="The local Apache Kafka broker (a JVM process, no Docker).",
    no_args_is_help=True,
)
app.add_typer(kafka_app, name="kafka")

console = Console()
err_console = Console(stderr=True)


def _broker() -> LocalKafka:
    # Progress goes to stderr so stdout stays clean for the final result line.
    return LocalKafka(progress=lambda message: err_console.print(f"[dim]{escape(message)}[/dim]"))


@kafka_app.command("start")
def kafka_start(
    timeout: float = typer.Option(60.0, help="Seconds to wait for the broker to be ready."),
) -> None:
    """Start the broker (downloading and formatting on first use); no-op if running."""
    try:
        broker = _broker()
        started = broker.start(timeout=timeout)
        pid = broker.managed_pid()
    except KafkaLocalError as exc:
        err_console.print(f"[bold red]Kafka failed to start:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    owner = f"pid {pid}" if pid is not None else "not started from this data dir"
    verb = "started" if started else "already running"
    console.print(f"[green]Kafka {verb}[/green] on [bold]{broker.bootstrap}[/bold] ({owner})")


@kafka_app.command("stop")
def kafka_stop(
    timeout: float = typer.Option(30.0, help="Seconds to wait before SIGKILL."),
) -> None:
    """Stop the broker this checkout started (clean shutdown, SIGKILL after timeout)."""
    try:
        broker = _broker()
        pid = broker.stop(timeout=timeout)
    except KafkaLocalError as exc:
        err_console.print(f"[bold red]Kafka failed to stop:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if pid is None:
        console.print(f"Kafka was not running from {broker.data_dir}")
    else:
        console.print(f"[green]Kafka stopped[/green] (pid {pid})")


@kafka_app.command("status")
def kafka_status(
    check: bool = typer.Option(False, "--check", help="Print nothing; exit 1 unless the broker answers."),
) -> None:
    """Show whether the broker answers, its pid, paths and cache state."""
    try:
        status = _broker().status()
    except KafkaLocalError as exc:
        err_console.print(f"[bold red]Kafka status failed:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if check:
        raise typer.Exit(0 if status.running else 1)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    running = "[green]running[/green]" if status.running else "[red]not running[/red]"
    if not status.running and status.pid is not None:
        running = "[yellow]process alive, not answering (starting or unhealthy)[/yellow]"
    table.add_row("status", running)
    table.add_row("bootstrap", status.bootstrap)
    table.add_row("pid", str(status.pid) if status.pid is not None else "-")
    table.add_row("cluster id", status.cluster_id or "-")
    table.add_row("version", status.version)
    table.add_row("data dir", str(status.data_dir))
    table.add_row("jars cached", "yes" if status.jars_cached else "no")
    console.print(table)


postgres_app = typer.Typer(help="A local PostgreSQL for production-mode tests.", no_args_is_help=True)
app.add_typer(postgres_app, name="postgres")


@postgres_app.command("start")
def postgres_start() -> None:
    """Install (Debian package) if missing, init and start; no-op if running."""
    from crm_cli.postgres_local import LocalPostgres

    status = LocalPostgres().start()
    console.print(f"[green]PostgreSQL running[/green] on 127.0.0.1:{status.port} ({status.data_dir})")


@postgres_app.command("status")
def postgres_status(
    check: bool = typer.Option(False, "--check", help="Print nothing; exit 1 unless this cluster runs."),
) -> None:
    """Whether the local cluster of this checkout runs."""
    from crm_cli.postgres_local import LocalPostgres

    status = LocalPostgres().status()
    if check:
        raise typer.Exit(0 if status.running else 1)
    state = "[green]running[/green]" if status.running else "[red]not running[/red]"
    console.print(f"PostgreSQL {state} on 127.0.0.1:{status.port} ({status.data_dir})")


@postgres_app.command("stop")
def postgres_stop() -> None:
    """Stop the local PostgreSQL cluster."""
    from crm_cli.postgres_local import LocalPostgres

    LocalPostgres().stop()
    console.print("PostgreSQL stopped")


@app.command(
    "import",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def import_csv(ctx: typer.Context) -> None:
    """Import historical transactions from CSV: ``crm import FILE [--source NAME] [--restart]``.

    Runs the engagement service's importer (``python -m engagement import``), which
    validates every order like the ingestion API, shows progress, resumes where an
    interrupted run stopped and writes rejected rows to ``FILE.rejected.csv``."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "engagement", "import", *ctx.args], check=False)
    raise typer.Exit(result.returncode)


_KPI_ROWS = (
    ("active_customers", "active customers", "{:,}"),
    ("new_customers", "new customers", "{:,}"),
    ("orders", "orders", "{:,}"),
    ("revenue", "revenue", "¥{:,}"),
    ("aov", "AOV", "¥{:,.0f}"),
    ("repeat_purchase_rate", "repeat-purchase rate", "{:.1%}"),
    ("retention_rate", "retention", "{:.1%}"),
    ("churn_rate", "churn", "{:.1%}"),
    ("purchase_frequency", "purchase frequency", "{:.2f}"),
    ("historical_ltv", "historical LTV", "¥{:,.0f}"),
    ("cross_sell_rate", "cross-sell rate", "{:.1%}"),
    ("up_sell_rate", "up-sell rate", "{:.1%}"),
    ("omnichannel_share", "omnichannel share", "{:.1%}"),
)


@app.command("kpi")
def kpi(
    start: str = typer.Option(None, help="first day (YYYY-MM-DD, JST); default: 30 days ago"),
    end: str = typer.Option(None, help="day after the last; default: tomorrow"),
    channel: str = typer.Option("all", help="all, store, online or app"),
    url: str = typer.Option("http://127.0.0.1:8004", envvar="CRM_ANALYTICS_URL", help="the analytics API"),
    api_key: str = typer.Option("dev-read-key", envvar="CRM_API_KEY", help="a key with analytics:read"),
) -> None:
    """The KPI overview of a period, from the analytics API."""
    from datetime import UTC, datetime, timedelta

    import httpx

    today = (datetime.now(UTC) + timedelta(hours=9)).date()
    params = {
        "start": start or (today - timedelta(days=29)).isoformat(),
        "end": end or (today + timedelta(days=1)).isoformat(),
        "channel": channel,
    }
    try:
        response = httpx.get(
            f"{url}/v1/kpis/overview", params=params, headers={"X-API-Key": api_key}, timeout=30
        )
    except httpx.HTTPError as exc:
        reason = escape(str(exc))
        err_console.print(f"[bold red]analytics API unreachable at {escape(url)}:[/bold red] {reason}")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        err_console.print(f"[bold red]{response.status_code}:[/bold red] {escape(response.text[:500])}")
        raise typer.Exit(1)
    data = response.json()
    table = Table(title=f"KPIs {data['period']['start']} – {data['period']['end']} ({channel})")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key, label, fmt in _KPI_ROWS:
        value = data.get(key)
        table.add_row(label, "–" if value is None else fmt.format(value))
    console.print(table)


@app.command("run")
def run(
    stop_kafka: bool = typer.Option(True, help="Stop the broker on exit if this command started it."),
) -> None:
    """Start Kafka and every service process; print where to look; Ctrl-C stops all."""
    from crm_cli.supervisor import Supervisor, platform_processes

    broker = _broker()
    try:
        started_kafka = broker.start()
    except KafkaLocalError as exc:
        err_console.print(f"[bold red]Kafka failed to start:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    supervisor = Supervisor(platform_processes(), console)
    supervisor.install_signal_handlers()
    supervisor.start()
    try:
        slow = supervisor.wait_healthy()
        if slow and not supervisor.stopping:
            err_console.print(f"[bold red]not healthy in time:[/bold red] {', '.join(slow)}")
            raise typer.Exit(1)
        if not supervisor.stopping:
            _print_where_to_look(broker.bootstrap)
            supervisor.watch()
    finally:
        console.print("[bold]stopping…[/bold]")
        supervisor.stop()
        if started_kafka and stop_kafka:
            broker.stop()
        console.print("[bold]stopped[/bold]")
    if supervisor.failed:
        raise typer.Exit(1)


def _print_where_to_look(bootstrap: str) -> None:
    table = Table(title="CRM platform is up", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("where")
    table.add_row("identity API docs", "http://127.0.0.1:8001/docs")
    table.add_row("identity health", "http://127.0.0.1:8001/readyz")
    table.add_row("engagement API docs (ingestion, membership)", "http://127.0.0.1:8002/docs")
    table.add_row("ingestion keys (development)", "X-API-Key: dev-pos-key / dev-shop-key")
    table.add_row("dashboard (KPIs, cohorts, segments, customer 360)", "http://127.0.0.1:8004/")
    table.add_row("analytics API docs", "http://127.0.0.1:8004/docs")
    table.add_row("Kafka", bootstrap)
    table.add_row("API key (development)", "X-API-Key: dev-admin-key")
    table.add_row("stop", "Ctrl-C")
    console.print(table)


if __name__ == "__main__":
    app()
