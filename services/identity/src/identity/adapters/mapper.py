"""Seals the personal fields of identity's stored events with the customer's data key.

Domain events name their personal fields in ``PERSONAL_FIELDS``; this mapper encrypts
them (AES-256-GCM, the originator's data key) on the way into the event store and opens
them on the way out. After erasure the key is gone: the fields read as empty, in this
store and in every copy made of it, while the rest of the log stays intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from eventsourcing.domain import DomainEventProtocol

from crm_contracts.envelope import SealedValue
from crm_platform.crypto import SealError, open_sealed, seal
from crm_platform.eventstore import TracingMapper
from identity.adapters.keystore import DataKeyStore, KeyErased

_SEALED = "__sealed__"

#: False while events are read for someone who may not see personal data.
_opening: ContextVar[bool] = ContextVar("identity_open_personal_data", default=True)


@contextmanager
def personal_data_left_sealed() -> Iterator[None]:
    """Within: sealed fields read as empty, as if erased, and no data key is fetched nor
    any value decrypted (a profile read for a key without ``identity:pii``)."""
    token = _opening.set(False)
    try:
        yield
    finally:
        _opening.reset(token)


class PersonalDataMapper(TracingMapper):
    keys: DataKeyStore | None = None

    def encode_state(
        self, domain_event: DomainEventProtocol[Any], originator_id: Any, state: dict[str, Any]
    ) -> dict[str, Any]:
        # Only fields that hold something are sealed: an empty value says nothing about
        # anyone, and a customer first seen through a bare identifier (most of them, in
        # the resolver) then needs no data key until personal data arrives.
        fields = [n for n in getattr(type(domain_event), "PERSONAL_FIELDS", ()) if state.get(n)]
        if not fields:
            return state
        if self.keys is None:
            raise RuntimeError("PersonalDataMapper needs a key store before personal data is saved")
        key_id, key = self.keys.get_or_create(originator_id)
        for name in fields:
            sealed = seal(key, key_id, state[name], context=f"store:{name}")
            state[name] = {_SEALED: sealed.model_dump()}
        return state

    def decode_state(
        self, event_class: type[Any], originator_id: Any, state: dict[str, Any]
    ) -> dict[str, Any]:
        for name in getattr(event_class, "PERSONAL_FIELDS", ()):
            value = state.get(name)
            if isinstance(value, dict) and _SEALED in value:
                if not _opening.get():
                    state[name] = {}
                    continue
                state[name] = self._open(originator_id, SealedValue.model_validate(value[_SEALED]), name)
        return state

    def _open(self, originator_id: Any, sealed: SealedValue, name: str) -> Any:
        if self.keys is None:
            raise RuntimeError("PersonalDataMapper needs a key store to read personal data")
        try:
            found = self.keys.get(originator_id)
            if found is None:
                return {}
            return open_sealed(found[1], sealed, context=f"store:{name}")
        except (KeyErased, SealError):
            # Erased: the person is gone; what remains is the anonymous history.
            return {}
