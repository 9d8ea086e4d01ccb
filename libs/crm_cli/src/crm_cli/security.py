"""``crm keys`` (new API keys and contact-capability key pairs) and ``crm audit`` (who
read whose personal data), the operator's side of docs/security.md."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crm_platform.apikeys import KEY_ID_PATTERN, new_api_key
from crm_platform.capability import new_signing_key

keys_app = typer.Typer(
    help="Make API keys and signing keys (printed once; store them as secrets); re-wrap data keys.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

#: Where each service's API listens locally (``crm audit --service``).
SERVICE_URLS = {"identity": "http://127.0.0.1:8001", "support": "http://127.0.0.1:8003"}
_SCOPE = re.compile(r"^(\*|[a-z]+:(\*|[a-z_]+)|source:[A-Za-z0-9_.-]+|store:[A-Za-z0-9_.-]+)$")


@keys_app.command("new-api-key")
def new_api_key_command(
    key_id: str = typer.Option(..., "--id", help="the key's id: what events and the audit log record"),
    scopes: str = typer.Option(..., help="comma-separated, e.g. identity:read,identity:pii"),
) -> None:
    """Print a new random API key and its CRM_API_KEYS entry (the key's SHA-256, never
    the key). Give the key to its holder; merge the entry into CRM_API_KEYS."""
    if not re.match(KEY_ID_PATTERN, key_id):
        err_console.print(f"[bold red]--id:[/bold red] 1-64 letters, digits or '_.:-', not {key_id!r}")
        raise typer.Exit(2)
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    bad = [s for s in wanted if not _SCOPE.match(s)]
    if not wanted or bad:
        err_console.print(
            f"[bold red]--scopes:[/bold red] service:scope names, comma-separated; not {bad or scopes!r}"
        )
        raise typer.Exit(2)
    key, entry = new_api_key(key_id, wanted)
    print(f"key (give to its holder, shown once): {key}")
    print(f"CRM_API_KEYS entry: {json.dumps(entry)}")


@keys_app.command("new-contact-key")
def new_contact_key_command() -> None:
    """Print a new Ed25519 pair for contact capabilities: the signing key for
    engagement's dispatcher (CRM_CONTACT_SIGNING_KEY), the verify key for identity
    (CRM_CONTACT_VERIFY_KEY)."""
    signing, verify = new_signing_key()
    print(f"CRM_CONTACT_SIGNING_KEY={signing}")
    print(f"CRM_CONTACT_VERIFY_KEY={verify}")


def audit_command(
    service: str = typer.Option("identity", help="identity or support"),
    customer: str | None = typer.Option(None, help="one customer's entries (support: the customer key)"),
    key_id: str | None = typer.Option(None, "--key-id", help="one API key's entries"),
    since: str | None = typer.Option(None, help="from this instant, with offset (2026-11-20T00:00+09:00)"),
    until: str | None = typer.Option(None, help="to this instant (excluded), with its offset"),
    limit: int = typer.Option(100, min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help="print the entries as JSON lines"),
    url: str | None = typer.Option(None, help="the service's API (default: its local port)"),
    api_key: str = typer.Option("dev-admin-key", envvar="CRM_API_KEY", help="a key with <service>:audit"),
) -> None:
    """Who read whose personal data, when and why: the service's audit log."""
    import httpx

    if service not in SERVICE_URLS:
        err_console.print(f"[bold red]--service:[/bold red] one of {', '.join(SERVICE_URLS)}")
        raise typer.Exit(2)
    instants: dict[str, datetime] = {}
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            instant = None
        if instant is None or instant.tzinfo is None:
            err_console.print(
                f"[bold red]--{name}:[/bold red] an ISO 8601 instant with its offset (…+09:00 or …Z)"
            )
            raise typer.Exit(2)
        instants[name] = instant
    params: dict[str, Any] = {"limit": limit}
    if customer:
        params["customer_id"] = customer
    if key_id:
        params["key_id"] = key_id
    params.update({name: instant.isoformat() for name, instant in instants.items()})
    base = url or SERVICE_URLS[service]
    try:
        response = httpx.get(f"{base}/v1/audit", params=params, headers={"X-API-Key": api_key}, timeout=30)
    except httpx.HTTPError as exc:
        err_console.print(
            f"[bold red]{service} API unreachable at {escape(base)}:[/bold red] {escape(str(exc))}"
        )
        raise typer.Exit(1) from None
    if response.status_code != 200:
        err_console.print(f"[bold red]{response.status_code}:[/bold red] {escape(response.text[:500])}")
        raise typer.Exit(1)
    entries = response.json()["entries"]
    if as_json:
        for entry in entries:
            print(json.dumps(entry, ensure_ascii=False))
        return
    table = Table(title=f"{service} audit log: {len(entries)} entries", header_style="bold")
    for column in ("at", "key", "customer", "subject", "action", "purpose"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            e["at"], e["key_id"], e["customer_id"] or "", e["subject"] or "", e["action"], e["purpose"]
        )
    console.print(table)
