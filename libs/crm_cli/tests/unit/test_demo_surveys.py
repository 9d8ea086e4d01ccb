"""The surveys-and-forms demo plan: deterministic, recent buyers only, a realistic
response rate, members happier than guests, returns unhappier."""

from __future__ import annotations

from datetime import date

from crm_cli.demo import plan
from crm_cli.demo_surveys import SEMINAR_CAPACITY, plan_surveys

TODAY = date(2026, 11, 20)


def _nps(scores: list[int]) -> float:
    return 100 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores)


def test_the_plan_is_deterministic_and_realistic() -> None:
    demo = plan(1200, seed=3, today=TODAY)
    first = plan_surveys(demo, seed=3, today=TODAY)
    assert first == plan_surveys(demo, seed=3, today=TODAY)
    assert first.invitees and all(p.day >= "2026-09-21" for _, p in first.invitees.values())
    rate = len(first.answers) / len(first.invitees)
    assert 0.2 < rate < 0.5
    by_segment: dict[str, list[int]] = {}
    for person, answer in first.answers.items():
        by_segment.setdefault(first.invitees[person][0], []).append(answer["recommend"])
        assert 1 <= answer["satisfaction"] <= 5
    assert _nps(by_segment["member"]) > _nps(by_segment["guest"])
    if by_segment.get("returned"):
        assert _nps(by_segment["returned"]) < _nps(by_segment["member"])
    assert len(first.registrations) > SEMINAR_CAPACITY  # some go to the waitlist
    assert len({s["submission_id"] for s in first.signups}) == len(first.signups)
