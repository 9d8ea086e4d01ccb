"""Encoding, decoding and validation of published events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from pydantic import ValidationError

from crm_contracts.envelope import Identifier, IdentifierKind
from crm_contracts.events.commerce import OrderLine, StoreOrderCompleted, StoreOrderCompletedPayload
from crm_contracts.events.identity import Channel, CustomerRegistered, CustomerRegisteredPayload
from crm_contracts.registry import EventRegistry, InvalidEvent, UnknownEventType, decode, encode

HASH = "a" * 64


def _registered(**overrides: object) -> CustomerRegistered:
    fields: dict[str, object] = {
        "occurred_at": datetime(2026, 4, 1, 10, 0, tzinfo=timezone(timedelta(hours=9))),
        "producer": "identity.relay",
        "customer_key": "c1",
        "identifiers": (Identifier(kind=IdentifierKind.EMAIL, hash=HASH),),
        "payload": CustomerRegisteredPayload(customer_id=uuid.uuid4(), channel=Channel.STORE),
    }
    fields.update(overrides)
    return CustomerRegistered(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field_and_normalises_to_utc() -> None:
    event = _registered()
    back = decode(encode(event))
    assert back == event
    assert back.occurred_at.tzinfo == UTC
    assert back.occurred_at.hour == 1  # 10:00 JST
    assert event.event_id.version == 7


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        _registered(occurred_at=datetime(2026, 4, 1, 10, 0))


def test_event_type_is_pinned_to_the_class() -> None:
    raw = orjson.loads(encode(_registered()))
    raw["event_type"] = "ticket.opened"
    with pytest.raises(InvalidEvent):
        decode(raw)  # the ticket model requires its own payload


def test_unknown_event_type_and_version() -> None:
    raw = orjson.loads(encode(_registered()))
    with pytest.raises(UnknownEventType):
        decode({**raw, "event_type": "customer.teleported"})
    with pytest.raises(UnknownEventType):
        decode({**raw, "schema_version": 9})
    with pytest.raises(InvalidEvent):
        decode(b"{not json")


def test_consumers_ignore_unknown_fields() -> None:
    raw = orjson.loads(encode(_registered()))
    raw["added_later"] = True
    raw["payload"]["also_new"] = 1
    assert decode(raw).event_id == uuid.UUID(raw["event_id"])


def test_order_lines_must_sum_to_total() -> None:
    line = OrderLine(line_no=1, sku="SKU1", category="tops", quantity=2, unit_price=1980, discount=180)
    ok = StoreOrderCompletedPayload(order_id="R1", store_id="S1", lines=(line,), total=3780)
    assert ok.total == 3780
    with pytest.raises(ValidationError, match="lines sum to 3780, total says 3800"):
        StoreOrderCompletedPayload(order_id="R1", store_id="S1", lines=(line,), total=3800)


def test_money_is_never_a_float() -> None:
    with pytest.raises(ValidationError):
        OrderLine(line_no=1, sku="S", category="c", quantity=1, unit_price=19.8)  # type: ignore[arg-type]


def test_upcaster_brings_an_old_version_forward() -> None:
    from typing import Literal

    from crm_contracts.envelope import ContractModel, Event

    class PayloadV2(ContractModel):
        full_name: str

    class HappenedV2(Event):
        TOPIC = "t"
        event_type: Literal["thing.happened"] = "thing.happened"
        schema_version: Literal[2] = 2
        payload: PayloadV2

    reg = EventRegistry([HappenedV2])
    reg.register_upcaster(
        "thing.happened", 1, lambda d: {**d, "payload": {"full_name": d["payload"]["name"]}}
    )
    old = orjson.loads(encode(_registered()))
    old.update(event_type="thing.happened", schema_version=1, payload={"name": "山田"})
    upgraded = reg.decode(old)
    assert isinstance(upgraded, HappenedV2)
    assert upgraded.payload.full_name == "山田"


def test_store_order_round_trip() -> None:
    line = OrderLine(line_no=1, sku="SKU1", category="tops", quantity=1, unit_price=1000)
    event = StoreOrderCompleted(
        occurred_at=datetime.now(UTC),
        producer="engagement.api",
        customer_key=HASH,
        payload=StoreOrderCompletedPayload(order_id="R1", store_id="S1", lines=(line,), total=1000),
    )
    assert decode(encode(event)) == event
