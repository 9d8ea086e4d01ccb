"""A labelled synthetic population of Japanese retail customers, with realistic noise.

Each *person* is seen by one to four channels (store counter, web shop, app, call
centre), and every channel writes them down in its own way: half-width kana at the POS,
hiragana in the app, a 旧字体 surname from a paper form, a typo in the reading, an
upper-case e-mail, the phone as ``03-1234-5678`` or ``+81 3 1234 5678``, an address with
or without the building. People move and change phones between visits. Households share
a surname, an address, a landline and often one family e-mail, and common names collide
across the country. ``person_id`` is the ground truth for evaluating identity resolution.

Deterministic for a seed: the same seed gives the same population.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

# (kanji, kana, 旧字体 variant or None, romaji)
FAMILY_NAMES: tuple[tuple[str, str, str | None], ...] = (
    ("佐藤", "サトウ", None),
    ("鈴木", "スズキ", None),
    ("高橋", "タカハシ", "髙橋"),
    ("田中", "タナカ", None),
    ("伊藤", "イトウ", None),
    ("渡辺", "ワタナベ", "渡邊"),
    ("山本", "ヤマモト", None),
    ("中村", "ナカムラ", None),
    ("小林", "コバヤシ", None),
    ("加藤", "カトウ", None),
    ("吉田", "ヨシダ", None),
    ("山田", "ヤマダ", None),
    ("佐々木", "ササキ", None),
    ("山口", "ヤマグチ", None),
    ("松本", "マツモト", None),
    ("井上", "イノウエ", None),
    ("木村", "キムラ", None),
    ("林", "ハヤシ", None),
    ("斎藤", "サイトウ", "齋藤"),
    ("清水", "シミズ", None),
    ("山崎", "ヤマザキ", "山﨑"),
    ("森", "モリ", None),
    ("池田", "イケダ", None),
    ("橋本", "ハシモト", None),
    ("阿部", "アベ", None),
    ("石川", "イシカワ", None),
    ("山下", "ヤマシタ", None),
    ("中島", "ナカジマ", "中嶋"),
    ("石井", "イシイ", None),
    ("小川", "オガワ", None),
    ("前田", "マエダ", None),
    ("岡田", "オカダ", None),
    ("長谷川", "ハセガワ", None),
    ("藤田", "フジタ", None),
    ("後藤", "ゴトウ", None),
    ("近藤", "コンドウ", None),
    ("村上", "ムラカミ", None),
    ("遠藤", "エンドウ", None),
    ("青木", "アオキ", None),
    ("坂本", "サカモト", None),
    ("斉藤", "サイトウ", "齊藤"),
    ("福田", "フクダ", None),
    ("太田", "オオタ", None),
    ("西村", "ニシムラ", None),
    ("藤井", "フジイ", None),
    ("岡本", "オカモト", None),
    ("松田", "マツダ", None),
    ("中川", "ナカガワ", None),
    ("中野", "ナカノ", None),
    ("原田", "ハラダ", None),
    ("小野", "オノ", None),
    ("田村", "タムラ", None),
    ("竹内", "タケウチ", None),
    ("金子", "カネコ", None),
    ("和田", "ワダ", None),
    ("中山", "ナカヤマ", None),
    ("石田", "イシダ", None),
    ("上田", "ウエダ", None),
    ("森田", "モリタ", None),
    ("原", "ハラ", None),
    ("柴田", "シバタ", None),
    ("酒井", "サカイ", None),
    ("工藤", "クドウ", None),
    ("横山", "ヨコヤマ", None),
    ("宮崎", "ミヤザキ", "宮﨑"),
    ("宮本", "ミヤモト", None),
    ("内田", "ウチダ", None),
    ("高木", "タカギ", "髙木"),
    ("安藤", "アンドウ", None),
    ("谷口", "タニグチ", None),
    ("大野", "オオノ", None),
    ("丸山", "マルヤマ", None),
    ("今井", "イマイ", None),
    ("河野", "コウノ", None),
    ("藤原", "フジワラ", None),
    ("村田", "ムラタ", None),
    ("武田", "タケダ", None),
    ("上野", "ウエノ", None),
    ("杉山", "スギヤマ", None),
    ("増田", "マスダ", None),
    ("沢田", "サワダ", "澤田"),
    ("浜田", "ハマダ", "濱田"),
    ("広瀬", "ヒロセ", "廣瀬"),
    ("菊地", "キクチ", None),
)
GIVEN_NAMES_F: tuple[tuple[str, str], ...] = (
    ("花子", "ハナコ"),
    ("陽子", "ヨウコ"),
    ("恵子", "ケイコ"),
    ("京子", "キョウコ"),
    ("美穂", "ミホ"),
    ("由美", "ユミ"),
    ("真由美", "マユミ"),
    ("直美", "ナオミ"),
    ("愛", "アイ"),
    ("さくら", "サクラ"),
    ("結衣", "ユイ"),
    ("葵", "アオイ"),
    ("陽菜", "ヒナ"),
    ("美咲", "ミサキ"),
    ("彩", "アヤ"),
    ("舞", "マイ"),
    ("麻衣", "マイ"),
    ("優子", "ユウコ"),
    ("智子", "トモコ"),
    ("裕子", "ユウコ"),
    ("明美", "アケミ"),
    ("久美子", "クミコ"),
    ("千尋", "チヒロ"),
    ("遥", "ハルカ"),
    ("七海", "ナナミ"),
    ("真理子", "マリコ"),
    ("紀子", "ノリコ"),
    ("典子", "ノリコ"),
    ("香織", "カオリ"),
    ("沙織", "サオリ"),
)
GIVEN_NAMES_M: tuple[tuple[str, str], ...] = (
    ("太郎", "タロウ"),
    ("一郎", "イチロウ"),
    ("健一", "ケンイチ"),
    ("大輔", "ダイスケ"),
    ("翔太", "ショウタ"),
    ("拓也", "タクヤ"),
    ("直樹", "ナオキ"),
    ("誠", "マコト"),
    ("浩", "ヒロシ"),
    ("隆", "タカシ"),
    ("蓮", "レン"),
    ("大翔", "ヒロト"),
    ("悠真", "ユウマ"),
    ("湊", "ミナト"),
    ("陽翔", "ハルト"),
    ("和也", "カズヤ"),
    ("達也", "タツヤ"),
    ("健太", "ケンタ"),
    ("雄一", "ユウイチ"),
    ("修", "オサム"),
    ("哲也", "テツヤ"),
    ("秀樹", "ヒデキ"),
    ("剛", "ツヨシ"),
    ("淳", "ジュン"),
    ("亮", "リョウ"),
    ("光", "ヒカル"),
    ("学", "マナブ"),
    ("進", "ススム"),
    ("徹", "トオル"),
    ("勇気", "ユウキ"),
)
# (prefecture, city, postal prefix, area code for landlines)
PLACES: tuple[tuple[str, str, str, str], ...] = (
    ("東京都", "千代田区丸の内", "100", "03"),
    ("東京都", "世田谷区三軒茶屋", "154", "03"),
    ("東京都", "練馬区豊玉北", "176", "03"),
    ("神奈川県", "横浜市西区みなとみらい", "220", "045"),
    ("神奈川県", "川崎市中原区小杉町", "211", "044"),
    ("大阪府", "大阪市北区梅田", "530", "06"),
    ("大阪府", "堺市堺区戎島町", "590", "072"),
    ("愛知県", "名古屋市中区栄", "460", "052"),
    ("福岡県", "福岡市博多区博多駅前", "812", "092"),
    ("北海道", "札幌市中央区北一条西", "060", "011"),
    ("宮城県", "仙台市青葉区中央", "980", "022"),
    ("京都府", "京都市下京区四条通", "600", "075"),
    ("兵庫県", "神戸市中央区三宮町", "650", "078"),
    ("広島県", "広島市中区紙屋町", "730", "082"),
    ("埼玉県", "さいたま市大宮区桜木町", "330", "048"),
    ("千葉県", "千葉市中央区富士見", "260", "043"),
)
BUILDINGS = ("サンハイツ", "グランドメゾン", "パークコート", "コーポ", "レジデンス", "ハイム", "ヴィラ")
DOMAINS = ("example.jp", "example.co.jp", "example.ne.jp", "gmail.com", "icloud.com", "docomo.example.jp")
CHANNELS = ("store", "online", "app", "call_center")

_HALF_KANA = str.maketrans(
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンャュョッー",
    "ｱｲｳｴｵｶｷｸｹｺｻｼｽｾｿﾀﾁﾂﾃﾄﾅﾆﾇﾈﾉﾊﾋﾌﾍﾎﾏﾐﾑﾒﾓﾔﾕﾖﾗﾘﾙﾚﾛﾜｦﾝｬｭｮｯｰ",
)
_SIMILAR_KANA = {
    "ハ": "バ",
    "タ": "ダ",
    "カ": "ガ",
    "サ": "ザ",
    "シ": "ジ",
    "コ": "ゴ",
    "ト": "ド",
    "キ": "ギ",
    "ヒ": "ビ",
    "フ": "ブ",
    "ホ": "ボ",
    "ユ": "ユウ",
    "ヨ": "ヨウ",
    "オ": "オウ",
}


@dataclass
class Person:
    person_id: int
    family: tuple[str, str, str | None]
    given: tuple[str, str]
    gender: str
    birthday: date
    place: tuple[str, str, str, str]
    block: str
    building: str | None
    postal_code: str
    mobile: str
    landline: str | None
    email: str
    member_no: str | None
    household: int


@dataclass
class Record:
    """One channel's registration of a person, as that channel wrote it down."""

    person_id: int
    channel: str
    name_kanji: str | None
    name_kana: str | None
    birthday: date | None
    gender: str
    prefecture: str
    postal_code: str | None
    address: str | None
    email: str | None
    phone: str | None
    member_no: str | None
    noise: list[str] = field(default_factory=list)


