"""Event-store plumbing shared by the event-sourced services.

``TracingMapper`` records the W3C trace context of the request that caused a domain event
next to the event's state, so the outbox relay can continue the same trace when it
publishes the event to Kafka, even minutes later or after a restart. The metadata is
kept out of the domain event objects themselves: aggregates never see it.

``SecureSQLiteFactory`` is eventsourcing's SQLite persistence with every connection
running ``PRAGMA secure_delete=ON``: the stores hold personal data (sealed) and, beside
the events, the data-key tables, and a deleted row must not stay in free space.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, TypeVar, cast

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent, find_id_convertor
from eventsourcing.sqlite import SQLiteConnection, SQLiteConnectionPool, SQLiteFactory
from eventsourcing.utils import get_topic, resolve_topic
from opentelemetry import propagate

TAggregateID = TypeVar("TAggregateID")

_META_KEY = "__crm_meta__"


def project(aggregate: Any, events: Iterable[Any]) -> Any:
    """eventsourcing's ``project_aggregate`` without its per-event ``isinstance`` check
    against a runtime-checkable Protocol (slow on Python 3.11: a quarter of the
    membership worker's time in a profile), for events the application stored itself.
    Pass it as ``repository.get(..., projector_func=project)``."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def current_trace_carrier() -> dict[str, str]:
    """The active trace context as W3C headers (empty outside a recording span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class TracingMapper(Mapper[Any]):
    """A mapper that stores the active trace context with each new event."""

    def to_stored_event(self, domain_event: DomainEventProtocol[Any]) -> StoredEvent:
        topic = get_topic(domain_event.__class__)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        carrier = current_trace_carrier()
        if carrier:
            event_state[_META_KEY] = carrier
        event_state = self.encode_state(domain_event, originator_id, event_state)
        stored_state = self.transcoder.encode(event_state)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=stored_state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[Any]:
        return self.to_domain_event_with_meta(stored_event)[0]

    def to_domain_event_with_meta(
        self, stored_event: StoredEvent
    ) -> tuple[DomainEventProtocol[Any], Mapping[str, str]]:
        """The domain event and the metadata (trace carrier) stored beside it."""
        state = stored_event.state
        try:
            if self.cipher:
                state = self.cipher.decrypt(state)
            if self.compressor:
                state = self.compressor.decompress(state)
            event_state: dict[str, Any] = self.transcoder.decode(state)
        except Exception as exc:
            msg = (
                f"Failed to deserialise stored event {stored_event.topic} "
                f"{stored_event.originator_id} v{stored_event.originator_version}: {exc}"
            )
            raise MapperDeserialisationError(msg) from exc
        meta = event_state.pop(_META_KEY, {})
        # The rest mirrors Mapper.to_domain_event: id conversion and upcasting.
        cls = resolve_topic(stored_event.topic)
        id_convertor = find_id_convertor(cls, cast(Hashable, type(stored_event.originator_id)))
        event_state["originator_id"] = id_convertor(stored_event.originator_id)
        event_state["originator_version"] = stored_event.originator_version
        class_version = getattr(cls, "class_version", 1)
        from_version = event_state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        event_state = self.decode_state(cls, event_state["originator_id"], event_state)
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", event_state)
        return event, meta

    def encode_state(
        self, domain_event: DomainEventProtocol[Any], originator_id: Any, state: dict[str, Any]
    ) -> dict[str, Any]:
        """Hook for subclasses: transform an event's state before it is stored."""
        return state

    def decode_state(
        self, event_class: type[Any], originator_id: Any, state: dict[str, Any]
    ) -> dict[str, Any]:
        """Hook for subclasses: transform a stored state back before the event is built."""
        return state


class SecureSQLiteConnectionPool(SQLiteConnectionPool):
    """eventsourcing's pool, each new connection with ``PRAGMA secure_delete=ON``."""

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        connection.cursor().execute("PRAGMA secure_delete=ON")
        return connection


class SecureSQLiteFactory(SQLiteFactory):
    """``PERSISTENCE_MODULE`` of the SQLite stores (``Settings.eventsourcing_env``)."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        self.datastore.pool = SecureSQLiteConnectionPool(db_name=pool.db_name, lock_timeout=pool.lock_timeout)
        pool.close()  # made by the base class, never used
