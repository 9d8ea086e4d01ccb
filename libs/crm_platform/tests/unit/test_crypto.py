from __future__ import annotations

import pytest

from crm_contracts.envelope import IdentifierKind
from crm_platform.crypto import (
    BlindIndexer,
    SealError,
    generate_data_key,
    open_sealed,
    seal,
    unwrap_key,
    wrap_key,
)

KEY = b"k" * 32


def test_blind_index_is_keyed_and_kind_scoped() -> None:
    indexer = BlindIndexer(KEY)
    a = indexer.index(IdentifierKind.EMAIL, "taro@example.jp")
    assert a == indexer.index("email", "taro@example.jp")
    assert a != BlindIndexer(b"x" * 32).index("email", "taro@example.jp")
    # The same string as another kind of identifier is another identifier.
    assert a != indexer.index("ec_account", "taro@example.jp")
    assert len(a) == 64 and int(a, 16) >= 0


def test_short_blind_index_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        BlindIndexer(b"short")


def test_sealed_values_open_only_with_their_key_and_context() -> None:
    key = generate_data_key()
    sealed = seal(key, "cust-1", {"name": "山田 太郎"}, context="customer.registered")
    assert "山田" not in sealed.model_dump_json()
    assert open_sealed(key, sealed, context="customer.registered") == {"name": "山田 太郎"}
    with pytest.raises(SealError):
        open_sealed(generate_data_key(), sealed, context="customer.registered")
    with pytest.raises(SealError):
        open_sealed(key, sealed, context="ticket.opened")
    tampered = sealed.model_copy(update={"ciphertext": sealed.ciphertext[:-4] + "AAAA"})
    with pytest.raises(SealError):
        open_sealed(key, tampered, context="customer.registered")


def test_data_keys_are_wrapped_by_the_master_key_and_bound_to_their_id() -> None:
    data_key = generate_data_key()
    wrapped = wrap_key(KEY, data_key, "cust-1")
    assert data_key not in wrapped
    assert unwrap_key(KEY, wrapped, "cust-1") == data_key
    with pytest.raises(SealError):
        unwrap_key(KEY, wrapped, "cust-2")


def test_master_keys_wrap_under_the_current_version_and_unwrap_older_ones() -> None:
    from crm_platform.crypto import MasterKeys

    old, new = b"o" * 32, b"n" * 32
    v1 = MasterKeys(old)
    assert v1.version == 1 and v1.versions == (1,)
    data_key = generate_data_key()
    version, wrapped_v1 = v1.wrap(data_key, "cust-1")
    assert version == 1
    assert unwrap_key(old, wrapped_v1, "cust-1") == data_key  # the same format as before versions

    ring = MasterKeys(new, 2, {1: old})
    assert ring.versions == (1, 2)
    assert ring.unwrap(wrapped_v1, "cust-1", 1) == data_key
    assert ring.unwrap(wrapped_v1, "cust-1", None) == data_key  # a key stored before versions: v1
    version, wrapped_v2 = ring.wrap(data_key, "cust-1")
    assert version == 2 and ring.unwrap(wrapped_v2, "cust-1", 2) == data_key
    with pytest.raises(SealError):  # wrapped by v1, claimed as v2
        ring.unwrap(wrapped_v1, "cust-1", 2)

    only_new = MasterKeys(new, 2)
    assert only_new.unwrap(wrapped_v2, "cust-1", 2) == data_key
    with pytest.raises(SealError, match="version 1, which is not configured"):
        only_new.unwrap(wrapped_v1, "cust-1", 1)
    assert MasterKeys.of(old).version == 1 and MasterKeys.of(ring) is ring


def test_master_key_rings_refuse_bad_versions_and_keys() -> None:
    from crm_platform.crypto import MasterKeys

    with pytest.raises(ValueError, match="positive"):
        MasterKeys(KEY, 0)
    with pytest.raises(ValueError, match="both current and previous"):
        MasterKeys(KEY, 2, {2: b"x" * 32})
    with pytest.raises(ValueError, match="32-byte"):
        MasterKeys(KEY, 2, {1: b"short"})
