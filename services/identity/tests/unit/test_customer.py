"""The Customer aggregate's invariants, without any infrastructure."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from identity.domain.claim import IdentifierClaim
from identity.domain.customer import (
    CannotMergeWithItself,
    Customer,
    CustomerInactive,
    InvalidCustomerData,
    VersionConflict,
)
from identity.domain.merge import Merge, MergeAlreadyUndone

NOW = datetime(2026, 4, 1, tzinfo=UTC)
H = {k: f"{i:064x}" for i, k in enumerate("abcdefgh", start=1)}


def customer(*identifiers: tuple[str, str], **personal: object) -> Customer:
    return Customer.register(
        customer_id=uuid.uuid4(),
        channel="store",
        personal=dict(personal),
        attributes={"gender": "female"},
        identifiers=[{"kind": k, "hash": h, "evidence": {"rule": "registration"}} for k, h in identifiers],
        consents={"email": True},
        registered_at=NOW,
    )


def test_registration_validates() -> None:
    with pytest.raises(InvalidCustomerData, match="channel"):
        Customer.register(
            customer_id=uuid.uuid4(),
            channel="fax",
            personal={},
            attributes={},
            identifiers=[],
            consents={},
            registered_at=NOW,
        )
    with pytest.raises(InvalidCustomerData, match="unknown identifier kind"):
        customer(("passport", H["a"]))
    with pytest.raises(InvalidCustomerData, match="consent"):
        Customer.register(
            customer_id=uuid.uuid4(),
            channel="store",
            personal={},
            attributes={},
            identifiers=[],
            consents={"fax": True},
            registered_at=NOW,
        )


def test_profile_changes_report_what_changed_and_clear_with_none() -> None:
    c = customer(name_kanji="山田 花子", address="東京都")
    assert c.change_profile({"name_kana": "ヤマダ ハナコ", "address": None}, {"prefecture": "東京都"}) == [
        "address",
        "name_kana",
        "prefecture",
    ]
    assert c.personal == {"name_kanji": "山田 花子", "name_kana": "ヤマダ ハナコ"}
    assert c.change_profile({"name_kana": "ヤマダ ハナコ"}, {}) == []
    with pytest.raises(VersionConflict):
        c.check_version(1)


def test_merge_and_undo_restore_both_exactly() -> None:
    survivor = customer(("member_no", H["a"]), ("email", H["b"]), name_kanji="山田 花子")
    merged = customer(("email", H["b"]), ("phone", H["c"]), name_kana="ヤマダ ハナコ")
    survivor_before = (dict(survivor.identifiers), dict(survivor.personal), survivor.status)
    merged_before = (dict(merged.identifiers), dict(merged.personal), merged.status)
    merge_id = uuid.uuid4()
    moved = survivor.absorb(merge_id, merged, {"rule": "staff"})
    merged.merge_into(merge_id, survivor.id)
    assert [m["kind"] for m in moved] == ["phone"]  # the shared e-mail was already there
    assert survivor.has("phone", H["c"])
    assert merged.status == "merged"
    with pytest.raises(CustomerInactive):
        merged.change_profile({"name_kanji": "x"}, {})
    survivor.undo_absorption(merge_id, merged.id)
    merged.restore(merge_id)
    assert (dict(survivor.identifiers), dict(survivor.personal), survivor.status) == survivor_before
    assert (dict(merged.identifiers), dict(merged.personal), merged.status) == merged_before


def test_cannot_merge_with_itself_or_exclusive_conflicts_are_seen() -> None:
    c = customer(("member_no", H["a"]))
    with pytest.raises(CannotMergeWithItself):
        c.absorb(uuid.uuid4(), c, {})
    assert c.conflicts_with([("member_no", H["d"])]) == ["member_no"]
    assert c.conflicts_with([("member_no", H["a"]), ("email", H["e"])]) == []


def test_erasure_forgets_personal_data_and_identifiers() -> None:
    c = customer(("email", H["a"]), name_kanji="山田 花子")
    tombstoned = c.erase("request", NOW)
    assert tombstoned == [{"kind": "email", "hash": H["a"]}]
    assert c.personal == {} and c.identifiers == {} and c.status == "erased"
    assert c.erase("again", NOW) == []


def test_claims_become_ambiguous_then_shared() -> None:
    claim = IdentifierClaim.open("phone", H["a"])
    a, b = uuid.uuid4(), uuid.uuid4()
    claim.claim(a, {}, max_owners=2)
    assert claim.sole_owner == a
    claim.claim(b, {}, max_owners=2)
    assert claim.sole_owner is None and not claim.shared
    claim.claim(uuid.uuid4(), {}, max_owners=2)
    assert claim.shared
    claim.release(b, "merged")
    claim.release(a, "merged")
    assert claim.sole_owner is None  # once shared, never links again


def test_a_merge_is_undone_once() -> None:
    merge = Merge.record(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), [], {"rule": "staff"})
    merge.undo("wrong", "staff-1", [])
    with pytest.raises(MergeAlreadyUndone):
        merge.undo("again", "staff-1", [])
