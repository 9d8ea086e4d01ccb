"""The whole platform, small: a demo retailer loaded through the APIs, then checked
against its ground truth — resolution quality, and every purchase and every inquiry
counted exactly once."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from running import crm, running_platform

pytestmark = pytest.mark.integration


def test_a_small_retailer_resolves_well_and_every_purchase_counts_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Topics of its own on the shared broker: the platform sees this retailer only.
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "CRM_VAR_DIR": str(tmp_path / "var"), "CRM_KAFKA_TOPIC_PREFIX": prefix}
    report, again = tmp_path / "report.json", tmp_path / "again.json"
    demo = ("demo", "--customers", "150", "--seed", "3", "--report-json")
    with running_platform(env):
        first = crm(env, *demo, str(report))
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        # Loading again resumes: nothing is sent twice, the figures stay.
        second = crm(env, *demo, str(again), timeout=300)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "already loaded" in second.stdout
    figures = json.loads(report.read_text())
    quality, expected, counted = figures["quality"], figures["expected"], figures["all_time"]
    # Who is who, against the generator's ground truth (a wrong merge costs most).
    assert quality["precision"] >= 0.98, quality
    assert quality["f1"] >= 0.95, quality
    # Every generated purchase counted once: no more, no fewer, to the yen.
    assert counted["orders"] == expected["orders"]
    assert counted["revenue"] == expected["revenue"]
    # Every generated inquiry reached analytics through support's store, relay and Kafka,
    # once: a duplicate or a loss would move the count.
    assert expected["tickets"] > 0
    assert counted["tickets"] == expected["tickets"]
    assert figures["support"]["opened"] <= expected["tickets"]
    # Campaigns: what engagement recorded (sent by the dispatcher into the local mail
    # sink, answered through the tracking links) is what analytics reports, per campaign.
    truth = json.loads((tmp_path / "var" / "demo" / "truth.json").read_text())
    recorded = {c["campaign_id"]: c for c in truth["campaigns"]["campaigns"]}
    reported = {r["campaign_id"]: r for r in figures["campaigns"]}
    assert recorded and reported.keys() == recorded.keys()
    assert sum(c["sent"] for c in recorded.values()) > 0
    for campaign_id, c in recorded.items():
        r = reported[campaign_id]
        assert (r["sent"], r["opened"], r["clicked"], r["opted_out"]) == (
            c["sent"],
            c["opened"],
            c["clicked"],
            c["opted_out"],
        ), (r, c)
    assert sum(r["clicked"] for r in reported.values()) == truth["campaigns"]["clicks"]
    # The survey: every answer sent reached analytics once, against its invitations.
    survey = figures["surveys"]["survey"]
    assert truth["surveys"]["answered"] > 0
    assert counted["survey_responses"] == survey["responses"] == truth["surveys"]["answered"]
    assert survey["invitations"] == truth["surveys"]["invited"]
    later = json.loads(again.read_text())
    assert later["all_time"]["tickets"] == expected["tickets"]
    assert later["support"] == figures["support"]
    assert later["all_time"]["orders"] == expected["orders"]
    # The report was taken on a settled pipeline: what analytics answers later (no new
    # data in between) is what the report said, customer counts and segments included.
    assert later["overview"] == figures["overview"]
    assert later["segments"] == figures["segments"]
    assert later["quality"] == quality
