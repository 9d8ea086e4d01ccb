from __future__ import annotations

import pytest

from crm_platform.crypto import BlindIndexer
from crm_platform.identifiers import InvalidIdentifier, blind_identifier, normalise


@pytest.mark.parametrize(
    "raw",
    [
        "03-1234-5678",
        "0312345678",
        "+81 3 1234 5678",
        "０３－１２３４－５６７８",
        "(03) 1234-5678",
        "03ー1234ー5678",
    ],
)
def test_japanese_phone_numbers_written_many_ways_are_one(raw: str) -> None:
    assert normalise("phone", raw) == "+81312345678"


def test_mobile_numbers() -> None:
    assert normalise("phone", "090-1234-5678") == "+819012345678"


@pytest.mark.parametrize("raw", ["12", "03-1234", "phone", "+1 555"])
def test_invalid_phone_numbers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidIdentifier) as info:
        normalise("phone", raw)
    assert info.value.kind == "phone"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Taro@Example.JP", "taro@example.jp"),
        ("ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ", "taro@example.jp"),
        ("  taro@example.jp ", "taro@example.jp"),
        ("Taro.Yamada+shop@gmail.com", "taroyamada@gmail.com"),
        ("taro.yamada@googlemail.com", "taroyamada@gmail.com"),
        # Sub-addressing is only folded where the provider defines it.
        ("taro+x@example.jp", "taro+x@example.jp"),
        ("taro.yamada@example.jp", "taro.yamada@example.jp"),
    ],
)
def test_email_normalisation(raw: str, expected: str) -> None:
    assert normalise("email", raw) == expected


@pytest.mark.parametrize("raw", ["taro", "taro@", "@example.jp", "taro@example", "ta ro@example.jp"])
def test_invalid_emails_are_refused(raw: str) -> None:
    with pytest.raises(InvalidIdentifier, match="email"):
        normalise("email", raw)


def test_member_numbers_fold_width_and_group_separators() -> None:
    assert normalise("member_no", "００１２－３４５６") == "00123456"
    assert normalise("member_no", "0012 3456") == "00123456"
    assert normalise("pos_card", "ab-12") == "AB12"


def test_unknown_kind_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InvalidIdentifier, match="unknown identifier kind"):
        normalise("passport", "X1")


def test_store_counter_and_web_shop_yield_the_same_blind_index() -> None:
    indexer = BlindIndexer(b"k" * 32)
    counter = blind_identifier(indexer, "email", "ＴＡＲＯ＠ＥＸＡＭＰＬＥ．ＪＰ")
    web = blind_identifier(indexer, "email", "taro@example.jp")
    assert counter == web


def test_the_memo_gives_what_blind_identifier_gives_and_still_refuses_bad_values() -> None:
    from crm_contracts.envelope import IdentifierKind
    from crm_platform.identifiers import BlindIdentifiers

    indexer = BlindIndexer(b"k" * 32)
    memo = BlindIdentifiers(indexer, max_entries=2)
    for kind, raw in [("email", "Hanako@Example.JP"), ("phone", "03-1234-5678"), ("member_no", "m-0001")]:
        assert memo(kind, raw) == blind_identifier(indexer, kind, raw)
        assert memo(kind, raw) == blind_identifier(indexer, kind, raw)  # from the memo
    assert memo(IdentifierKind.EMAIL, "hanako@example.jp") == memo("email", "ｈａｎａｋｏ@example.jp")
    for _ in range(2):
        with pytest.raises(InvalidIdentifier):
            memo("phone", "12")
    with pytest.raises(InvalidIdentifier, match="unknown identifier kind"):
        memo("passport", "TK1234567")


def test_the_memo_keeps_nothing_the_cyclic_gc_has_to_walk() -> None:
    """A full memo is long-lived: models in it would be walked by every full collection
    (a quarter of an ingestion worker's CPU, measured with py-spy)."""
    import gc

    from crm_platform.identifiers import BlindIdentifiers

    memo = BlindIdentifiers(BlindIndexer(b"k" * 32), max_entries=10_000)
    values = [f"m{n}@example.jp" for n in range(5_000)]
    gc.collect()
    before = len(gc.get_objects())
    for value in values:
        memo("email", value)
    gc.collect()
    assert len(gc.get_objects()) - before < 100
