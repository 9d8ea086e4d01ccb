"""The ``crm`` operator CLI.

One Typer sub-app per command group; add a group with ``app.add_typer(...)`` (e.g.
``crm run`` for the supervisor). Command bodies stay thin: the work lives in modules
such as `crm_cli.kafka_local` so it can be tested and reused without the CLI.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crm_cli.kafka_local import KafkaLocalError, LocalKafka
from crm_cli.security import audit_command, keys_app

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
app.add_typer(keys_app, name="keys")
app.command("audit")(audit_command)

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


# `crm keys`: crm_cli.security makes API keys and the contact pair; rotation is here.


@keys_app.command("rotate")
def keys_rotate(
    batch: int = typer.Option(500, min=1, max=100_000, help="Keys read per batch."),
) -> None:
    """Re-wrap every data key of every service store under the current master key
    (CRM_MASTER_KEY, version CRM_MASTER_KEY_VERSION); older keys by version from
    CRM_MASTER_KEYS_PREVIOUS. Idempotent and resumable: run it again after a failure.
    Once every live key is under the current version, the old master keys can go."""
    from crm_platform.crypto import SealError
    from crm_platform.datakeys import rotate_all
    from crm_platform.settings import Settings

    settings = Settings()
    try:
        results = rotate_all(settings, batch=batch)
    except SealError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    table = Table("service", "table", "store", "re-wrapped", "skipped", "live keys by master key version")
    older: set[int] = set()
    for r in results:
        if r.report is None:
            table.add_row(r.store.service, r.store.table, escape(r.where), "-", "-", "no key table yet")
            continue
        older.update(v for v in r.report.live_by_version if v != settings.master_key_version)
        live = ", ".join(f"v{v}: {n}" for v, n in sorted(r.report.live_by_version.items())) or "none"
        table.add_row(
            r.store.service,
            r.store.table,
            escape(r.where),
            str(r.report.rewrapped),
            str(r.report.skipped),
            live,
        )
    console.print(table)
    if older:
        # A process still on the old configuration made keys meanwhile: run again once
        # every process has the new CRM_MASTER_KEY.
        err_console.print(f"[red]keys under master key versions {sorted(older)} remain; run again[/red]")
        raise typer.Exit(1)
    console.print(
        f"every live data key is under master key version {settings.master_key_version}; "
        "the previous master keys can be removed (CRM_MASTER_KEYS_PREVIOUS)"
    )


@app.command(
    "import",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def import_csv(ctx: typer.Context) -> None:
    """Import historical transactions from CSV: ``crm import FILE [--source NAME] [--restart]``.

    Runs the engagement service's importer (``python -m engagement import``), which
    validates every order like the ingestion API, shows progress, resumes where an
    interrupted run stopped and writes rejected rows to ``FILE.rejected.csv``."""

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


def _var_dir() -> Path:
    from crm_platform.settings import Settings

    return Settings().var_dir


def load_demo(customers: int, seed: int, *, reload: bool = False) -> dict[str, Any]:
    """Load the demo retailer into the running platform (once per var/), wait until
    analytics counted every purchase, print the report; returns the report's figures."""
    import asyncio
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from crm_cli import demo

    endpoints = demo.Endpoints()
    state_path = _var_dir() / "demo" / "state.json"
    truth_path = _var_dir() / "demo" / "truth.json"
    wanted = {"customers": customers, "seed": seed}
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        tasks: dict[str, Any] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bars.add_task(label, total=total)
            bars.update(tasks[label], completed=done, total=total)

        if state and {k: state.get(k) for k in wanted} == wanted and truth_path.exists() and not reload:
            console.print(
                f"[dim]demo retailer already loaded ({customers:,} people, seed {seed}): resuming[/dim]"
            )
            truth = json.loads(truth_path.read_text())
        else:
            console.print(f"[bold]loading the demo retailer:[/bold] {customers:,} people, seed {seed}")
            plan = demo.plan(customers, seed)
            report = asyncio.run(demo.load(plan, endpoints, progress))
            demo.write_truth(truth_path, plan, report)
            truth = json.loads(truth_path.read_text())
            # Campaigns go to segments: analytics must have counted the history first.
            asyncio.run(demo.wait_until_counted(endpoints, truth, progress=progress))
            campaigns = asyncio.run(
                demo.run_campaigns(
                    endpoints, truth, _var_dir(), progress=lambda line: console.print(f"[dim]{line}[/dim]")
                )
            )
            truth["campaigns"] = campaigns
            demo.add_campaign_orders(truth, campaigns["orders"])
            truth_path.write_text(json.dumps(truth, ensure_ascii=False))
            state_path.write_text(json.dumps({**wanted, "seconds": round(report.seconds, 1)}))
        counted = asyncio.run(demo.wait_until_counted(endpoints, truth, progress=progress))
    # Merges decided late (a late registration tying two customers) reach analytics after
    # the purchases are counted: report on a settled pipeline, or the figures drift.
    from crm_cli.status import wait_until_settled
    from crm_platform.settings import Settings

    settings = Settings()
    asyncio.run(
        wait_until_settled(settings.kafka_bootstrap, settings.platform_groups(), settings.kafka_topic_prefix)
    )
    counted = asyncio.run(demo.wait_until_counted(endpoints, truth))
    current = asyncio.run(
        demo.current_customers(endpoints, {r["customer_id"] for r in truth["registrations"]})
    )
    quality = demo.resolution_quality(truth, current)
    segments = asyncio.run(demo.segments(endpoints))
    end = (datetime.now(UTC) + timedelta(hours=9)).date() + timedelta(days=1)
    overview = asyncio.run(demo.overview(endpoints, end - timedelta(days=365), end))
    expected = demo.expected_totals(truth)
    support = asyncio.run(demo.support_kpis(endpoints, end - timedelta(days=365), end))
    campaign_reports = asyncio.run(demo.campaign_reports(endpoints, truth))
    surveys = asyncio.run(demo.survey_results(endpoints, truth))
    _print_report(quality, overview, segments, expected, counted)
    _print_support(support, expected, counted)
    _print_campaigns(campaign_reports, truth.get("campaigns") or {})
    _print_surveys(surveys, truth.get("surveys") or {})
    return {
        "quality": quality,
        "overview": overview,
        "all_time": counted,
        "segments": segments,
        "expected": expected,
        "support": support,
        "campaigns": campaign_reports,
        "surveys": surveys,
    }


