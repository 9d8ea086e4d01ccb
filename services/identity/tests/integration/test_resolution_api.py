"""Identity resolution through the HTTP API, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from identity.application import ConcurrentUpdate, Ident
from identity.bootstrap import Identity, build

pytestmark = pytest.mark.integration


def register(client: TestClient, **body: object) -> dict:
    response = client.post("/customers", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def profile(client: TestClient, customer_id: str, **params: str) -> dict:
    response = client.get(f"/customers/{customer_id}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_one_person_written_three_ways_is_one_customer(client: TestClient) -> None:
    a = register(
        client, channel="store", name_kana="ヤマダ タロウ", name_kanji="山田 太郎", phone="03-1234-5678"
    )
    b = register(
        client, channel="online", name_kana="やまだ たろう", phone="0312345678", email="taro@example.jp"
    )
    c = register(client, channel="app", name_kana="ﾔﾏﾀﾞﾀﾛｳ", phone="+81 3 1234 5678")
    assert a["outcome"] == "created"
    assert b["customer_id"] == c["customer_id"] == a["customer_id"]
    assert (b["outcome"], c["outcome"]) == ("linked", "matched")
    found = client.post("/customers/search", json={"q": "yamada taro"}).json()
    assert [f["customer_id"] for f in found] == [a["customer_id"]]
    found = client.post("/customers/search", json={"q": "TARO@example.jp"}).json()
    assert [f["customer_id"] for f in found] == [a["customer_id"]]
    why = client.get(f"/customers/{a['customer_id']}/identifiers").json()
    assert {(w["kind"], w["value"], w["evidence"]["rule"]) for w in why} == {
        ("phone", "+81312345678", "registration"),
        ("email", "taro@example.jp", "exact:phone"),
    }


def test_a_family_sharing_an_email_stays_two_customers(client: TestClient, identity: Identity) -> None:
    father = register(
        client,
        channel="store",
        name_kanji="山田 太郎",
        name_kana="ヤマダ タロウ",
        email="yamada-family@example.jp",
        birthday="1960-01-01",
    )
    daughter = register(
        client,
        channel="online",
        name_kanji="山田 花子",
        name_kana="ヤマダ ハナコ",
        email="yamada-family@example.jp",
        birthday="1992-03-03",
    )
    assert daughter["outcome"] == "created"
    assert father["customer_id"] != daughter["customer_id"]
    # An order carrying only the family e-mail cannot say whose it is.
    email = identity.app.hash_identifiers([("email", "yamada-family@example.jp")])
    assert identity.app.observe(email).outcome == "ambiguous"
    assert client.post("/customers/search", json={"q": "yamada-family@example.jp"}).json().__len__() == 2
    shared = client.get(f"/customers/{father['customer_id']}/identifiers").json()
    assert shared[0]["shared"] is True


def test_a_wrong_merge_undone_restores_both_exactly(client: TestClient) -> None:
    a = register(
        client,
        channel="store",
        name_kanji="佐藤 花子",
        name_kana="サトウ ハナコ",
        phone="090-1111-2222",
        member_no="1001",
        birthday="1980-01-01",
        consents={"email": True},
    )
    b = register(
        client,
        channel="online",
        name_kanji="佐藤 華子",
        name_kana="サトウ ハナコ",
        email="hanako@example.jp",
        birthday="1991-02-02",
        prefecture="大阪府",
    )
    before = {
        cid: (profile(client, cid), client.get(f"/customers/{cid}/identifiers").json())
        for cid in (a["customer_id"], b["customer_id"])
    }

    merged = client.post(
        "/merges",
        json={"survivor_id": a["customer_id"], "merged_id": b["customer_id"], "reason": "looked alike"},
    )
    assert merged.status_code == 201, merged.text
    during = profile(client, a["customer_id"])
    assert during["merged_ids"] == [b["customer_id"]]
    assert {i["kind"] for i in during["identifiers"]} == {"member_no", "phone", "email"}
    assert profile(client, b["customer_id"])["status"] == "merged"
    # Later events follow the identifiers: the e-mail now resolves to the survivor.
    assert (
        client.post("/customers/search", json={"q": "hanako@example.jp"}).json()[0]["customer_id"]
        == a["customer_id"]
    )

    undone = client.post(f"/merges/{merged.json()['merge_id']}/undo", json={"reason": "two people"})
    assert undone.status_code == 200, undone.text
    for cid, (old_profile, old_identifiers) in before.items():
        new_profile = profile(client, cid)
        for field in (
            "status",
            "merged_into",
            "merged_ids",
            "personal",
            "attributes",
            "consents",
            "identifiers",
            "channel",
            "registered_at",
        ):
            assert new_profile[field] == old_profile[field], field
        new_identifiers = client.get(f"/customers/{cid}/identifiers").json()
        assert [(i["kind"], i["hash"], i["evidence"]) for i in new_identifiers] == [
            (i["kind"], i["hash"], i["evidence"]) for i in old_identifiers
        ]
    assert (
        client.post("/customers/search", json={"q": "hanako@example.jp"}).json()[0]["customer_id"]
        == b["customer_id"]
    )
    again = client.post(f"/merges/{merged.json()['merge_id']}/undo", json={"reason": "again"})
    assert again.status_code == 409


def test_profile_as_of_a_past_instant(client: TestClient) -> None:
    a = register(
        client,
        channel="store",
        name_kanji="鈴木 一郎",
        address="東京都千代田区丸の内1-2-3",
        prefecture="東京都",
    )
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    changed = client.patch(
        f"/customers/{a['customer_id']}",
        json={"address": "大阪府大阪市北区梅田3-1-1", "prefecture": "大阪府"},
    )
    assert changed.status_code == 200, changed.text
    now = profile(client, a["customer_id"])
    then = profile(client, a["customer_id"], as_of=moment.isoformat())
    assert now["personal"]["address"].startswith("大阪府")
    assert then["personal"]["address"] == "東京都千代田区丸の内1-2-3"
    assert then["attributes"]["prefecture"] == "東京都"
    assert then["version"] == 1
    too_early = client.get(f"/customers/{a['customer_id']}", params={"as_of": "2000-01-01T00:00:00+09:00"})
    assert too_early.status_code == 404
    naive = client.get(f"/customers/{a['customer_id']}", params={"as_of": "2030-01-01T00:00:00"})
    assert naive.status_code == 422


def test_uncertain_pairs_go_to_the_review_queue(client: TestClient) -> None:
    a = register(
        client,
        channel="store",
        name_kanji="佐藤 花子",
        name_kana="サトウ ハナコ",
        postal_code="100-0001",
        birthday="1990-01-01",
        phone="090-3333-4444",
    )
    b = register(client, channel="online", name_kanji="佐藤花子", postal_code="1000001", email="s@example.jp")
    assert b["outcome"] == "created"
    assert len(b["reviews"]) == 1
    queue = client.get("/reviews").json()["reviews"]
    assert len(queue) == 1
    item = queue[0]
    assert {item["customer_a"], item["customer_b"]} == {a["customer_id"], b["customer_id"]}
    assert 0.8 <= item["score"] < 0.93
    assert set(item["evidence"]["matched_fields"]) == {"name", "postal_code"}
    approved = client.post(f"/reviews/{item['review_id']}/approve")
    assert approved.status_code == 200, approved.text
    assert profile(client, a["customer_id"])["merged_ids"] == [b["customer_id"]]
    assert client.get("/reviews").json()["reviews"] == []
    assert client.post(f"/reviews/{item['review_id']}/reject", json={"reason": "x"}).status_code == 409


def test_a_rejected_pair_is_not_proposed_again(client: TestClient) -> None:
    register(client, channel="store", name_kanji="高橋 健", postal_code="100-0001", birthday="1970-01-01")
    b = register(client, channel="online", name_kanji="高橋 健", postal_code="100-0001")
    review_id = b["reviews"][0]
    assert client.post(f"/reviews/{review_id}/reject", json={"reason": "two people"}).status_code == 204
    client.patch(f"/customers/{b['customer_id']}", json={"name_kana": "タカハシ ケン"})
    assert client.get("/reviews").json() == {"reviews": [], "limit": 50, "next": None}
    rejected = client.get("/reviews", params={"status": "rejected"}).json()["reviews"]
    assert rejected[0]["decision"]["reason"] == "two people"


_PAIRS = [
    ("高橋 健", "100-0001"),
    ("佐藤 花子", "150-0002"),
    ("鈴木 一郎", "530-0003"),
    ("田中 美咲", "460-0004"),
    ("伊藤 翔", "810-0005"),
    ("渡辺 陽子", "060-0006"),
    ("山本 大輔", "980-0007"),
    ("中村 愛", "730-0008"),
]


def _uncertain_pair(client: TestClient, name: str, postal_code: str) -> str:
    """Two registrations that may be one person: their review's id."""
    register(client, channel="store", name_kanji=name, postal_code=postal_code, birthday="1970-01-01")
    b = register(client, channel="online", name_kanji=name, postal_code=postal_code)
    assert len(b["reviews"]) == 1, b
    return str(b["reviews"][0])


