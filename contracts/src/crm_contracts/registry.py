"""Lookup of every published event class by ``(event_type, schema_version)``.

``decode`` is what consumers call on a Kafka record value: it finds the class, runs any
upcasters to bring an old version to the newest one the consumer knows, and validates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
from pydantic import ValidationError

from crm_contracts.envelope import Event
from crm_contracts.events import commerce, forms, identity, membership, messaging, support

EVENT_CLASSES: tuple[type[Event], ...] = (
    identity.CustomerRegistered,
    identity.CustomerProfileChanged,
    identity.ConsentChanged,
    identity.IdentifiersLinked,
    identity.IdentifiersUnlinked,
    identity.CustomersMerged,
    identity.MergeUndone,
    identity.CustomerErased,
    identity.ProfileSnapshot,
    commerce.StoreOrderCompleted,
    commerce.OnlineOrderCompleted,
    commerce.OrderReturned,
    commerce.InteractionRecorded,
    membership.MemberEnrolled,
    membership.MemberRankChanged,
    membership.PointsChanged,
    messaging.CampaignLaunched,
    messaging.MessageSent,
    messaging.MessageSkipped,
    messaging.MessageFailed,
    messaging.MessageBounced,
    messaging.MessageOpened,
    messaging.MessageClicked,
    messaging.MessageOptedOut,
    support.TicketOpened,
    support.TicketResolved,
    support.TicketAssigned,
    support.TicketReplied,
    support.TicketEscalated,
    support.TicketStatusChanged,
    support.TicketRated,
    forms.SurveyInvited,
    forms.SurveyAnswered,
    forms.FormSubmitted,
    forms.FormRegistered,
    forms.FormRegistrationChanged,
)

#: An upcaster turns the JSON dict of ``(event_type, v)`` into that of ``v + 1``.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UnknownEventType(LookupError):
    """The record names an event type or version this build does not know."""


class InvalidEvent(ValueError):
    """The record is not valid JSON or does not satisfy its contract."""


class EventRegistry:
    def __init__(self, classes: Iterable[type[Event]]) -> None:
        self._classes: dict[tuple[str, int], type[Event]] = {}
        self._latest: dict[str, int] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Event]) -> None:
        key = cls.type_key()
        if key in self._classes:
            raise ValueError(f"{key} registered twice")
        self._classes[key] = cls
        self._latest[key[0]] = max(self._latest.get(key[0], 0), key[1])

    def register_upcaster(self, event_type: str, from_version: int, fn: Upcaster) -> None:
        self._upcasters[(event_type, from_version)] = fn

    def classes(self) -> list[type[Event]]:
        return list(self._classes.values())

    def get(self, event_type: str, version: int) -> type[Event]:
        try:
            return self._classes[(event_type, version)]
        except KeyError:
            raise UnknownEventType(f"unknown event {event_type} v{version}") from None

    def decode(self, raw: bytes | str | dict[str, Any]) -> Event:
        """Parse, upcast to the latest known version, and validate one event."""
        try:
            data = raw if isinstance(raw, dict) else orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidEvent("event must be a JSON object")
        event_type, version = data.get("event_type"), data.get("schema_version")
        if not isinstance(event_type, str) or not isinstance(version, int):
            raise InvalidEvent("event_type and schema_version are required")
        latest = self._latest.get(event_type)
        if latest is None or version > latest or version < 1:
            raise UnknownEventType(f"unknown event {event_type} v{version}")
        while version < latest:
            upcast = self._upcasters.get((event_type, version))
            if upcast is None:
                raise UnknownEventType(f"no upcaster for {event_type} v{version}")
            data = upcast(dict(data))
            version += 1
            data["schema_version"] = version
        try:
            return self._classes[(event_type, version)].model_validate(data)
        except ValidationError as exc:
            raise InvalidEvent(str(exc)) from None


registry = EventRegistry(EVENT_CLASSES)


def encode(event: Event) -> bytes:
    """The wire form of an event: compact JSON, UTF-8 (pydantic's serializer straight to
    bytes; the same bytes as ``orjson.dumps(event.model_dump(mode="json"))`` without the
    intermediate dict, a third faster)."""
    return event.__pydantic_serializer__.to_json(event)


def decode(raw: bytes | str | dict[str, Any]) -> Event:
    return registry.decode(raw)
