"""A retailer's own programme from a JSON file, checked as a whole."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engagement.domain.membership import Programme
from engagement.programme import InvalidProgramme, load_programme

BRONZE_TO_BLACK = {
    "ranks": [
        {"name": "bronze", "min_spend": 0, "points_per_100": 1},
        {"name": "silver", "min_spend": 50000, "min_visits": 10, "points_per_100": 2, "discount_rate": 0.05},
        {"name": "black", "min_spend": 500000, "points_per_100": 5, "discount_rate": 0.15},
    ],
    "window_days": 180,
    "points_valid_months": 24,
    "birthday_multiplier": 3,
}


def write(tmp_path: Path, body: object) -> Path:
    path = tmp_path / "programme.json"
    path.write_bytes(orjson.dumps(body))
    return path


def test_the_built_in_programme_without_a_file() -> None:
    assert load_programme(None) == Programme()


def test_a_programme_file_sets_ranks_and_rules(tmp_path: Path) -> None:
    programme = load_programme(write(tmp_path, BRONZE_TO_BLACK))
    assert [r.name for r in programme.ranks] == ["bronze", "silver", "black"]
    assert programme.rank("silver").discount_rate == 0.05
    assert programme.window_days == 180
    assert (programme.points_valid_months, programme.birthday_multiplier) == (24, 3)
    rank, reason = programme.rank_for(60_000, 0)
    assert rank.name == "silver" and "¥50,000" in reason
    assert programme.rank_for(0, 10)[0].name == "silver"  # by visits


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda p: p["ranks"][0].update(min_spend=100), "entry rank"),
        (lambda p: p["ranks"][2].update(min_spend=40000), "must need more spend"),
        (lambda p: p["ranks"][1].update(name="bronze"), "unique"),
        (lambda p: p["ranks"][1].update(discount_rate=1.5), "ranks.1.discount_rate"),
        (lambda p: p["ranks"][1].update(name="Silver!"), "ranks.1.name"),
        (lambda p: p.update(window_days=0), "window_days"),
        (lambda p: p.update(colour="gold"), "colour"),
    ],
)
def test_a_bad_programme_is_refused_with_the_field(tmp_path: Path, change, named: str) -> None:  # type: ignore[no-untyped-def]
    body = orjson.loads(orjson.dumps(BRONZE_TO_BLACK))
    change(body)
    with pytest.raises(InvalidProgramme, match=named):
        load_programme(write(tmp_path, body))


def test_a_missing_or_broken_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidProgramme, match="No such file"):
        load_programme(tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{ranks: [")
    with pytest.raises(InvalidProgramme, match=r"broken\.json"):
        load_programme(broken)