def test_the_review_queue_is_walked_page_by_page_once_each(client: TestClient) -> None:
    """Keyset pages: every open item exactly once, in queue order, while an item is
    opened and another decided between two pages; limits are bounded."""
    opened = [_uncertain_pair(client, name, postal) for name, postal in _PAIRS[:6]]
    first = client.get("/reviews", params={"limit": 4}).json()
    assert [r["review_id"] for r in first["reviews"]] == opened[:4] and first["limit"] == 4
    assert first["next"]
    # between two pages: a new item is opened, one shown and one not yet shown are
    # decided (an offset would now skip opened[5]: the list moved under it)
    late = _uncertain_pair(client, *_PAIRS[6])
    for decided in (opened[1], opened[4]):
        assert client.post(f"/reviews/{decided}/reject", json={"reason": "two people"}).status_code == 204
    seen = [r["review_id"] for r in first["reviews"]]
    cursor = first["next"]
    while cursor:
        page = client.get("/reviews", params={"limit": 4, "cursor": cursor}).json()
        seen += [r["review_id"] for r in page["reviews"]]
        cursor = page["next"]
    assert seen == [*opened[:4], opened[5], late]

    everything: list[str] = []
    cursor = None
    while True:
        params = {"limit": 1, "status": "all", **({"cursor": cursor} if cursor else {})}
        page = client.get("/reviews", params=params).json()
        assert len(page["reviews"]) <= 1
        everything += [r["review_id"] for r in page["reviews"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert everything == [*opened, late]  # the last full page says there is no more

    for params, field in (
        ({"limit": 0}, "query.limit"),
        ({"limit": 201}, "query.limit"),
        ({"cursor": "not a cursor"}, "query.cursor"),
        ({"cursor": "eyJ4IjoxfQ"}, "query.cursor"),  # {"x":1}: decodes, holds no position
    ):
        bad = client.get("/reviews", params=params)
        assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == field, bad.text
    assert "/reviews" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "store", "phone": "12"}, "body.phone"),
        ({"channel": "store", "email": "not-an-email"}, "body.email"),
        ({"channel": "store", "passport": "X1"}, "body.passport"),
        ({"channel": "fax", "email": "a@example.jp"}, "body.channel"),
        ({"channel": "store", "birthday": "1990-13-01", "email": "a@example.jp"}, "body.birthday"),
    ],
)
def test_bad_input_names_the_field(client: TestClient, body: dict, field: str) -> None:
    response = client.post("/customers", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == field


def test_bad_merges_and_unknown_things(client: TestClient) -> None:
    a = register(client, channel="store", email="x@example.jp")
    self_merge = client.post("/merges", json={"survivor_id": a["customer_id"], "merged_id": a["customer_id"]})
    assert self_merge.status_code == 422
    assert self_merge.json()["error"]["code"] == "cannot_merge_with_itself"
    assert client.post(f"/merges/{uuid.uuid4()}/undo", json={"reason": "x"}).status_code == 404
    assert client.get(f"/customers/{uuid.uuid4()}").status_code == 404
    assert client.post("/customers", json={"channel": "store"}).status_code == 422  # nobody to register
    bad_kind = client.post(
        f"/customers/{a['customer_id']}/identifiers", json={"kind": "passport", "value": "1"}
    )
    assert bad_kind.status_code == 422


def test_an_identifier_of_another_customer_cannot_be_added(client: TestClient) -> None:
    a = register(client, channel="store", email="a@example.jp")
    b = register(client, channel="store", email="b@example.jp")
    clash = client.post(
        f"/customers/{b['customer_id']}/identifiers", json={"kind": "email", "value": "A@example.jp"}
    )
    assert clash.status_code == 409
    assert a["customer_id"] in clash.json()["error"]["message"]
    added = client.post(
        f"/customers/{b['customer_id']}/identifiers", json={"kind": "phone", "value": "090-5555-6666"}
    )
    assert added.status_code == 201
    removed = client.delete(f"/customers/{b['customer_id']}/identifiers/phone/{added.json()['hash']}")
    assert removed.status_code == 204


def test_stale_versions_get_409_never_a_lost_update(client: TestClient) -> None:
    a = register(client, channel="store", email="c@example.jp", name_kanji="中村 誠")
    first = client.patch(f"/customers/{a['customer_id']}", json={"city": "千代田区", "expected_version": 1})
    second = client.patch(
        f"/customers/{a['customer_id']}", json={"city": "港区"}, headers={"If-Match": '"1"'}
    )
    assert first.status_code == 200
    assert second.status_code == 409
    assert profile(client, a["customer_id"])["attributes"]["city"] == "千代田区"


def test_concurrent_writers_conflict_instead_of_overwriting(identity: Identity) -> None:
    """Two processes (two application instances on one store) edit one customer at once."""
    result = identity.app.observe([Ident("email", "e" * 64)])
    other = build(identity.settings)
    try:
        mine = identity.app._customer(result.customer_id)
        theirs = other.app._customer(result.customer_id)
        mine.change_profile({"name_kanji": "甲"}, {})
        theirs.change_profile({"name_kanji": "乙"}, {})
        identity.app._save(mine)
        with pytest.raises(ConcurrentUpdate):
            other.app._save(theirs)
    finally:
        other.close()
    assert identity.app.get_customer(result.customer_id)["personal"]["name_kanji"] == "甲"


def test_parallel_requests_on_one_customer(client: TestClient) -> None:
    a = register(client, channel="store", email="p@example.jp", name_kanji="並列 太郎")
    codes: list[int] = []

    def patch(city: str) -> None:
        codes.append(
            client.patch(
                f"/customers/{a['customer_id']}", json={"city": city, "expected_version": 1}
            ).status_code
        )

    threads = [threading.Thread(target=patch, args=(f"city{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409, 409, 409]


def test_erasure_makes_the_person_unreadable(client: TestClient, identity: Identity) -> None:
    a = register(
        client, channel="store", name_kanji="消去 花子", email="erase@example.jp", birthday="1999-09-09"
    )
    read_only = client.post(
        f"/customers/{a['customer_id']}/erase",
        json={"reason": "request"},
        headers={"X-API-Key": "dev-read-key"},
    )
    assert read_only.status_code == 403
    erased = client.post(f"/customers/{a['customer_id']}/erase", json={"reason": "customer request"})
    assert erased.status_code == 200
    gone = profile(client, a["customer_id"])
    assert gone["status"] == "erased"
    assert gone["personal"] == {}
    assert gone["identifiers"] == []
    # The log is intact, but its personal fields can no longer be opened by anyone.
    fresh = build(identity.settings)
    try:
        assert fresh.app._customer(uuid.UUID(a["customer_id"]), version=1).personal == {}
    finally:
        fresh.close()
    assert client.post("/customers/search", json={"q": "erase@example.jp"}).json() == []
    assert client.post("/customers/search", json={"q": "消去"}).json() == []


def test_a_batch_prefetch_finds_what_exists_and_still_catches_a_concurrent_writer(identity: Identity) -> None:
    """The resolver asks once per batch which claims and customers exist; a claim made by
    another writer after that question still makes the batch's save fail as a
    concurrent update, never a second owner."""
    from identity.domain.claim import claim_id

    known = identity.app.observe([Ident("email", "a" * 64)])
    assert known.customer_id is not None
    fresh = Ident("member_no", "b" * 64)
    other = build(identity.settings)
    try:
        unit = identity.app.unit_of_work()
        unit.__enter__()
        identity.app.prefetch_observations([[Ident("email", "a" * 64)], [fresh]])
        assert claim_id("email", "a" * 64) not in identity.app._absent  # it exists
        assert claim_id(fresh.kind, fresh.hash) in identity.app._absent
        other.app.observe([fresh])  # another process claims it meanwhile
        identity.app.observe([fresh])
        with pytest.raises(ConcurrentUpdate):
            unit.__exit__(None, None, None)
    finally:
        other.close()
    assert identity.app._absent == set()
    claim = identity.app._maybe(claim_id(fresh.kind, fresh.hash))
    assert claim is not None and len(claim.owners) == 1
