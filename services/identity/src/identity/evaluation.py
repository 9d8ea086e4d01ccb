"""Measure identity resolution against a labelled synthetic population.

``evaluate`` registers every record through the application exactly as the API would
(normalising identifiers at the edge), then compares the customers it ends up with to
the ground truth. Used by ``bench/bench_resolution.py`` and the tests.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from crm_platform.identifiers import InvalidIdentifier, normalise
from crm_platform.synthetic import PairwiseMetrics, Record, pairwise_metrics
from identity.application import IdentityApplication, RegisterCustomer


@dataclass(frozen=True)
class Evaluation:
    metrics: PairwiseMetrics
    records: int
    people: int
    customers: int
    reviews: int
    false_merges: list[tuple[int, int]]


def command_for(record: Record) -> RegisterCustomer:
    identifiers = []
    for kind, raw in (("member_no", record.member_no), ("email", record.email), ("phone", record.phone)):
        if raw:
            # An invalid value gets 422 for its field at the API; the record still counts.
            with contextlib.suppress(InvalidIdentifier):
                identifiers.append((kind, normalise(kind, raw)))
    personal = {
        k: v
        for k, v in {
            "name_kanji": record.name_kanji,
            "name_kana": record.name_kana,
            "birthday": record.birthday.isoformat() if record.birthday else None,
            "postal_code": record.postal_code,
            "address": record.address,
        }.items()
        if v
    }
    return RegisterCustomer(
        channel=record.channel,
        identifiers=identifiers,
        personal=personal,
        attributes={"gender": record.gender, "prefecture": record.prefecture},
    )


def evaluate(app: IdentityApplication, records: Sequence[Record]) -> Evaluation:
    assigned: list[uuid.UUID] = []
    reviews = 0
    for record in records:
        result = app.register(command_for(record))
        assert result.customer_id is not None
        assigned.append(result.customer_id)
        reviews += len(result.reviews)
    roots: dict[uuid.UUID, str] = {}
    predicted = []
    for customer_id in assigned:
        if customer_id not in roots:
            roots[customer_id] = app._active_root(app._customer(customer_id)).id.hex
        predicted.append(roots[customer_id])
    truth = [r.person_id for r in records]
    by_customer: dict[str, set[int]] = {}
    for p, t in zip(predicted, truth, strict=True):
        by_customer.setdefault(p, set()).add(t)
    false_merges = [tuple(sorted(people))[:2] for people in by_customer.values() if len(people) > 1]
    return Evaluation(
        metrics=pairwise_metrics(predicted, truth),
        records=len(records),
        people=len(set(truth)),
        customers=len(set(predicted)),
        reviews=reviews,
        false_merges=[(a, b) for a, b in false_merges],
    )