def _print_report(
    quality: dict[str, Any],
    overview: dict[str, Any],
    segments: dict[str, Any],
    expected: dict[str, int],
    counted: dict[str, Any],
) -> None:
    who = Table(title="Identity resolution (名寄せ)", header_style="bold")
    who.add_column("")
    who.add_column("", justify="right")
    who.add_row("channel registrations (before)", f"{quality['registrations']:,}")
    who.add_row("customers after resolution", f"{quality['customers']:,}")
    who.add_row("real people (ground truth)", f"{quality['people']:,}")
    who.add_row(
        "precision / recall / F1",
        f"{quality['precision']:.3f} / {quality['recall']:.3f} / {quality['f1']:.3f}",
    )
    console.print(who)
    # The API's periods end before their `end` day: the report names the last day in.
    last_day = date.fromisoformat(overview["period"]["end"]) - timedelta(days=1)
    kpis = Table(title=f"KPIs of the last 12 months, {overview['period']['start']} – {last_day}")
    kpis.add_column("KPI")
    kpis.add_column("value", justify="right")
    for key, label, fmt in _KPI_ROWS:
        value = overview.get(key)
        kpis.add_row(label, "–" if value is None else fmt.format(value))
    kpis.add_row("all-time purchases generated / counted", f"{expected['orders']:,} / {counted['orders']:,}")
    kpis.add_row(
        "all-time revenue generated / counted", f"¥{expected['revenue']:,} / ¥{counted['revenue']:,}"
    )
    console.print(kpis)
    segs = Table(title=f"Segments, end of {date.fromisoformat(segments['as_of']) - timedelta(days=1)}")
    segs.add_column("segment")
    segs.add_column("customers", justify="right")
    names = {"new": "新規 new", "repeat": "リピート repeat", "loyal": "優良 loyal", "dormant": "休眠 dormant"}
    for seg in segments["segments"]:
        segs.add_row(names.get(seg["segment"], seg["segment"]), f"{seg['customers']:,}")
    console.print(segs)


