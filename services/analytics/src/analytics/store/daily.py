"""``kpi_daily``: sales per day, channel and store, recomputed from ``orders``.

A summing materialised view would count a re-delivered record twice, so the aggregates
are recomputed instead: after each insert, the days it touched are aggregated afresh
from ``orders`` (deduplicated with FINAL; a day is a range of its primary key, so this
reads only that day) and replace the previous figures (ReplacingMergeTree by
``computed_at``). Idempotent, and a late return for an old day is one day's work.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from zoneinfo import ZoneInfo

from clickhouse_connect.driver.client import Client

from analytics.store.clickhouse import READ_SETTINGS
from crm_contracts.envelope import Event
from crm_contracts.events.commerce import OnlineOrderCompleted, OrderReturned, StoreOrderCompleted

#: Business days are days in Japan (orders.day is the same).
BUSINESS_TZ = ZoneInfo("Asia/Tokyo")
_ORDER_EVENTS = (StoreOrderCompleted, OnlineOrderCompleted, OrderReturned)

_AGGREGATE = """
    INSERT INTO kpi_daily
    SELECT day, channel, store_id, anonymous,
           countIf(kind = 'order'), countIf(kind != 'order'),
           sumIf(amount, kind = 'order'), sumIf(amount, kind != 'order'),
           sumIf(items, kind = 'order'), now64(6)
    FROM orders FINAL
    WHERE {where}
    GROUP BY day, channel, store_id, anonymous
"""


def business_day(at: datetime) -> date:
    return at.astimezone(BUSINESS_TZ).date()


def order_day(event: Event) -> date | None:
    """The day an order event counts on, or None for any other event."""
    return business_day(event.occurred_at) if isinstance(event, _ORDER_EVENTS) else None


def refresh(client: Client, days: Iterable[date] | None = None) -> None:
    """Recompute ``days`` (every day when None: a rebuild)."""
    if days is None:
        client.command(_AGGREGATE.format(where="1"), settings=READ_SETTINGS)
        return
    wanted = sorted(set(days))
    if wanted:
        client.command(
            _AGGREGATE.format(where="day IN {days:Array(Date)}"),
            parameters={"days": wanted},
            settings=READ_SETTINGS,
        )


__all__ = ["BUSINESS_TZ", "business_day", "order_day", "refresh"]
