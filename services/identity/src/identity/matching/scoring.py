"""Scoring a candidate pair of customer records.

A name that agrees is necessary but not sufficient (佐藤花子 is a common name): alone it
scores ``BASE``; each corroboration — the same birthday, the same address, a shared
contact point, the same postal code — adds ``PER_POINT`` per point. Only agreement
counts: people move and change phones, so a different address is no evidence of another
person. A different birthday is, and caps the score far below review. With the default
thresholds (auto-merge 0.93, review 0.80):

* name + birthday, name + address, name + shared phone/e-mail → merge;
* name + postal code only (moved, no birthday) → review;
* name alone (a namesake elsewhere) → nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from rapidfuzz.distance import Indel, Levenshtein

from identity.matching.normalise import address_key, kanji_name_key, loose_kana_key


@dataclass(frozen=True)
class MatchRecord:
    customer_id: str
    name_kanji: str | None = None
    name_kana: str | None = None
    birthday: date | None = None
    postal_code: str | None = None
    address: str | None = None
    prefecture: str | None = None
    #: Blind indexes of contact points (email/phone) the record holds.
    contact_hashes: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Score:
    value: float
    matched: tuple[str, ...]
    conflicting: tuple[str, ...]


#: Corroboration points, on top of a name that agrees.
POINTS = {"birthday": 2.0, "address": 2.0, "contact": 2.0, "postal_code": 1.0, "prefecture": 0.25}
BASE = 0.70
PER_POINT = 0.12
#: Name similarity from which two names count as the same (one typo in a short reading).
NAME_AGREEMENT = 0.85
#: A name this close still agrees when two strong corroborations back it up.
NEAR_NAME = 0.75


def _similarity(a: str, b: str) -> float:
    # Indel (not Jaro-Winkler): a shared family name must not make 中島一郎 and 中島舞
    # look alike just because they start the same way.
    return 1.0 if a == b else Indel.normalized_similarity(a, b)


def _postal(code: str) -> str:
    return "".join(c for c in code if c.isdigit())


def _agreement(a: str, b: str) -> float:
    """Similarity of two name keys, forgiving one slip in the family-name part.

    Family members share the family name and differ in the given name, at the end of
    the key; a misread family name (ザイトウ for サイトウ) is a clerical slip. So one
    edit in the first 40% of the key counts as agreement, one at the end does not.
    """
    similarity = _similarity(a, b)
    if similarity < NAME_AGREEMENT and Levenshtein.distance(a, b) == 1 and len(a) == len(b):
        first_difference = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        if first_difference < 0.4 * len(a):
            return NAME_AGREEMENT
    return similarity


def name_similarity(a: MatchRecord, b: MatchRecord) -> float | None:
    """The best agreement of the readings or of the kanji (a typo rarely hits both)."""
    sims = []
    if a.name_kana and b.name_kana:
        sims.append(_agreement(loose_kana_key(a.name_kana), loose_kana_key(b.name_kana)))
    if a.name_kanji and b.name_kanji:
        sims.append(_agreement(kanji_name_key(a.name_kanji), kanji_name_key(b.name_kanji)))
    return max(sims) if sims else None


def score_pair(a: MatchRecord, b: MatchRecord) -> Score:
    """How likely two records are one person, in ``[0, 1]`` (see the module docstring)."""
    name = name_similarity(a, b)
    if name is None:
        return Score(0.0, (), ())
    matched: list[str] = ["name"] if name >= NAME_AGREEMENT else []
    conflicting: list[str] = [] if name >= NAME_AGREEMENT else ["name"]
    points = 0.0
    if a.birthday and b.birthday:
        if a.birthday == b.birthday:
            points += POINTS["birthday"]
            matched.append("birthday")
        else:
            conflicting.append("birthday")
    if a.address and b.address and _similarity(address_key(a.address), address_key(b.address)) >= 0.9:
        points += POINTS["address"]
        matched.append("address")
    elif a.postal_code and b.postal_code and _postal(a.postal_code) == _postal(b.postal_code):
        points += POINTS["postal_code"]
        matched.append("postal_code")
    if a.contact_hashes & b.contact_hashes:
        points += POINTS["contact"]
        matched.append("contact")
    if a.prefecture and a.prefecture == b.prefecture:
        points += POINTS["prefecture"]
    if NEAR_NAME <= name < NAME_AGREEMENT and "birthday" in matched and points >= 4:
        # A typo'd reading, but the birthday and an address or contact agree (a
        # household shares the address and the phone, never the birthday).
        name = NAME_AGREEMENT
        matched.insert(0, "name~")
        conflicting.remove("name")
    value = (1.0 if name >= NAME_AGREEMENT else name) * min(1.0, BASE + PER_POINT * points)
    if "birthday" in conflicting:
        value = min(value, 0.3)
    return Score(round(value, 4), tuple(matched), tuple(conflicting))


def same_person_names(a: MatchRecord, b: MatchRecord) -> bool | None:
    """Do the names (and birthdays) say these are one person? ``None`` when either
    record lacks a name.

    Used before following a shared contact point: a family shares an e-mail, a home
    phone and a surname, but not a given name or a birthday. A typo in the reading
    (オサム / オザム) still agrees when the kanji do; ユミ and ユキ do not.
    """
    if a.birthday and b.birthday and a.birthday != b.birthday:
        return False
    similarity = name_similarity(a, b)
    if similarity is None:
        return None
    return similarity >= NAME_AGREEMENT


__all__ = ["MatchRecord", "Score", "name_similarity", "same_person_names", "score_pair"]