def _print_support(support: dict[str, Any], expected: dict[str, int], counted: dict[str, Any]) -> None:
    def hours(seconds: float | None) -> str:
        return "–" if seconds is None else f"{seconds / 3600:.1f} h"

    def share(rate: float | None) -> str:
        return "–" if rate is None else f"{rate:.1%}"

    table = Table(title="Support (問い合わせ), last 12 months", header_style="bold")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row(
        "tickets opened / resolved / open now",
        f"{support['opened']:,} / {support['resolved']:,} / {support['backlog']:,}",
    )
    table.add_row(
        "median first response / resolution",
        f"{hours(support['median_first_response_seconds'])} / {hours(support['median_resolution_seconds'])}",
    )
    table.add_row("SLA met", share(support["sla_met_rate"]))
    csat = support["csat_average"]
    table.add_row(
        "CSAT (1–5) / satisfied (4–5)",
        f"{'–' if csat is None else f'{csat:.2f}'} / {share(support['csat_satisfied_rate'])}",
    )
    table.add_row(
        "all-time tickets generated / counted", f"{expected['tickets']:,} / {counted.get('tickets', 0):,}"
    )
    console.print(table)


def _print_campaigns(reports: list[dict[str, Any]], loaded: dict[str, Any]) -> None:
    def rate(value: float | None) -> str:
        return "–" if value is None else f"{value:.1%}"

    table = Table(title="Campaigns (一斉配信), from the analytics report", header_style="bold")
    table.add_column("campaign", overflow="fold", min_width=12)
    for column in ("to / held out", "sent", "opened / clicked / opted out", "bought: targeted / held out"):
        table.add_column(column, justify="right")
    for r in reports:
        targeted, holdout = r["conversion"]["targeted"], r["conversion"]["holdout"]
        table.add_row(
            r["name"] or r["campaign_id"],
            f"{r['recipients']:,} / {r['holdout']:,}",
            f"{r['sent']:,}",
            f"{r['opened']:,} / {r['clicked']:,} / {r['opted_out']:,}",
            f"{rate(targeted['conversion_rate'])} / {rate(holdout['conversion_rate'])}",
        )
    console.print(table)
    for line in loaded.get("not_launched", []):
        console.print(f"[dim]not launched: {escape(line)}[/dim]")


def _print_surveys(results: dict[str, Any], loaded: dict[str, Any]) -> None:
    if not results:
        return
    survey = results["survey"]
    table = Table(title="Survey (アンケート) and forms, from analytics", header_style="bold")
    table.add_column("")
    table.add_column("", justify="right")
    rate = survey["response_rate"]
    table.add_row(
        "invited / answers generated / counted",
        f"{loaded.get('invited', 0):,} / {loaded.get('answered', 0):,} / {survey['responses']:,}",
    )
    table.add_row("response rate", "–" if rate is None else f"{rate:.1%}")
    for question_id, q in survey["questions"].items():
        if q["kind"] == "nps":
            table.add_row(f"NPS ({question_id})", "–" if q["nps"] is None else f"{q['nps']:+.0f}")
        elif q["kind"] == "csat":
            table.add_row(f"CSAT 1–5 ({question_id})", "–" if q["average"] is None else f"{q['average']:.2f}")
    for form in results["forms"]["forms"]:
        label = f"form {form.get('form_kind', '')}".strip()
        figures = (
            f"{form.get('submissions', 0):,} submissions, {form.get('new_customers', 0):,} new customers"
        )
        registrations = form.get("registrations")
        if registrations:
            confirmed, waitlisted = registrations.get("confirmed", 0), registrations.get("waitlisted", 0)
            figures += f"; {confirmed} confirmed, {waitlisted} waitlisted"
        table.add_row(label, figures)
    console.print(table)


@app.command("demo")
def demo_command(
    customers: int = typer.Option(2_000, min=10, max=2_000_000, help="people in the demo retailer"),
    seed: int = typer.Option(7, help="the generator's seed (same seed, same retailer)"),
    reload: bool = typer.Option(False, help="load again even if var/ holds this demo already"),
    report_json: Annotated[
        Path | None, typer.Option(help="also write the report's figures to this file")
    ] = None,
) -> None:
    """Load the demo retailer into the running platform and print the report."""
    import json

    figures = load_demo(customers, seed, reload=reload)
    if report_json is not None:
        report_json.write_text(json.dumps(figures, ensure_ascii=False, indent=1))


