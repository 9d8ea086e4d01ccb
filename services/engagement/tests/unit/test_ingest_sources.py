"""The per-source allow-lists of ingestion (``engagement.ingest.sources``)."""

from __future__ import annotations

import pytest

from engagement.ingest.sources import DEFAULT_SOURCES, SourceRules, SourceRulesError, may_send


def test_the_defaults_let_each_source_send_what_it_sends_and_nothing_else() -> None:
    rules = SourceRules.of()
    pos, shop, app = (rules.for_source(n) for n in ("pos", "webshop", "app"))
    assert may_send(pos, "store_order", "store") and may_send(pos, "return", "store")
    assert not may_send(pos, "return", "online") and not may_send(pos, "online_order", "online")
    assert not may_send(pos, "interaction", "product_viewed")
    assert may_send(shop, "online_order", "app") and may_send(shop, "return", "app")
    assert may_send(shop, "interaction", "added_to_cart") and not may_send(shop, "store_order", "store")
    assert may_send(app, "interaction", "app_opened") and not may_send(app, "online_order", "app")
    assert rules.for_source("nobody") == frozenset()
    assert not may_send(rules.for_source("nobody"), "interaction", "searched")
    assert may_send(None, "store_order", "store")  # the import command: not bound


def test_configuration_adds_sources_and_replaces_a_source_s_list() -> None:
    rules = SourceRules.of({"kiosk": ["interaction:searched"], "pos": ["store_order"]})
    kiosk = rules.for_source("kiosk")
    assert may_send(kiosk, "interaction", "searched") and not may_send(kiosk, "interaction", "page_viewed")
    assert not may_send(rules.for_source("pos"), "return", "store")  # replaced
    assert rules.for_source("webshop") == frozenset(DEFAULT_SOURCES["webshop"])  # untouched


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("refund", "'refund' is not one of"),
        ("interaction:teleported", "not 'teleported'"),
        ("return:fax", "'fax'"),
    ],
)
def test_an_unknown_type_or_qualifier_is_a_configuration_error(entry: str, message: str) -> None:
    with pytest.raises(SourceRulesError, match=message):
        SourceRules.of({"kiosk": [entry]})
