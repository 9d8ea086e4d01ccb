from __future__ import annotations

from datetime import date

from identity.matching.scoring import MatchRecord, same_person_names, score_pair

AUTO, REVIEW = 0.93, 0.80


def rec(**kw: object) -> MatchRecord:
    return MatchRecord(customer_id="x", **kw)  # type: ignore[arg-type]


def test_name_and_birthday_is_one_person_in_any_script() -> None:
    a = rec(name_kanji="山田 太郎", name_kana="ヤマダ タロウ", birthday=date(1985, 4, 12))
    b = rec(name_kana="やまだ たろう", birthday=date(1985, 4, 12))
    assert score_pair(a, b).value >= AUTO


def test_old_kanji_form_matches() -> None:
    a = rec(name_kanji="髙橋 健一", address="東京都千代田区丸の内1-2-3")
    b = rec(name_kanji="高橋健一", address="東京都千代田区丸の内一丁目2番3号 サンハイツ101")
    assert score_pair(a, b).value >= AUTO


def test_a_namesake_elsewhere_is_nobody() -> None:
    a = rec(name_kanji="佐藤 花子", name_kana="サトウ ハナコ", prefecture="東京都")
    b = rec(name_kanji="佐藤 花子", name_kana="サトウ ハナコ", prefecture="大阪府")
    assert score_pair(a, b).value < REVIEW


def test_same_name_and_postal_code_goes_to_review() -> None:
    a = rec(name_kanji="佐藤 花子", postal_code="100-0001", birthday=date(1990, 1, 1))
    b = rec(name_kanji="佐藤花子", postal_code="1000001")
    assert REVIEW <= score_pair(a, b).value < AUTO


def test_family_members_sharing_everything_but_given_name_and_birthday() -> None:
    parent = rec(
        name_kanji="横山 直樹",
        name_kana="ヨコヤマ ナオキ",
        birthday=date(1956, 11, 23),
        address="神奈川県横浜市西区みなとみらい5-21-13",
        contact_hashes=frozenset({"landline"}),
    )
    child = rec(
        name_kanji="横山 勇気",
        name_kana="ヨコヤマ ユウキ",
        birthday=date(1969, 4, 5),
        address="神奈川県横浜市西区みなとみらい5-21-13",
        contact_hashes=frozenset({"landline"}),
    )
    assert score_pair(parent, child).value < REVIEW
    assert same_person_names(parent, child) is False


def test_different_birthday_caps_the_score() -> None:
    a = rec(name_kanji="石田 葵", birthday=date(1965, 7, 25), address="北海道札幌市中央区北一条西3-27-17")
    b = rec(name_kanji="石田 葵", birthday=date(1992, 5, 13), address="北海道札幌市中央区北一条西3-27-17")
    score = score_pair(a, b)
    assert score.value <= 0.3
    assert "birthday" in score.conflicting


def test_a_slip_in_the_family_name_agrees_a_different_given_name_does_not() -> None:
    assert same_person_names(rec(name_kana="ザイトウ ミサキ"), rec(name_kana="サイトウ ミサキ")) is True
    assert same_person_names(rec(name_kana="ナカジマ ユミ"), rec(name_kana="ナカジマ ユキ")) is False
    assert same_person_names(rec(name_kana="ナカジマ マイ"), rec(name_kana="ナカジマ イチロウ")) is False
    assert (
        same_person_names(rec(name_kanji="松本 修"), rec(name_kanji="松本修", name_kana="マツモト オザム"))
        is True
    )
    assert same_person_names(rec(), rec(name_kana="ヤマダ")) is None


def test_a_typo_in_the_reading_with_birthday_and_contact_still_merges() -> None:
    a = rec(name_kana="ふじた たろう", birthday=date(1959, 11, 3), contact_hashes=frozenset({"e"}))
    b = rec(
        name_kanji="藤田太郎",
        name_kana="フジダタロウ",
        birthday=date(1959, 11, 3),
        contact_hashes=frozenset({"e"}),
    )
    assert score_pair(a, b).value >= AUTO
