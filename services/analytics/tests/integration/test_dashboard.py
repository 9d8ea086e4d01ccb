"""The dashboard in a real browser: headless Chromium (Debian's, through Playwright)
against the analytics API on chDB, served by uvicorn on a free port.

A small hand-made data set (six customers, an anonymous sale, a return, a profile
linking two identifiers) is written straight into chDB with ``insert_rows``; its days
are placed relative to today (JST) so they fall in the dashboard's default period.
Every figure the page shows is compared with what the API answers for the same
request, after the same formatting; the charts are checked through ECharts' own
option model (the data they draw is the API's data). Chromium missing is a failure,
never a skip: ``scripts/bootstrap.sh --with-chromium`` installs it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from analytics.entrypoints.api import create
from analytics.sink import encode_row, insert_rows
from analytics.store import daily
from analytics.store.clickhouse import connect
from analytics.store.migrations import migrate
from crm_contracts.envelope import Event, IdentifierKind
from crm_contracts.registry import encode
from crm_platform.settings import DEV_API_KEYS, Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import factory as f

pytestmark = pytest.mark.integration

JST = ZoneInfo("Asia/Tokyo")
CHROMIUM = Path(os.environ.get("CRM_CHROMIUM", "/usr/bin/chromium"))
# Chromium hangs under libfaketime (the suite's run with the clock a year ahead,
# scripts/test.sh): it starts without it, and each page's clock is set to this process's.
BROWSER_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
READ_KEY = "dev-read-key"
NO_SCOPE_KEY = "test-identity-only-key"
ALICE = uuid.UUID("5b1f3c2e-8d4a-4f6b-9c1e-2a7d0e9f4b31")
SEGMENT_NAMES = {"new": "新規", "repeat": "リピート", "loyal": "優良", "dormant": "休眠"}
CHARTS = ("chart-revenue", "chart-active", "cohort-heatmap", "segment-chart")


# -- the page's formatting, in Python ----------------------------------------------------------


def _fixed(value: float, digits: int) -> str:
    """JavaScript's ``Number.prototype.toFixed``: the exact binary value, ties away from zero."""
    quantum = Decimal(1).scaleb(-digits)
    return format(Decimal(value).quantize(quantum, rounding=ROUND_HALF_UP), "f")


def fmt_int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def fmt_yen(value: float | None) -> str:
    if value is None:
        return "—"
    rounded = math.floor(value + 0.5)  # Math.round
    return ("-" if rounded < 0 else "") + f"¥{abs(rounded):,}"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else _fixed(value * 100, digits) + "%"


def fmt_dec2(value: float | None) -> str:
    return "—" if value is None else _fixed(float(value), 2)


def fmt_instant(iso: str) -> str:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(JST).strftime("%Y-%m-%d %H:%M")


def fmt_amount(event: dict[str, Any]) -> str:
    if event["event_type"].startswith("order."):
        return fmt_yen(event["amount"])
    if event["event_type"] == "member.points_changed":
        return ("+" if event["amount"] > 0 else "") + fmt_int(event["amount"]) + " pt"
    return fmt_int(event["amount"]) if event["amount"] else ""


KPI_FORMATS: dict[str, Callable[[Any], str]] = {
    "active_customers": fmt_int,
    "new_customers": fmt_int,
    "revenue": fmt_yen,
    "orders": fmt_int,
    "aov": fmt_yen,
    "purchase_frequency": fmt_dec2,
    "repeat_purchase_rate": fmt_pct,
    "retention_rate": fmt_pct,
    "churn_rate": fmt_pct,
    "historical_ltv": fmt_yen,
    "cross_sell_rate": fmt_pct,
    "up_sell_rate": fmt_pct,
    "omnichannel_share": fmt_pct,
}


# -- the data set -----------------------------------------------------------------------------------


def month_day(today: date, back: int, day: int = 10) -> date:
    """Day ``day`` of the month ``back`` months before today's month."""
    year, month = divmod(today.year * 12 + today.month - 1 - back, 12)
    return date(year, month + 1, day)


def month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


