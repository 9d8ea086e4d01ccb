"""Native fast path of the engagement service's ingestion (``src/lib.rs``)."""

from collections.abc import Callable

class FastPath:
    def __init__(
        self,
        key: bytes,
        producer: str,
        max_event_bytes: int,
        blind_in_python: Callable[[str, str], str],
        plus_addressing: list[str],
    ) -> None:
        """``blind_in_python(kind, raw)``: the blind index of an identifier the native
        code does not normalise itself (a phone number, a full-width value); it raises
        for an invalid one. ``plus_addressing``: the e-mail domains where ``local+tag``
        is ``local`` (``crm_platform.identifiers.PLUS_ADDRESSING``)."""
    def prepare(
        self, raw: object, source: str, recorded_at_micros: int
    ) -> tuple[int, str, str, bytes, str | None, str | None, dict[int, tuple[str, int, int]] | None] | None:
        """``(kind, event_id, customer_key, wire bytes, order_id, store_id, lines)`` of
        an event the fast path understands (``kind`` 0 a store order, 1 an online order,
        2 an interaction), or ``None``: take the Python path."""
