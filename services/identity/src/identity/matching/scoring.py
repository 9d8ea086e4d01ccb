"""Scoring a candidate pair of customer records.

The score is a weighted agreement in ``[0, 1]`` over the fields both records have;
fields one record lacks neither help nor hurt, but a pair needs enough evidence
(``min_evidence``) to score at all. Disagreement on a birthday or on the given-name
reading is strong evidence of two people (a family sharing a surname, an address and
often a phone), so it caps the score below the review band.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from rapidfuzz.distance import JaroWinkler

from identity.matching.normalise import address_key, kana_name_key, kanji_name_key, loose_kana_key


@dataclass(frozen=True)
class MatchRecord:
    customer_id: str
    name_kanji: str | None = None
    name_kana: str | None = None
    birthday: date | None = None
    postal_code: str | None = None
    address: str | None = None
    #: Blind indexes of contact points (email/phone) the record holds.
    contact_hashes: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Score:
    value: float
    matched: tuple[str, ...]
    conflicting: tuple[str, ...]


WEIGHTS = {"kana": 0.30, "kanji": 0.20, "birthday": 0.25, "contact": 0.15, "address": 0.10}
MIN_EVIDENCE = 0.45


def _similarity(a: str, b: str) -> float:
    return 1.0 if a == b else JaroWinkler.similarity(a, b)


def score_pair(a: MatchRecord, b: MatchRecord) -> Score:
    parts: dict[str, float] = {}
    conflicting: list[str] = []
    if a.name_kana and b.name_kana:
        ka, kb = loose_kana_key(a.name_kana), loose_kana_key(b.name_kana)
        parts["kana"] = _similarity(ka, kb)
        if parts["kana"] < 0.85:
            conflicting.append("kana")
    if a.name_kanji and b.name_kanji:
        parts["kanji"] = _similarity(kanji_name_key(a.name_kanji), kanji_name_key(b.name_kanji))
        if parts["kanji"] < 0.75:
            conflicting.append("kanji")
    if a.birthday and b.birthday:
        parts["birthday"] = 1.0 if a.birthday == b.birthday else 0.0
        if a.birthday != b.birthday:
            conflicting.append("birthday")
    if a.contact_hashes and b.contact_hashes:
        parts["contact"] = 1.0 if a.contact_hashes & b.contact_hashes else 0.0
    if a.address and b.address:
        parts["address"] = _similarity(address_key(a.address), address_key(b.address))
    elif a.postal_code and b.postal_code:
        parts["address"] = 1.0 if a.postal_code == b.postal_code else 0.0
    evidence = sum(WEIGHTS[k] for k in parts)
    if evidence < MIN_EVIDENCE:
        return Score(0.0, (), tuple(conflicting))
    value = sum(WEIGHTS[k] * v for k, v in parts.items()) / evidence
    if "birthday" in conflicting or ("kana" in conflicting and "kanji" in conflicting):
        value = min(value, 0.5)
    matched = tuple(sorted(k for k, v in parts.items() if v >= 0.9))
    return Score(round(value, 4), matched, tuple(sorted(conflicting)))


def same_person_names(a: MatchRecord, b: MatchRecord) -> bool | None:
    """Do the names say these are one person? ``None`` when either lacks a name.

    Used before following a shared contact point: a family shares an e-mail or a home
    phone, but not a given name.
    """
    if a.name_kana and b.name_kana:
        return JaroWinkler.similarity(loose_kana_key(a.name_kana), loose_kana_key(b.name_kana)) >= 0.9
    if a.name_kanji and b.name_kanji:
        return JaroWinkler.similarity(kanji_name_key(a.name_kanji), kanji_name_key(b.name_kanji)) >= 0.9
    return None


__all__ = ["MatchRecord", "Score", "kana_name_key", "same_person_names", "score_pair"]