def dataset(today: date) -> list[Event]:
    """Six customers around the default period (the 12 months up to today):

    * alice (a profile links her member number and e-mail): bought before the period,
      then in store and online (four categories), returned part of an order, viewed a
      product — active, retained, up-sold, omnichannel;
    * bob (e-mail only, not linked): online twice in one month, then in the app;
    * carol, erin: one purchase each (erin this month); frank: five a month apart;
    * dave: bought only before the period (churned, dormant); one anonymous store sale.
    """

    def d(back: int, day: int = 10) -> str:
        return month_day(today, back, day).isoformat()

    alice_online = f.online_order("alice", d(6), "a2", ("shoes", 1, 12_000))
    events: list[Event] = [
        f.profile(ALICE, [f.ident("alice", IdentifierKind.MEMBER_NO), f.ident("alice")]),
        f.store_order("alice", d(14), "a0", ("tops", 1, 2_900)),
        f.store_order("alice", d(10), "a1", ("tops", 1, 4_900), ("bags", 1, 9_800)),
        alice_online,
        f.returned(alice_online, d(6, 20), 3_000),
        f.viewed("alice", f.at(d(1, 9))),
        f.store_order("alice", d(1), "a3", ("cosmetics", 2, 3_500)),
        f.online_order("bob", d(8), "b1", ("tops", 2, 2_900)),
        f.online_order("bob", d(8, 20), "b2", ("bottoms", 1, 4_900)),
        f.online_order("bob", d(2), "b3", ("tops", 1, 2_900), channel="app"),
        f.store_order("carol", d(5), "c1", ("bags", 1, 15_000)),
        f.store_order("dave", d(15), "d1", ("shoes", 1, 8_000)),
        f.online_order("erin", d(0, 1), "e1", ("cosmetics", 3, 1_200)),
        f.store_order(None, d(4), "x1", ("tops", 1, 990)),
    ]
    events += [f.store_order("frank", d(back), f"f{back}", ("bags", 1, 12_000)) for back in range(5, 0, -1)]
    return events


# -- fixtures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dashboard:
    url: str
    today: date  # JST, when the data set was made

    def api(self, path: str, key: str = READ_KEY, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, headers={"X-API-Key": key}, timeout=30)
        response.raise_for_status()
        return response.json() if "json" in response.headers["content-type"] else response.text


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """The analytics API on chDB with the data set, served by uvicorn in a thread."""
    var = tmp_path_factory.mktemp("dashboard") / "var"
    settings = Settings(var_dir=var, api_keys={**DEV_API_KEYS, NO_SCOPE_KEY: ["identity:read"]})
    today = datetime.now(JST).date()
    client = connect(settings)
    try:
        migrate(client)
        events = dataset(today)
        insert_rows(client, [encode_row(e.TOPIC, 0, i, encode(e)) for i, e in enumerate(events)])
        daily.refresh(client)

        app = create(settings, embedded_sink=False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="dashboard-api", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the analytics API did not start (see the log above)")
            time.sleep(0.05)
        try:
            yield Dashboard(f"http://127.0.0.1:{port}", today)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
    finally:
        client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run `scripts/bootstrap.sh --with-chromium`"
            " (Debian package chromium), or point CRM_CHROMIUM at a Chromium binary"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, env=BROWSER_ENV)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (empty localStorage) in a time zone far from Japan's: the page must
    work in JST business days whatever the browser's clock says."""
    context = browser.new_context(
        viewport={"width": 1440, "height": 1000},
        timezone_id="America/Los_Angeles",
        locale="en-US",
        reduced_motion="reduce",
        accept_downloads=True,
    )
    context.clock.set_fixed_time(datetime.now(UTC))  # the page's "today" is the test's
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(30_000)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# -- helpers ----------------------------------------------------------------------------------------


def settled(page: Page, view: str = "overview") -> str:
    """Waits until the view's requests have all answered; returns ``ready`` or ``error``."""
    page.wait_for_selector(f'body[data-{view}="ready"], body[data-{view}="error"]', state="attached")
    return page.locator("body").get_attribute(f"data-{view}") or ""


def ready(page: Page, view: str = "overview") -> None:
    state = settled(page, view)
    _assert_ready(page, view, state)


def act(page: Page, action: Callable[[], Any], view: str = "overview") -> str:
    """Does ``action`` and waits for the reload it starts (not a state left from before)."""
    page.evaluate(f"document.body.dataset.{view} = 'stale'")
    action()
    return settled(page, view)