def _hiragana(kata: str) -> str:
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in kata)


class Population:
    """Generates people (with households) and their channel records."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self._people = 0
        self._households = 0

    def _phone_mobile(self) -> str:
        return f"0{self.rng.choice('789')}0{self.rng.randint(10_000_000, 99_999_999)}"

    def _landline(self, area: str) -> str:
        digits = 10 - len(area)
        return area + str(self.rng.randint(10 ** (digits - 1), 10**digits - 1))

    def household(self) -> list[Person]:
        """One to three people sharing a surname, an address, a landline, maybe an e-mail."""
        rng = self.rng
        self._households += 1
        family = rng.choice(FAMILY_NAMES)
        place = rng.choice(PLACES)
        block = f"{rng.randint(1, 5)}-{rng.randint(1, 30)}-{rng.randint(1, 20)}"
        building = f"{rng.choice(BUILDINGS)}{rng.randint(101, 905)}" if rng.random() < 0.5 else None
        postal = f"{place[2]}{rng.randint(0, 9999):04d}"
        landline = self._landline(place[3]) if rng.random() < 0.5 else None
        size = rng.choices((1, 2, 3), weights=(0.6, 0.28, 0.12))[0]
        family_email = (
            f"home{self._households}.{rng.randint(10, 99)}@{rng.choice(DOMAINS)}" if size > 1 else None
        )
        people = []
        given_names_used: set[str] = set()
        for _ in range(size):
            self._people += 1
            gender = rng.choice(("female", "male"))
            pool = [
                g
                for g in (GIVEN_NAMES_F if gender == "female" else GIVEN_NAMES_M)
                if g[1] not in given_names_used
            ]
            given = rng.choice(pool)  # parents do not give a child their own name
            given_names_used.add(given[1])
            born = date(1950, 1, 1) + timedelta(days=rng.randint(0, 365 * 55))
            share_email = family_email is not None and rng.random() < 0.6
            email = (
                family_email
                if share_email
                else f"u{self._people}.{rng.randint(100, 999)}@{rng.choice(DOMAINS)}"
            )
            people.append(
                Person(
                    person_id=self._people,
                    family=family,
                    given=given,
                    gender=gender,
                    birthday=born,
                    place=place,
                    block=block,
                    building=building,
                    postal_code=postal,
                    mobile=self._phone_mobile(),
                    landline=landline,
                    email=email or "",
                    member_no=f"{rng.randint(10_000_000, 99_999_999)}" if rng.random() < 0.6 else None,
                    household=self._households,
                )
            )
        return people

    def records(self, person: Person) -> list[Record]:
        """One to four channel records of ``person`` with channel-typical noise."""
        rng = self.rng
        count = rng.choices((1, 2, 3, 4), weights=(0.35, 0.35, 0.2, 0.1))[0]
        out = []
        moved = False
        for n in range(count):
            channel = CHANNELS[n % len(CHANNELS)] if n else rng.choice(CHANNELS)
            noise: list[str] = []
            surname_kanji = person.family[0]
            if person.family[2] and rng.random() < 0.3:
                surname_kanji = person.family[2]
                noise.append("itaiji")
            sep = rng.choice((" ", "　", ""))
            kanji = f"{surname_kanji}{sep}{person.given[0]}"
            kana = f"{person.family[1]}{rng.choice((' ', '　', '', '・'))}{person.given[1]}"
            if rng.random() < 0.07:
                for k, v in _SIMILAR_KANA.items():
                    if k in person.given[1]:
                        kana = kana.replace(k, v, 1)
                        noise.append("kana-typo")
                        break
            style = rng.random()
            if channel == "store" and style < 0.5:
                kana = kana.translate(_HALF_KANA)
                noise.append("half-width")
            elif channel == "app" and style < 0.6:
                kana = _hiragana(kana)
                noise.append("hiragana")
            if n and rng.random() < 0.12:
                moved = True
            place = rng.choice(PLACES) if moved else person.place
            postal = f"{place[2]}{rng.randint(0, 9999):04d}" if moved else person.postal_code
            block = (
                f"{rng.randint(1, 5)}-{rng.randint(1, 30)}-{rng.randint(1, 20)}" if moved else person.block
            )
            if moved:
                noise.append("moved")
            block_text = block
            if rng.random() < 0.3:
                c, b, g = block.split("-")
                block_text = f"{c}丁目{b}番{g}号"
                noise.append("chome")
            address = f"{place[0]}{place[1]}{block_text}"
            if person.building and not moved and rng.random() < 0.6:
                address += f" {person.building}"
            phone = person.mobile
            if n and rng.random() < 0.12:
                phone = self._phone_mobile()
                noise.append("new-phone")
            elif person.landline and rng.random() < 0.3:
                phone = person.landline
                noise.append("landline")
            phone = self._format_phone(phone)
            email = person.email
            if rng.random() < 0.2:
                email = email.upper()
                noise.append("email-case")
            has_email = channel in ("online", "app") or rng.random() < 0.4
            has_birthday = channel != "call_center" and rng.random() < 0.85
            out.append(
                Record(
                    person_id=person.person_id,
                    channel=channel,
                    name_kanji=kanji if channel != "app" or rng.random() < 0.5 else None,
                    name_kana=kana,
                    birthday=person.birthday if has_birthday else None,
                    gender=person.gender,
                    prefecture=place[0],
                    postal_code=f"{postal[:3]}-{postal[3:]}" if rng.random() < 0.8 else None,
                    address=address if channel != "app" else None,
                    email=email if has_email else None,
                    phone=phone if channel != "online" or rng.random() < 0.7 else None,
                    member_no=person.member_no if channel in ("store", "app") and person.member_no else None,
                    noise=noise,
                )
            )
        return out

    def _format_phone(self, digits: str) -> str:
        style = self.rng.random()
        if style < 0.4:
            return digits
        if style < 0.7:
            split = 2 if digits.startswith("0") and digits[1] in "36" else 3
            return f"{digits[:split]}-{digits[split:-4]}-{digits[-4:]}"
        if style < 0.85:
            return f"+81 {digits[1:-8]} {digits[-8:-4]} {digits[-4:]}"
        return digits.translate(str.maketrans("0123456789-", "０１２３４５６７８９－"))

    def generate(self, people: int) -> Iterator[tuple[Person, list[Record]]]:
        made = 0
        while made < people:
            for person in self.household():
                yield person, self.records(person)
                made += 1


def labelled_records(people: int, seed: int = 7) -> list[Record]:
    """Every record of ``people`` people, shuffled as channels would deliver them."""
    population = Population(seed)
    records = [r for _, rs in population.generate(people) for r in rs]
    random.Random(seed + 1).shuffle(records)
    return records


@dataclass(frozen=True)
class PairwiseMetrics:
    precision: float
    recall: float
    f1: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int


def pairwise_metrics(predicted: list[str], truth: list[int]) -> PairwiseMetrics:
    """Pairwise precision/recall/F1 of a clustering against the ground truth.

    A pair of records counts as predicted when both got the same customer, as true when
    both are the same person. Precision punishes wrong merges, recall missed ones.
    """
    from collections import Counter

    def pairs(counts: Counter[object]) -> int:
        return sum(n * (n - 1) // 2 for n in counts.values())

    predicted_pairs = pairs(Counter(predicted))
    true_pairs = pairs(Counter(truth))
    correct = pairs(Counter(zip(predicted, truth, strict=True)))
    precision = correct / predicted_pairs if predicted_pairs else 1.0
    recall = correct / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PairwiseMetrics(precision, recall, f1, true_pairs, predicted_pairs, correct)
