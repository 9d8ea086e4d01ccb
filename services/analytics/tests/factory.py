"""Contract events for analytics tests, built with the real contract models."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from analytics.sink import encode_row, insert_rows
from analytics.store import daily
from crm_contracts.envelope import Event, Identifier, IdentifierKind
from crm_contracts.events.commerce import (
    InteractionPayload,
    InteractionRecorded,
    OnlineOrderCompleted,
    OnlineOrderCompletedPayload,
    OrderLine,
    OrderReturned,
    OrderReturnedPayload,
    ReturnedLine,
    StoreOrderCompleted,
    StoreOrderCompletedPayload,
)
from crm_contracts.events.identity import (
    CustomerAttributes,
    CustomersMerged,
    CustomersMergedPayload,
    IdentifiersUnlinked,
    IdentifiersUnlinkedPayload,
    LinkEvidence,
    MergeUndone,
    MergeUndonePayload,
    ProfileSnapshot,
    ProfileSnapshotPayload,
)


def key(name: str) -> str:
    """A stand-in blind index (64 hex) for an identifier called ``name``."""
    return hashlib.sha256(name.encode()).hexdigest()


def ident(name: str, kind: IdentifierKind = IdentifierKind.EMAIL) -> Identifier:
    return Identifier(kind=kind, hash=key(name))


def at(day: str, hour: int = 12) -> datetime:
    """Noon in Tokyo (03:00 UTC) of ``day`` (YYYY-MM-DD) by default."""
    y, m, d = map(int, day.split("-"))
    return datetime(y, m, d, hour - 9 if hour >= 9 else hour, 0, tzinfo=UTC)


def lines(*items: tuple[str, int, int]) -> tuple[OrderLine, ...]:
    """(category, quantity, unit_price) → order lines."""
    return tuple(
        OrderLine(line_no=i + 1, sku=f"{cat}-{price}", category=cat, quantity=q, unit_price=price)
        for i, (cat, q, price) in enumerate(items)
    )


def store_order(
    who: str | None, day: str, order_id: str, *items: tuple[str, int, int], **kw: Any
) -> StoreOrderCompleted:
    ls = lines(*items)
    total = sum(line.quantity * line.unit_price for line in ls)
    ids = (ident(who, IdentifierKind.MEMBER_NO),) if who else ()
    return StoreOrderCompleted(
        occurred_at=at(day),
        producer="engagement.api",
        customer_key=ids[0].hash if ids else f"anonymous:store:{order_id}",
        identifiers=ids,
        payload=StoreOrderCompletedPayload(
            order_id=order_id, lines=ls, total=total, store_id="tokyo-01", **kw
        ),
    )


def online_order(
    who: str, day: str, order_id: str, *items: tuple[str, int, int], channel: str = "online"
) -> OnlineOrderCompleted:
    ls = lines(*items)
    total = sum(line.quantity * line.unit_price for line in ls)
    i = ident(who)
    return OnlineOrderCompleted(
        occurred_at=at(day),
        producer="engagement.api",
        customer_key=i.hash,
        identifiers=(i,),
        payload=OnlineOrderCompletedPayload(order_id=order_id, lines=ls, total=total, channel=channel),  # type: ignore[arg-type]
    )


def returned(original: StoreOrderCompleted | OnlineOrderCompleted, day: str, amount: int) -> OrderReturned:
    line = original.payload.lines[0]
    channel = "store" if isinstance(original, StoreOrderCompleted) else original.payload.channel
    return OrderReturned(
        occurred_at=at(day),
        producer="engagement.api",
        customer_key=original.customer_key,
        identifiers=original.identifiers,
        payload=OrderReturnedPayload(
            return_id=f"r-{original.payload.order_id}",
            original_order_id=original.payload.order_id,
            channel=channel,  # type: ignore[arg-type]
            lines=(ReturnedLine(line_no=1, sku=line.sku, category=line.category, quantity=1, amount=amount),),
            refund_total=amount,
        ),
    )


def viewed(who: str, when: datetime, kind: str = "product_viewed") -> InteractionRecorded:
    i = ident(who)
    return InteractionRecorded(
        occurred_at=when,
        producer="engagement.api",
        customer_key=i.hash,
        identifiers=(i,),
        payload=InteractionPayload(kind=kind, sku="sku-1"),  # type: ignore[arg-type]
    )


def profile(
    customer_id: uuid.UUID,
    identifiers: list[Identifier],
    *,
    status: str = "active",
    merged_into: uuid.UUID | None = None,
    recorded_at: datetime | None = None,
    prefecture: str | None = "東京都",
) -> ProfileSnapshot:
    extra = {"recorded_at": recorded_at} if recorded_at else {}
    return ProfileSnapshot(
        occurred_at=recorded_at or datetime.now(UTC),
        producer="identity.resolver",
        customer_key=str(customer_id),
        identifiers=tuple(identifiers[:64]),
        payload=ProfileSnapshotPayload(
            customer_id=customer_id,
            status=status,  # type: ignore[arg-type]
            merged_into=merged_into,
            attributes=CustomerAttributes(prefecture=prefecture, birth_year=1985),
            identifiers=tuple(identifiers),
        ),
        **extra,
    )


def merged(
    survivor: uuid.UUID, merged_id: uuid.UUID, moved: list[Identifier], recorded_at: datetime
) -> CustomersMerged:
    return CustomersMerged(
        occurred_at=recorded_at,
        recorded_at=recorded_at,
        producer="identity.relay",
        customer_key=str(survivor),
        payload=CustomersMergedPayload(
            merge_id=uuid.uuid4(),
            survivor_id=survivor,
            merged_id=merged_id,
            moved=tuple(moved),
            evidence=LinkEvidence(rule="staff"),
        ),
    )


def undone(
    survivor: uuid.UUID, restored: uuid.UUID, identifiers: list[Identifier], recorded_at: datetime
) -> MergeUndone:
    return MergeUndone(
        occurred_at=recorded_at,
        recorded_at=recorded_at,
        producer="identity.relay",
        customer_key=str(restored),
        payload=MergeUndonePayload(
            merge_id=uuid.uuid4(),
            survivor_id=survivor,
            restored_id=restored,
            restored=tuple(identifiers),
            reason="wrong",
        ),
    )


def unlinked(
    customer_id: uuid.UUID, identifiers: list[Identifier], recorded_at: datetime
) -> IdentifiersUnlinked:
    return IdentifiersUnlinked(
        occurred_at=recorded_at,
        recorded_at=recorded_at,
        producer="identity.relay",
        customer_key=str(customer_id),
        payload=IdentifiersUnlinkedPayload(
            customer_id=customer_id, unlinked=tuple(identifiers), reason="shared card"
        ),
    )


def deliver(client: Client, events: list[Event], offset: int = 0) -> None:
    """What the sink does with a batch (re-pointing after merges aside): the records
    inserted as they would come off Kafka, then the days they touched re-aggregated."""
    from crm_contracts.registry import encode

    insert_rows(client, [encode_row(e.TOPIC, 0, offset + i, encode(e)) for i, e in enumerate(events)])
    daily.refresh(client, {d for e in events if (d := daily.order_day(e))})