def act_ready(page: Page, action: Callable[[], Any], view: str = "overview") -> None:
    _assert_ready(page, view, act(page, action, view))


def _assert_ready(page: Page, view: str, state: str) -> None:
    banner = page.get_by_test_id("error-banner")
    assert state == "ready", f"the {view} failed: {banner.inner_text() if banner.is_visible() else state}"


def period(page: Page) -> tuple[str, str]:
    """The API's [start, end) for the page's From/To (inclusive) pickers."""
    start = page.get_by_test_id("period-start").input_value()
    to = page.get_by_test_id("period-to").input_value()
    return start, (date.fromisoformat(to) + timedelta(days=1)).isoformat()


def chart_model(page: Page, testid: str) -> dict[str, Any]:
    """What ECharts holds for a chart: its canvases and its series' data."""
    model: dict[str, Any] = page.evaluate(
        """(testid) => {
            const el = document.querySelector(`[data-testid="${testid}"]`);
            const chart = window.echarts.getInstanceByDom(el);
            const canvases = [...el.querySelectorAll('canvas')];
            return {
                canvases: canvases.length,
                width: canvases.length ? canvases[0].width : 0,
                height: canvases.length ? canvases[0].height : 0,
                series: chart
                    ? Object.fromEntries(chart.getOption().series.map((s) => [s.id, s.data]))
                    : null,
            };
        }""",
        testid,
    )
    return model


# -- the tests --------------------------------------------------------------------------------------


def test_kpi_tiles_show_the_api_figures(page: Page, dashboard: Dashboard, artifacts_dir: Path) -> None:
    page.goto(f"{dashboard.url}/")
    ready(page)

    # The default period: the 12 months up to today (JST), from the 1st of the month 11 back.
    start, end = period(page)
    to = date.fromisoformat(end) - timedelta(days=1)
    assert to in {dashboard.today, datetime.now(JST).date()}
    assert start == month_day(to, 11, 1).isoformat()
    assert page.get_by_test_id("channel-filter").input_value() == "all"
    assert page.get_by_test_id("api-key").input_value() == READ_KEY

    for channel in ("all", "store", "online"):
        if channel != "all":
            act_ready(page, partial(page.get_by_test_id("channel-filter").select_option, channel))
        want = dashboard.api("/v1/kpis/overview", start=start, end=end, channel=channel)
        if channel == "all":  # the data set is what it is meant to be
            assert (want["active_customers"], want["new_customers"], want["orders"]) == (5, 4, 14)
            assert want["revenue"] == 123_890
            assert want["retention_rate"] == 0.5
        shown_values = {
            field: json.loads(page.get_by_test_id(f"kpi-{field}").get_attribute("data-value") or "undefined")
            for field in KPI_FORMATS
        }
        shown_text = {field: page.get_by_test_id(f"kpi-{field}-value").inner_text() for field in KPI_FORMATS}
        assert shown_values == {field: want[field] for field in KPI_FORMATS}, channel
        assert shown_text == {field: fmt(want[field]) for field, fmt in KPI_FORMATS.items()}, channel
        note = page.get_by_test_id("period-note").inner_text()
        assert want["period"]["start"] in note
        assert want["previous_period"]["start"] in note

        if channel == "all":
            for testid in CHARTS:
                expect(page.get_by_test_id(testid)).to_have_attribute("data-state", "ready")
            page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)

    assert not page.get_by_test_id("error-banner").is_visible()


