"""Native fast path of the engagement service's ingestion (``src/lib.rs``)."""

class FastPath:
    def __init__(self, key: bytes, producer: str, max_event_bytes: int) -> None: ...
    def prepare(
        self, raw: object, source: str, recorded_at_micros: int
    ) -> tuple[int, str, str, bytes, str | None, str | None, dict[int, tuple[str, int, int]] | None] | None:
        """``(kind, event_id, customer_key, wire bytes, order_id, store_id, lines)`` of
        an event the fast path understands (``kind`` 0 a store order, 1 an online order,
        2 an interaction), or ``None``: take the Python path."""
