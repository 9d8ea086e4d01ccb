from __future__ import annotations

import pytest

from identity.matching.normalise import (
    address_key,
    kana_name_key,
    kanji_name_key,
    loose_kana_key,
    postal_code_key,
    romaji_of,
)


@pytest.mark.parametrize(
    "raw", ["ヤマダ タロウ", "やまだ たろう", "ﾔﾏﾀﾞﾀﾛｳ", "ヤマダ・タロウ", "ヤマダ　タロウ"]
)
def test_readings_written_many_ways_are_one_key(raw: str) -> None:
    assert kana_name_key(raw) == "ヤマダタロウ"


def test_romaji_and_long_vowels_meet_in_the_loose_key() -> None:
    assert loose_kana_key("Yamada Taro") == loose_kana_key("ヤマダ タロウ") == loose_kana_key("ヤマダ タロー")
    assert loose_kana_key("sato kyoko") == loose_kana_key("サトウ キョウコ")
    assert loose_kana_key("オオノ") == loose_kana_key("ono")
    assert romaji_of("やまだ たろう") == "yamadatarou"


def test_kanji_names_fold_width_spaces_and_old_forms() -> None:
    assert kanji_name_key("髙橋　太郎") == kanji_name_key("高橋 太郎") == "高橋太郎"
    assert kanji_name_key("渡邊 健一") == kanji_name_key("渡辺健一")
    assert kanji_name_key("齋藤・花子") == "斎藤花子"


@pytest.mark.parametrize(
    "raw",
    [
        "東京都千代田区丸の内一丁目２番３号　丸の内ビル５Ｆ",
        "東京都千代田区丸の内1-2-3",
        "東京都千代田区丸の内１－２－３　ＡＢＣマンション101",
        "東京都 千代田区 丸の内 1丁目2番3号",
    ],
)
def test_addresses_with_and_without_building_are_one_key(raw: str) -> None:
    assert address_key(raw) == "東京都千代田区丸の内1-2-3"


def test_building_is_kept_on_request() -> None:
    assert address_key("東京都千代田区丸の内1-2-3 サンハイツ101", keep_building=True).endswith(
        "サンハイツ101"
    )


def test_postal_codes() -> None:
    assert postal_code_key("100-0005") == postal_code_key("１０００００５") == "1000005"
    assert postal_code_key("100") is None