def test_trend_charts_and_cohort_heatmap_draw_the_api_data(page: Page, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.url}/")
    ready(page)
    start, end = period(page)

    for testid in CHARTS:
        model = chart_model(page, testid)
        assert model["canvases"] >= 1, f"{testid} drew no canvas"
        assert model["width"] > 100 and model["height"] > 100, (testid, model["width"], model["height"])

    for interval in ("month", "day"):
        if interval != "month":
            act_ready(page, partial(page.get_by_test_id("interval").select_option, interval))

        def points(metric: str, interval: str = interval) -> list[list[Any]]:
            data = dashboard.api(
                "/v1/kpis/timeseries", metric=metric, start=start, end=end, interval=interval, channel="all"
            )
            return [[p["bucket"], p["value"]] for p in data["points"]]

        revenue = chart_model(page, "chart-revenue")["series"]
        assert revenue == {"revenue": points("revenue")}
        assert revenue["revenue"], "the revenue chart is empty"
        active = chart_model(page, "chart-active")["series"]
        assert active == {metric: points(metric) for metric in ("active_customers", "new_customers")}

    # The heatmap: one cell per cohort and month observed so far, coloured by the API's rate.
    cohorts = dashboard.api("/v1/cohorts", start=start, end=end, grain="month", channel="all")
    last = month_index(date.fromisoformat(end) - timedelta(days=1))
    want = {
        (x, y): rate
        for y, cohort in enumerate(cohorts["cohorts"])
        for x, rate in enumerate(cohort["rates"])
        if month_index(date.fromisoformat(cohort["cohort"])) + x <= last
    }
    cells = chart_model(page, "cohort-heatmap")["series"]["cohorts"]
    shown = {(c["value"][0], c["value"][1]): c["value"][2] for c in cells}
    assert shown == want
    assert {c["count"] for c in cells} <= {n for cohort in cohorts["cohorts"] for n in cohort["counts"]}
    # bob's month, carol's and frank's, erin's: three cohorts, frank bought again four months running
    assert len(cohorts["cohorts"]) == 3
    assert max(len(c["rates"]) for c in cohorts["cohorts"]) <= 12


def test_weekly_trends(page: Page, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.url}/")
    ready(page)
    start, end = period(page)
    act_ready(page, lambda: page.get_by_test_id("interval").select_option("week"))
    charts = {"chart-revenue": ["revenue"], "chart-active": ["active_customers", "new_customers"]}
    for testid, metrics in charts.items():
        want = {
            metric: [
                [p["bucket"], p["value"]]
                for p in dashboard.api(
                    "/v1/kpis/timeseries", metric=metric, start=start, end=end, interval="week", channel="all"
                )["points"]
            ]
            for metric in metrics
        }
        assert chart_model(page, testid)["series"] == want


def test_segments_show_their_sizes_and_export_csv(page: Page, dashboard: Dashboard) -> None:
    page.goto(f"{dashboard.url}/")
    ready(page)
    _, end = period(page)
    want = dashboard.api("/v1/segments", as_of=end, channel="all")
    sizes = {s["segment"]: s["customers"] for s in want["segments"]}
    assert sizes == {"new": 2, "repeat": 2, "loyal": 1, "dormant": 1}

    for s in want["segments"]:
        name = s["segment"]
        row = page.get_by_test_id(f"segment-{name}")
        expect(row).to_contain_text(SEGMENT_NAMES[name])
        assert row.get_attribute("data-customers") == str(s["customers"])
        assert page.get_by_test_id(f"segment-{name}-customers").inner_text() == fmt_int(s["customers"])
        assert page.get_by_test_id(f"segment-{name}-revenue").inner_text() == fmt_yen(s["revenue"])
    bars = chart_model(page, "segment-chart")["series"]["segments"]
    assert [b["value"] for b in bars] == [s["customers"] for s in want["segments"]]
    assert page.get_by_test_id("rfm-cell").count() == len(want["rfm"])

    # The CSV download is the API's CSV (fetched with the key, saved by the browser).
    with page.expect_download() as download:
        page.get_by_test_id("segment-csv-repeat").click()
    assert download.value.suggested_filename == f"segment-repeat-{end}.csv"
    csv_text = Path(download.value.path()).read_bytes().decode("utf-8")  # byte for byte (CRLF rows)
    assert csv_text == dashboard.api("/v1/segments/repeat/customers", as_of=end, channel="all", format="csv")
    assert csv_text.splitlines()[0] == "customer_id,rfm,orders,revenue,recency_days,first_day,last_day"
    assert len(csv_text.splitlines()) == 1 + sizes["repeat"]

    # The segment's customers, and from there alice's 360 page.
    page.get_by_test_id("segment-list-repeat").click()
    members = dashboard.api("/v1/segments/repeat/customers", as_of=end, channel="all", limit=25)["customers"]
    expect(page.get_by_test_id("segment-member-row")).to_have_count(len(members))
    act_ready(page, page.get_by_role("link", name=str(ALICE)).click, "customer")
    assert page.get_by_test_id("c360-id").inner_text() == str(ALICE)


