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
