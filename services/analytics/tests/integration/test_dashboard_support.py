"""The dashboard's support panel and the 360's ticket figures, in a real browser
(headless Chromium through Playwright) against the analytics API on chDB: what the page
shows is what the API answers for the same period, formatted the page's way."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page, sync_playwright

from analytics.entrypoints.api import create
from analytics.sink import encode_row, insert_rows
from analytics.store.clickhouse import connect
from analytics.store.migrations import migrate
from crm_contracts.envelope import Event, IdentifierKind
from crm_contracts.events.support import (
    TicketOpened,
    TicketOpenedPayload,
    TicketRated,
    TicketRatedPayload,
    TicketReplied,
    TicketRepliedPayload,
    TicketResolved,
    TicketResolvedPayload,
)
from crm_contracts.registry import encode
from crm_platform.settings import DEV_API_KEYS, Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import factory as f

pytestmark = pytest.mark.integration
JST = ZoneInfo("Asia/Tokyo")
CHROMIUM = Path(os.environ.get("CRM_CHROMIUM", "/usr/bin/chromium"))
# Chromium hangs under libfaketime (the suite's run with the clock a year ahead,
# scripts/test.sh): it starts without it, and the page's clock is set to this process's.
BROWSER_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
HANA = uuid.UUID("0b6f2d1c-3e4a-4c5b-8d9e-1f2a3b4c5d6e")


def _fixed(value: float, digits: int) -> str:
    return format(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP), "f")


def tickets(now: datetime) -> list[Event]:
    """Hana (e-mail and member number, linked by her profile) wrote in three times in
    the last weeks; one ticket is still open. Another person once, anonymous once."""
    mail, card = f.ident("hana@example.jp"), f.ident("M-HANA", IdentifierKind.MEMBER_NO)
    out: list[Event] = [f.profile(HANA, [card, mail])]

    def ticket(
        who: object,
        days_ago: int,
        channel: str,
        reply_h: float | None,
        resolve_h: float | None,
        score: int | None,
    ) -> None:
        tid = uuid.uuid4()
        ids = (who,) if who else ()
        key = who.hash if who else f"anonymous:ticket:{tid}"  # type: ignore[attr-defined]
        at = now - timedelta(days=days_ago)

        def e(cls: type[Event], when: datetime, payload: object) -> None:
            out.append(
                cls(
                    occurred_at=when,
                    producer="support.relay",
                    customer_key=key,
                    identifiers=ids,
                    payload=payload,
                )
            )  # type: ignore[call-arg]

        e(TicketOpened, at, TicketOpenedPayload(ticket_id=tid, channel=channel, category="delivery"))
        if reply_h is not None:
            e(
                TicketReplied,
                at + timedelta(hours=reply_h),
                TicketRepliedPayload(
                    ticket_id=tid, author="staff", first_response_seconds=int(reply_h * 3600)
                ),
            )
        if resolve_h is not None:
            e(
                TicketResolved,
                at + timedelta(hours=resolve_h),
                TicketResolvedPayload(
                    ticket_id=tid,
                    resolution="answered",
                    resolution_seconds=int(resolve_h * 3600),
                    sla_met=resolve_h < 72,
                ),
            )
        if score is not None:
            e(
                TicketRated,
                at + timedelta(hours=(resolve_h or 0) + 1),
                TicketRatedPayload(ticket_id=tid, satisfaction=score),
            )

    ticket(mail, 20, "email", 2, 30, 5)
    ticket(card, 12, "store", 1.5, 100, 3)
    ticket(mail, 5, "chat", None, None, None)  # open: the backlog
    ticket(f.ident("other@example.jp"), 9, "phone", 5, 8, 4)
    ticket(None, 7, "store", None, 1, None)
    return out


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(var_dir=tmp_path_factory.mktemp("support-dash") / "var", api_keys=dict(DEV_API_KEYS))
    client = connect(settings)
    migrate(client)
    events = tickets(datetime.now(UTC) - timedelta(hours=1))
    insert_rows(client, [encode_row(e.TOPIC, 0, i, encode(e)) for i, e in enumerate(events)])
    client.close()
    app = create(settings, embedded_sink=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the analytics API did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `scripts/bootstrap.sh --with-chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, env=BROWSER_ENV)
        context = browser.new_context(timezone_id="America/Los_Angeles", locale="en-US")
        context.clock.set_fixed_time(datetime.now(UTC))  # the page's "today" is the test's
        p = context.new_page()
        errors: list[str] = []
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        p.set_default_timeout(30_000)
        yield p
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def api(url: str, path: str, **params: object) -> dict:  # type: ignore[type-arg]
    r = httpx.get(f"{url}{path}", params=params, headers={"X-API-Key": "dev-read-key"}, timeout=30)
    r.raise_for_status()
    return r.json()  # type: ignore[no-any-return]


def test_the_support_panel_shows_the_period_s_ticket_kpis(page: Page, url: str) -> None:
    page.goto(f"{url}/")
    page.wait_for_selector('body[data-overview="ready"], body[data-overview="error"]', state="attached")
    assert page.locator("body").get_attribute("data-overview") == "ready"
    assert page.get_by_test_id("support-kpis").get_attribute("data-state") == "ready"
    start = page.get_by_test_id("period-start").input_value()
    end = (date.fromisoformat(page.get_by_test_id("period-to").input_value()) + timedelta(days=1)).isoformat()
    want = api(url, "/v1/support/kpis", start=start, end=end)["total"]
    assert (want["opened"], want["resolved"], want["backlog"]) == (5, 4, 1)  # the data set, as meant

    def hours(seconds: float | None) -> str:
        return "—" if seconds is None else f"{_fixed(seconds / 3600, 1)} h"

    shown = {
        k: page.get_by_test_id(f"support-{k}").inner_text()
        for k in ("opened", "resolved", "backlog", "first-response", "resolution", "sla", "csat")
    }
    assert shown == {
        "opened": f"{want['opened']:,}",
        "resolved": f"{want['resolved']:,}",
        "backlog": f"{want['backlog']:,}",
        "first-response": hours(want["median_first_response_seconds"]),
        "resolution": hours(want["median_resolution_seconds"]),
        "sla": _fixed(want["sla_met_rate"] * 100, 1) + "%",
        "csat": _fixed(want["csat_average"], 2),
    }
    assert shown["csat"] == "4.00" and shown["first-response"] == "2.0 h"


def test_the_customer_360_counts_the_customer_s_tickets_across_identifiers(page: Page, url: str) -> None:
    page.goto(f"{url}/#/customer/{HANA}")
    page.wait_for_selector('body[data-customer="ready"], body[data-customer="error"]', state="attached")
    summary = api(url, f"/v1/customers/{HANA}")
    assert (summary["tickets"]["total"], summary["tickets"]["open"]) == (3, 1)
    assert page.get_by_test_id("c360-tickets").inner_text() == "3"
    assert page.get_by_test_id("c360-open-tickets").inner_text() == "1"