def test_customer_360_shows_the_summary_and_timeline(
    page: Page, dashboard: Dashboard, artifacts_dir: Path
) -> None:
    page.goto(f"{dashboard.url}/#/customer/{ALICE}")
    ready(page, "customer")
    summary = dashboard.api(f"/v1/customers/{ALICE}")
    events = dashboard.api(f"/v1/customers/{ALICE}/timeline")["events"]
    assert len(events) == 6  # five orders and returns, one product view

    rows = page.get_by_test_id("timeline-row")
    expect(rows).to_have_count(len(events))
    assert [r.get_attribute("data-event-id") for r in rows.all()] == [e["event_id"] for e in events]
    cells = [r.locator("td").all_inner_texts() for r in rows.all()]
    assert [c[0] for c in cells] == [fmt_instant(e["occurred_at"]) for e in events]
    assert [c[1] for c in cells] == [e["event_type"] for e in events]
    assert [c[6] for c in cells] == [fmt_amount(e) for e in events]

    assert page.get_by_test_id("c360-status").inner_text() == summary["status"]
    assert page.get_by_test_id("c360-orders").inner_text() == fmt_int(summary["orders"])
    assert page.get_by_test_id("c360-revenue").inner_text() == fmt_yen(summary["revenue"])
    assert page.get_by_test_id("c360-events").inner_text() == fmt_int(summary["events"])
    assert page.get_by_test_id("c360-keys").inner_text() == fmt_int(summary["keys"])
    # a0–a3 (a return is no order); 2,900 + 14,700 + 12,000 − 3,000 + 7,000; her key and her id
    assert (summary["orders"], summary["revenue"], summary["keys"]) == (4, 33_600, 2)
    page.screenshot(path=str(artifacts_dir / "dashboard-customer.png"), full_page=True)

    # The search box takes a customer_id; an unknown one is a clear "not found".
    page.goto(f"{dashboard.url}/#/customer")
    expect(page.get_by_test_id("customer-empty")).to_be_visible()
    search = page.get_by_test_id("customer-search-input")
    search.fill(str(ALICE))
    act_ready(page, lambda: search.press("Enter"), "customer")
    expect(rows).to_have_count(len(events))
    assert page.url.endswith(f"#/customer/{ALICE}")

    search.fill(str(uuid.UUID(int=1)))
    act_ready(page, lambda: search.press("Enter"), "customer")
    expect(page.get_by_test_id("customer-not-found")).to_be_visible()
    expect(rows).to_have_count(0)


def test_errors_show_a_banner(page: Page, dashboard: Dashboard, artifacts_dir: Path) -> None:
    page.goto(f"{dashboard.url}/")
    ready(page)
    banner = page.get_by_test_id("error-banner")
    key = page.get_by_test_id("api-key")

    key.fill("not-a-key")
    assert act(page, lambda: key.dispatch_event("change")) == "error"
    expect(banner).to_be_visible()
    assert banner.get_attribute("data-status") == "401"
    expect(banner).to_contain_text("unknown API key")
    assert page.get_by_test_id("kpi-revenue-value").inner_text() == "—"
    assert page.evaluate("localStorage.getItem('crm.analytics.apiKey')") == "not-a-key"
    page.screenshot(path=str(artifacts_dir / "dashboard-401.png"))

    key.fill(NO_SCOPE_KEY)
    assert act(page, lambda: key.dispatch_event("change")) == "error"
    assert banner.get_attribute("data-status") == "403"
    expect(banner).to_contain_text("analytics:read")

    key.fill(READ_KEY)
    act_ready(page, lambda: key.dispatch_event("change"))
    expect(banner).to_be_hidden()

    # A period that ends before it starts: the API's 422, not a blank page.
    start, _ = period(page)
    before_start = (date.fromisoformat(start) - timedelta(days=2)).isoformat()
    assert act(page, lambda: page.get_by_test_id("period-to").fill(before_start)) == "error"
    assert banner.get_attribute("data-status") == "422"
    expect(banner).to_contain_text("invalid_period")

    # The customer 360 page says the same about an ID that is not one.
    assert act(page, lambda: page.goto(f"{dashboard.url}/#/customer/not-a-uuid"), "customer") == "error"
    assert banner.get_attribute("data-status") == "422"
