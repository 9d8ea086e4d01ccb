"""Rebuilding identity's match/search projection from its event log (``crm replay identity``)."""

from __future__ import annotations

from crm_platform.synthetic import labelled_records
from identity.bootstrap import Identity
from identity.evaluation import command_for


def test_rebuild_gives_back_the_same_projection(identity: Identity) -> None:
    app = identity.app
    for record in labelled_records(40, seed=5):
        app.register(command_for(record))
    queries = ["ヤマダ", "サトウ", "スズキ", "タナカ", "ワタナベ", "山田", "佐藤"]
    before = {q: sorted(r["customer_id"] for r in app.search_by_name(q, 100)) for q in queries}
    assert any(before.values())

    app.index.clear_index()  # a lost or stale projection
    assert not any(app.search_by_name(q, 100) for q in queries)

    customers, events = app.rebuild_index()

    after = {q: sorted(r["customer_id"] for r in app.search_by_name(q, 100)) for q in queries}
    assert after == before
    assert customers >= 40 and events >= customers
