"""Make Japanese personal records comparable.

Real data is messy: 全角/半角, hiragana vs katakana, spaces and middle dots inside
names, 旧字体 (髙橋 vs 高橋), long vowels written or not (タロウ / タロー / taro), and
addresses with or without building names and with 丁目/番地 or dashes. Each function
here returns a *key*: equal keys mean "the same as far as matching is concerned".
"""

from __future__ import annotations

import re
import unicodedata

import jaconv

#: Old (旧字体) and variant (異体字) forms seen in customer names, mapped to the common form.
ITAIJI = str.maketrans(
    {
        "髙": "高",
        "﨑": "崎",
        "嵜": "崎",
        "邊": "辺",
        "邉": "辺",
        "齋": "斎",
        "齊": "斉",
        "澤": "沢",
        "濱": "浜",
        "濵": "浜",
        "廣": "広",
        "國": "国",
        "藏": "蔵",
        "櫻": "桜",
        "實": "実",
        "壽": "寿",
        "榮": "栄",
        "龍": "竜",
        "瀨": "瀬",
        "嶋": "島",
        "嶌": "島",
        "冨": "富",
        "惠": "恵",
        "德": "徳",
        "眞": "真",
        "學": "学",
        "與": "与",
        "圓": "円",
        "黑": "黒",
        "兒": "児",
        "萬": "万",
        "團": "団",
        "條": "条",
        "鐵": "鉄",
        "關": "関",
        "靜": "静",
        "賴": "頼",
        "淺": "浅",
        "槇": "槙",
        "晉": "晋",
        "傳": "伝",
        "豐": "豊",
        "禮": "礼",
        "稻": "稲",
        "靑": "青",
        "藤": "藤",
        "籐": "藤",
        "埼": "埼",
        "峯": "峰",
        "巖": "巌",
        "桒": "桑",
        "舘": "館",
        "檜": "桧",
        "祐": "祐",
        "硏": "研",
        "曻": "昇",
        "遙": "遥",
        "瑤": "瑶",
        "莊": "荘",
        "彌": "弥",
        "禎": "禎",
        "穗": "穂",
        "絲": "糸",
        "縣": "県",
        "增": "増",
        "勳": "勲",
        "雜": "雑",
        "駒": "駒",
        "栁": "柳",
        "萠": "萌",
        "髮": "髪",
        "圀": "国",
    }
)

_SEPARATORS = re.compile(r"[\s・･·\u3000,、.．_-]+")
_LONG_VOWEL = re.compile(
    r"(?<=[オコソトノホモヨロゴゾドボポョ])[ウオ]|ー|(?<=[ウクスツヌフムユルグズヅブプュ])ウ"
)
_DASHES = str.maketrans(dict.fromkeys("‐‑‒–—―−ー－ｰ", "-"))


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def kanji_name_key(name: str) -> str:
    """``髙橋　太郎`` → ``高橋太郎``: width, spaces and dots removed, variant forms folded."""
    return _SEPARATORS.sub("", nfkc(name)).translate(ITAIJI).lower()


def kana_name_key(reading: str) -> str:
    """``やまだ たろう`` / ``ﾔﾏﾀﾞ ﾀﾛｳ`` / ``ヤマダ・タロウ`` → ``ヤマダタロウ``.

    Romaji is read too: ``Yamada Taro`` → ``ヤマダタロ``; pair it with
    :func:`loose_kana_key` for matching, since romaji rarely writes long vowels.
    """
    text = nfkc(reading).strip()
    if text and all(c.isascii() for c in text):
        text = jaconv.alphabet2kana(text.lower())
    return _SEPARATORS.sub("", jaconv.hira2kata(text))


def loose_kana_key(reading: str) -> str:
    """The reading with long vowels folded (タロウ = タロー = タロ = taro), for search and
    blocking where one channel writes the long vowel and another does not."""
    return _LONG_VOWEL.sub("", kana_name_key(reading))


def romaji_of(reading: str) -> str:
    """Hepburn-ish romaji of a kana reading, for display and search."""
    return jaconv.kana2alphabet(jaconv.kata2hira(kana_name_key(reading)))


_KANJI_DIGITS = str.maketrans("〇一二三四五六七八九", "0123456789")
_ADDRESS_UNITS = re.compile(r"(\d+)\s*(?:丁目|番地の?|番|号|の)")
_ADDRESS_SEPARATORS = re.compile(r"[\s・･·\u3000,、]+")
_BLOCK_NUMBER = re.compile(r"^(\D*\d+(?:-\d+)*)")


def postal_code_key(code: str) -> str | None:
    digits = re.sub(r"\D", "", nfkc(code))
    return digits if len(digits) == 7 else None


def address_key(address: str, *, keep_building: bool = False) -> str:
    """``東京都千代田区丸の内一丁目２番３号　丸の内ビル５Ｆ`` → ``東京都千代田区丸の内1-2-3``.

    Numbers become digits, 丁目/番地/番/号 become dashes, spaces go, and everything after
    the last block number (building, floor, room) is dropped unless ``keep_building``.
    """
    text = _ADDRESS_SEPARATORS.sub("", nfkc(address).translate(_DASHES)).translate(ITAIJI)
    text = re.sub(
        r"[〇一二三四五六七八九]+(?=丁目|番|号)", lambda m: m.group(0).translate(_KANJI_DIGITS), text
    )
    text = _ADDRESS_UNITS.sub(r"\1-", text)
    text = re.sub(r"-+", "-", text)
    if not keep_building:
        match = _BLOCK_NUMBER.match(text)
        if match:
            text = match.group(1)
    return text.strip("-")