@app.command("run")
def run(
    stop_kafka: bool = typer.Option(True, help="Stop the broker on exit if this command started it."),
    customers: int = typer.Option(2_000, min=10, max=2_000_000, help="people in the demo retailer"),
    seed: int = typer.Option(7, help="the demo generator's seed"),
    load: bool = typer.Option(True, help="load the demo retailer (once per var/); --no-load skips it"),
) -> None:
    """Start Kafka and every service process, load the demo retailer, print the report
    and where to look; Ctrl-C stops all."""
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
        if not supervisor.stopping and load:
            import signal

            def interrupt(signum: int, frame: Any) -> None:
                supervisor.request_stop(signum, frame)
                raise KeyboardInterrupt  # Ctrl-C during the load: stop it, then everything

            previous = signal.signal(signal.SIGINT, interrupt)
            try:
                load_demo(customers, seed)
            except KeyboardInterrupt:
                pass
            except Exception as exc:  # the platform stays up: say what failed
                err_console.print(f"[bold red]demo load failed:[/bold red] {escape(str(exc))}")
            finally:
                signal.signal(signal.SIGINT, previous)
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


@app.command("up")
def up(
    stop_kafka: bool = typer.Option(True, help="Stop the broker on exit if this command started it."),
) -> None:
    """Start Kafka and every service process without loading the demo (`crm run --no-load`)."""
    run(stop_kafka=stop_kafka, customers=2_000, seed=7, load=False)


@app.command("status")
def status(
    api_key: str = typer.Option("dev-admin-key", envvar="CRM_API_KEY", help="a key that may read every API"),
) -> None:
    """Processes, topics (events on each), consumer lag, and what analytics holds."""
    import asyncio

    import httpx

    from crm_cli.status import kafka_overview
    from crm_cli.supervisor import platform_processes

    procs = Table(title="Processes", header_style="bold")
    procs.add_column("process")
    procs.add_column("health")
    for spec in platform_processes():
        if spec.health_url is None:
            procs.add_row(spec.name, "[dim]no HTTP port: see lag below[/dim]")
            continue
        try:
            ok = httpx.get(spec.health_url.replace("healthz", "readyz"), timeout=3).status_code == 200
            procs.add_row(spec.name, "[green]ready[/green]" if ok else "[yellow]not ready[/yellow]")
        except httpx.HTTPError:
            procs.add_row(spec.name, "[red]down[/red]")
    console.print(procs)
    from crm_platform.settings import Settings

    settings = Settings()
    try:
        topics, groups = asyncio.run(kafka_overview(settings.kafka_bootstrap, settings.kafka_topic_prefix))
    except Exception as exc:
        err_console.print(
            f"[bold red]Kafka unreachable at {settings.kafka_bootstrap}:[/bold red] {escape(str(exc))}"
        )
        raise typer.Exit(1) from None
    table = Table(title="Topics", header_style="bold")
    table.add_column("topic")
    table.add_column("partitions", justify="right")
    table.add_column("events", justify="right")
    for name, (partitions, events) in sorted(topics.items()):
        table.add_row(name, str(partitions), f"{events:,}")
    console.print(table)
    lag = Table(title="Consumer groups", header_style="bold")
    lag.add_column("group")
    lag.add_column("lag", justify="right")
    for group, behind in sorted(groups.items()):
        lag.add_row(group, f"{behind:,}")
    console.print(lag)
    try:
        fresh = httpx.get(
            "http://127.0.0.1:8004/v1/status", headers={"X-API-Key": api_key}, timeout=10
        ).json()
        console.print(
            f"analytics: {fresh['events']:,} events in ClickHouse, last ingested {fresh['last_ingested']}"
        )
    except (httpx.HTTPError, KeyError, ValueError):
        console.print("[yellow]analytics API not answering on 8004[/yellow]")


