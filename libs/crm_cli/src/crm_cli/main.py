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
def kafka_status() -> None:
    """Show whether the broker answers, its pid, paths and cache state (always exit 0)."""
    try:
        status = _broker().status()
    except KafkaLocalError as exc:
        err_console.print(f"[bold red]Kafka status failed:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None
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


if __name__ == "__main__":
    app()
