"""The campaign report from known events: the funnel, skip reasons, re-deliveries
counted once, and conversions of the targeted group against the holdout — credited to
the customer each recipient is now (a merge after the send included)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import factory as f
import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient

from analytics import campaigns
from analytics.entrypoints.api import create
from analytics.queries import Queries
from crm_contracts.envelope import Event, IdentifierKind
from crm_contracts.events.messaging import (
    CampaignLaunched,
    CampaignLaunchedPayload,
    MessageBounced,
    MessageBouncedPayload,
    MessageClicked,
    MessageClickedPayload,
    MessageFailed,
    MessageFailedPayload,
    MessageOpened,
    MessageOptedOut,
    MessagePayload,
    MessageSent,
    MessageSentPayload,
    MessageSkipped,
    MessageSkippedPayload,
)
from crm_platform.settings import Settings

pytestmark = pytest.mark.integration
CAMPAIGN = uuid.uuid4()
SEND_AT = datetime(2026, 11, 1, 3, tzinfo=UTC)  # noon in Tokyo
NAMES = "ABCDEFGHIJ"
IDS = {n: uuid.uuid4() for n in NAMES}
B2 = uuid.uuid4()  # B is merged into B2 after the send


def base(name: str, variant: str | None = "default", channel: str | None = "email") -> dict[str, Any]:
    return {
        "campaign_id": CAMPAIGN,
        "message_id": uuid.uuid5(CAMPAIGN, name),
        "customer_id": IDS[name],
        "channel": channel,
        "variant": variant,
    }


def env(name: str, minutes: int) -> dict[str, Any]:
    return {
        "occurred_at": SEND_AT + timedelta(minutes=minutes),
        "producer": "engagement.relay",
        "customer_key": str(IDS[name]),
    }


def events() -> list[Event]:
    out: list[Event] = [
        CampaignLaunched(
            occurred_at=SEND_AT - timedelta(hours=1),
            producer="engagement.relay",
            customer_key=f"campaign:{CAMPAIGN}",
            payload=CampaignLaunchedPayload(
                campaign_id=CAMPAIGN,
                name="冬のセール",
                channels=("email",),
                audience="segment:dormant",
                recipients=10,
                holdout=4,
                holdout_pct=40,
                variants=2,
                send_at=SEND_AT,
                attribution_days=7,
            ),
        )
    ]
    for n in "ABCD":
        variant = "gold" if n == "A" else "default"
        out.append(MessageSent(**env(n, 1), payload=MessageSentPayload(**base(n, variant), attempts=1)))
    out.append(
        MessageSkipped(**env("E", 1), payload=MessageSkippedPayload(**base("E", None), reason="no_consent"))
    )
    out.append(
        MessageFailed(
            **env("F", 1),
            payload=MessageFailedPayload(**base("F"), reason="SMTP 550", attempts=1, permanent=True),
        )
    )
    for n in "GHIJ":
        out.append(
            MessageSkipped(
                **env(n, 1), payload=MessageSkippedPayload(**base(n, None, None), reason="holdout")
            )
        )
    opened_a = MessageOpened(**env("A", 30), payload=MessagePayload(**base("A", "gold")))
    out += [
        opened_a,
        opened_a,  # a relay retry: the same event id
        MessageClicked(
            **env("A", 31),
            payload=MessageClickedPayload(**base("A", "gold"), link_no=0, link_host="shop.example.jp"),
        ),
        MessageOpened(**env("B", 40), payload=MessagePayload(**base("B"))),
        MessageBounced(**env("C", 5), payload=MessageBouncedPayload(**base("C"), kind="hard", reason="550")),
        MessageOptedOut(**env("D", 50), payload=MessagePayload(**base("D"))),
    ]
    # who is who: each recipient with a member card; B merged into B2 later
    for n in NAMES:
        if n != "B":
            out.append(f.profile(IDS[n], [f.ident(f"card-{n}", IdentifierKind.MEMBER_NO)]))
    out.append(
        f.profile(
            B2, [f.ident("card-B2", IdentifierKind.MEMBER_NO), f.ident("card-B", IdentifierKind.MEMBER_NO)]
        )
    )
    out.append(f.profile(IDS["B"], [], status="merged", merged_into=B2))
    # purchases: A in the window; B (as B2, after the merge) in the window and once after it;
    # G (holdout) in the window; H before the send
    out += [
        f.store_order("card-A", "2026-11-03", "o-a", ("tops", 1, 10_000)),
        f.store_order("card-B2", "2026-11-05", "o-b2", ("shoes", 1, 4_000)),
        f.store_order("card-B", "2026-11-20", "o-b-late", ("bags", 1, 50_000)),
        f.store_order("card-G", "2026-11-02", "o-g", ("tops", 1, 3_000)),
        f.store_order("card-H", "2026-10-30", "o-h", ("tops", 1, 9_000)),
    ]
    return out


def test_report_counts_the_funnel_and_the_uplift_against_the_holdout(client: Client) -> None:
    f.deliver(client, events())
    report = campaigns.campaign_report(Queries(client), CAMPAIGN, cost=1_000)
    assert report is not None
    assert (report["name"], report["recipients"], report["holdout"]) == ("冬のセール", 10, 4)
    assert (report["sent"], report["failed"], report["bounced"], report["delivered"]) == (4, 1, 1, 3)
    assert report["skipped"] == {"holdout": 4, "no_consent": 1}
    assert (report["opened"], report["clicked"], report["opted_out"]) == (2, 1, 1)  # A's open once
    assert report["open_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert {v["variant"]: v["sent"] for v in report["by_variant"]} == {"gold": 1, "default": 3}
    conversion = report["conversion"]
    assert conversion["window_days"] == 7
    targeted, holdout = conversion["targeted"], conversion["holdout"]
    assert (targeted["customers"], targeted["converted"], targeted["revenue"]) == (6, 2, 14_000)
    assert (holdout["customers"], holdout["converted"], holdout["revenue"]) == (4, 1, 3_000)
    uplift = report["uplift"]
    assert uplift["conversion_points"] == pytest.approx((2 / 6 - 1 / 4) * 100, abs=1e-3)
    assert uplift["revenue_per_customer"] == pytest.approx(14_000 / 6 - 3_000 / 4, abs=0.01)
    assert uplift["incremental_revenue"] == 9_500
    assert uplift["roi"] == pytest.approx(8.5)

    # a 30-day window takes B's later purchase in too
    wider = campaigns.campaign_report(Queries(client), CAMPAIGN, days=30)
    assert wider is not None
    assert wider["conversion"]["targeted"]["revenue"] == 64_000
    assert wider["uplift"]["roi"] is None  # no cost given


def test_report_and_list_over_http(tmp_path: Path, client: Client) -> None:
    f.deliver(client, events())
    client.close()
    settings = Settings(var_dir=tmp_path, clickhouse_url=None)
    settings = settings.model_copy(update={"var_dir": tmp_path})
    # the API opens the same embedded store the fixture filled
    (tmp_path / "analytics").mkdir(exist_ok=True)
    (tmp_path / "ch").rename(tmp_path / "analytics" / "clickhouse")
    with TestClient(create(settings, embedded_sink=False)) as api:
        api.headers["X-API-Key"] = "dev-read-key"
        listed = api.get("/v1/campaigns")
        assert listed.status_code == 200, listed.text
        assert [(c["campaign_id"], c["sent"], c["opened"]) for c in listed.json()] == [(str(CAMPAIGN), 4, 2)]
        got = api.get(f"/v1/campaigns/{CAMPAIGN}/report", params={"cost": 1000})
        assert got.status_code == 200, got.text
        assert got.json()["uplift"]["incremental_revenue"] == 9_500
        assert api.get(f"/v1/campaigns/{uuid.uuid4()}/report").status_code == 404
        assert api.get(f"/v1/campaigns/{CAMPAIGN}/report", params={"days": 0}).status_code == 422
        assert (
            api.get(f"/v1/campaigns/{CAMPAIGN}/report", headers={"X-API-Key": "dev-pos-key"}).status_code
            == 403
        )


def test_a_customer_several_recipients_merged_into_counts_once_and_never_in_both_groups(
    client: Client,
) -> None:
    """After merges, P1 and P2 (both targeted) are one customer S, and Q1 (targeted) and
    Q2 (holdout) are one customer T. Each counts once with its purchases once; T, on both
    sides, counts as targeted (it was messaged: the holdout must be untouched)."""
    campaign = uuid.uuid4()
    ids = {n: uuid.uuid4() for n in ("P1", "P2", "Q1", "Q2", "R")}
    survivor_s, survivor_t = uuid.uuid4(), uuid.uuid4()

    def payload(n: str) -> dict[str, Any]:
        return {"campaign_id": campaign, "message_id": uuid.uuid5(campaign, n), "customer_id": ids[n]}

    def at(n: str) -> dict[str, Any]:
        return {"occurred_at": SEND_AT, "producer": "engagement.relay", "customer_key": str(ids[n])}

    out: list[Event] = [
        CampaignLaunched(
            occurred_at=SEND_AT,
            producer="engagement.relay",
            customer_key=f"campaign:{campaign}",
            payload=CampaignLaunchedPayload(
                campaign_id=campaign,
                name="合流",
                channels=("email",),
                audience="list",
                recipients=5,
                holdout=2,
                holdout_pct=40,
                variants=1,
                send_at=SEND_AT,
                attribution_days=7,
            ),
        )
    ]
    for n in ("P1", "P2", "Q1"):
        sent = MessageSentPayload(**payload(n), channel="email", variant="d", attempts=1)
        out.append(MessageSent(**at(n), payload=sent))
    for n in ("Q2", "R"):
        skipped = MessageSkippedPayload(**payload(n), channel=None, variant=None, reason="holdout")
        out.append(MessageSkipped(**at(n), payload=skipped))

    def cards(*names: str) -> list[Any]:
        return [f.ident(f"card-{campaign}-{n}", IdentifierKind.MEMBER_NO) for n in names]

    out += [
        f.profile(survivor_s, cards("P1", "P2")),
        f.profile(survivor_t, cards("Q1", "Q2")),
        f.profile(ids["R"], cards("R")),
        f.profile(ids["P1"], [], status="merged", merged_into=survivor_s),
        f.profile(ids["P2"], [], status="merged", merged_into=survivor_s),
        f.profile(ids["Q1"], [], status="merged", merged_into=survivor_t),
        f.profile(ids["Q2"], [], status="merged", merged_into=survivor_t),
        f.store_order(f"card-{campaign}-P1", "2026-11-03", f"s-{campaign}", ("tops", 1, 10_000)),
        f.store_order(f"card-{campaign}-Q2", "2026-11-03", f"t-{campaign}", ("tops", 1, 5_000)),
        f.store_order(f"card-{campaign}-R", "2026-11-03", f"r-{campaign}", ("tops", 1, 1_000)),
    ]
    f.deliver(client, out)
    report = campaigns.campaign_report(Queries(client), campaign)
    assert report is not None
    targeted, holdout = report["conversion"]["targeted"], report["conversion"]["holdout"]
    assert (targeted["customers"], targeted["converted"], targeted["orders"], targeted["revenue"]) == (
        2,
        2,
        2,
        15_000,
    )
    assert (holdout["customers"], holdout["converted"], holdout["orders"], holdout["revenue"]) == (
        1,
        1,
        1,
        1_000,
    )