@app.command("customer")
def customer(
    query: str = typer.Argument(help="a name (kanji, kana, romaji), e-mail, phone or member number"),
    api_key: str = typer.Option(
        "dev-admin-key", envvar="CRM_API_KEY", help="a key with identity:read (names: identity:pii)"
    ),
) -> None:
    """Find a customer and show their profile with the analytics 360 summary (the query
    goes in a request body; a name needs two kanji or three kana)."""
    import httpx

    headers = {"X-API-Key": api_key}
    try:
        found = httpx.post(
            "http://127.0.0.1:8001/customers/search", json={"q": query}, headers=headers, timeout=10
        )
    except httpx.HTTPError as exc:
        err_console.print(f"[bold red]identity API unreachable:[/bold red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if found.status_code != 200:
        err_console.print(f"[bold red]{found.status_code}:[/bold red] {escape(found.text[:400])}")
        raise typer.Exit(1)
    matches = found.json()
    if not matches:
        console.print("no customer found")
        raise typer.Exit(1)
    table = Table(title=f"{len(matches)} match(es) for {query!r}", header_style="bold")
    for column in ("customer_id", "matched on", "name (key)", "prefecture"):
        table.add_column(column)
    for m in matches:
        table.add_row(m["customer_id"], m["matched_on"], m["name_kanji_key"] or "", m["prefecture"] or "")
    console.print(table)
    cid = matches[0]["customer_id"]
    profile = httpx.get(f"http://127.0.0.1:8001/customers/{cid}", headers=headers, timeout=10)
    if profile.status_code == 200:
        console.print_json(data=profile.json())
    summary = httpx.get(f"http://127.0.0.1:8004/v1/customers/{cid}", headers=headers, timeout=10)
    if summary.status_code == 200:
        console.print_json(data=summary.json())
    console.print(f"customer 360: http://127.0.0.1:8004/#/customer/{cid}")


@app.command("replay")
def replay(
    projection: str = typer.Argument(help="what to rebuild from the log: analytics or identity"),
) -> None:
    """Rebuild a projection from its log, with the rate reached.

    ``analytics``: every ClickHouse table from the Kafka log (with chDB, stop the platform
    first); ``identity``: identity's match and search projection from its event store."""
    import socket

    if projection not in ("analytics", "identity"):
        err_console.print(f"[bold red]unknown projection {projection!r}:[/bold red] analytics or identity")
        raise typer.Exit(2)
    if projection == "identity":
        result = subprocess.run([sys.executable, "-m", "identity", "replay"], check=False)
        raise typer.Exit(result.returncode)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8004)) == 0:
            err_console.print(
                "[bold red]the analytics API runs on 8004:[/bold red] stop the platform first (chDB)"
            )
            raise typer.Exit(1)
    result = subprocess.run([sys.executable, "-m", "analytics", "replay"], check=False)
    raise typer.Exit(result.returncode)


@app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Run benchmarks (``bench/run.py``): `crm bench ingest analytics`; figures in bench/results/."""
    from crm_platform.settings import find_project_root

    runner = find_project_root() / "bench" / "run.py"
    if not runner.exists():
        err_console.print("[bold red]bench/run.py not found:[/bold red] run it from the project checkout")
        raise typer.Exit(1)
    result = subprocess.run([sys.executable, str(runner), *ctx.args], check=False)
    raise typer.Exit(result.returncode)


def _print_where_to_look(bootstrap: str) -> None:
    table = Table(title="CRM platform is up", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("where")
    table.add_row("identity API docs", "http://127.0.0.1:8001/docs")
    table.add_row("identity health", "http://127.0.0.1:8001/readyz")
    table.add_row("engagement API docs (ingestion, membership)", "http://127.0.0.1:8002/docs")
    table.add_row("ingestion keys (development)", "X-API-Key: dev-pos-key / dev-shop-key")
    table.add_row("support API docs (inquiry tickets)", "http://127.0.0.1:8003/docs")
    table.add_row("dashboard (KPIs, cohorts, segments, customer 360)", "http://127.0.0.1:8004/")
    table.add_row("analytics API docs", "http://127.0.0.1:8004/docs")
    table.add_row("Kafka", bootstrap)
    table.add_row("API key (development)", "X-API-Key: dev-admin-key")
    table.add_row("stop", "Ctrl-C")
    console.print(table)


if __name__ == "__main__":
    app()
