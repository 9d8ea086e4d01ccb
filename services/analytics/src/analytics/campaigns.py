"""The campaign report: what a campaign did, and what it was worth.

Definitions (docs/analytics.md says the same):

* Recipients: the audience frozen at launch; the *holdout* (control group) is the part
  kept out on purpose (``message.skipped`` with reason ``holdout``); the *targeted*
  group is everyone else — sent, skipped for another reason (no consent, no address…)
  or failed. Comparing targeted with holdout is an intention-to-treat comparison: both
  groups are chosen the same way, so the difference is what the campaign caused.
* Delivered: sent minus bounced. Open, click and opt-out counts are distinct messages.
* Conversion window: ``[send_at, send_at + days)``, ``days`` the campaign's
  attribution window unless the query names one. A recipient *converted* when they
  made a purchase in it; revenue is net (purchases minus refunds) in it. Purchases are
  attributed to the customer each recipient is *now* (identity_lookup), like every KPI,
  and the groups count those customers once each: recipients merged since the send are
  one customer with its purchases once, and a customer with recipients on both sides is
  targeted (it was messaged: the holdout must hold only people never messaged).
* Uplift: conversion rate of the targeted group minus the holdout's (percentage points),
  and revenue per recipient likewise. Incremental revenue = revenue-per-recipient uplift
  × targeted recipients. ROI = (incremental revenue − cost) / cost, when a cost is given.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from analytics.queries import Queries, iso_utc


def campaigns(q: Queries, limit: int = 100) -> list[dict[str, Any]]:
    """Launched campaigns, newest first, with their send counts."""
    rows = q.rows(
        """
        SELECT c.campaign_id AS campaign_id, c.name AS name, c.channels AS channels, c.audience AS audience,
               c.recipients AS recipients, c.holdout AS holdout, c.send_at AS send_at,
               ifNull(m.sent, 0) AS sent, ifNull(m.opened, 0) AS opened, ifNull(m.clicked, 0) AS clicked
        FROM (SELECT * FROM campaigns FINAL ORDER BY launched_at DESC LIMIT 1 BY campaign_id) AS c
        LEFT JOIN (
            SELECT campaign_id,
                   uniqExactIf(message_id, event_type = 'message.sent') AS sent,
                   uniqExactIf(message_id, event_type = 'message.opened') AS opened,
                   uniqExactIf(message_id, event_type = 'message.clicked') AS clicked
            FROM messages FINAL GROUP BY campaign_id
        ) AS m ON m.campaign_id = c.campaign_id
        ORDER BY c.launched_at DESC
        LIMIT {limit:UInt32}
        """,
        limit=limit,
    )
    return [
        {
            **r,
            "campaign_id": str(r["campaign_id"]),
            "send_at": iso_utc(r["send_at"]),
            "channels": list(r["channels"]),
        }
        for r in rows
    ]


def campaign_report(
    q: Queries, campaign_id: uuid.UUID, days: int | None = None, cost: float | None = None
) -> dict[str, Any] | None:
    """The report of one campaign; None when no event of it has arrived."""
    launched = q.rows(
        """SELECT name, channels, audience, recipients, holdout, holdout_pct, variants, send_at,
                  attribution_days, launched_at
           FROM campaigns FINAL WHERE campaign_id = {cid:UUID}
           ORDER BY launched_at LIMIT 1""",
        cid=str(campaign_id),
    )
    counts = q.rows(
        """
        SELECT
            uniqExactIf(message_id, event_type IN ('message.sent', 'message.skipped', 'message.failed'))
                AS recorded,
            uniqExactIf(message_id, event_type = 'message.skipped' AND reason = 'holdout') AS holdout,
            uniqExactIf(message_id, event_type = 'message.sent') AS sent,
            uniqExactIf(message_id, event_type = 'message.failed') AS failed,
            uniqExactIf(message_id, event_type = 'message.bounced') AS bounced,
            uniqExactIf(message_id, event_type = 'message.opened') AS opened,
            uniqExactIf(message_id, event_type = 'message.clicked') AS clicked,
            uniqExactIf(message_id, event_type = 'message.opted_out') AS opted_out,
            min(occurred_at) AS first_event
        FROM messages FINAL
        WHERE campaign_id = {cid:UUID}
        """,
        cid=str(campaign_id),
    )[0]
    if not launched and counts["recorded"] == 0:
        return None
    skipped = q.rows(
        """SELECT reason, uniqExact(message_id) AS n FROM messages FINAL
           WHERE campaign_id = {cid:UUID} AND event_type = 'message.skipped'
           GROUP BY reason ORDER BY n DESC, reason""",
        cid=str(campaign_id),
    )
    by_variant = q.rows(
        """SELECT variant,
                  uniqExactIf(message_id, event_type = 'message.sent') AS sent,
                  uniqExactIf(message_id, event_type = 'message.opened') AS opened,
                  uniqExactIf(message_id, event_type = 'message.clicked') AS clicked
           FROM messages FINAL
           WHERE campaign_id = {cid:UUID} AND variant != ''
           GROUP BY variant ORDER BY sent DESC, variant""",
        cid=str(campaign_id),
    )
    c = launched[0] if launched else {}
    window_days = days or int(c.get("attribution_days") or 14)
    start: datetime = c.get("send_at") or counts["first_event"]
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    end = start + timedelta(days=window_days)
    groups = _conversions(q, campaign_id, start, end)
    targeted, control = groups.get(0, _empty()), groups.get(1, _empty())
    sent = int(counts["sent"])
    delivered = sent - int(counts["bounced"])
    report: dict[str, Any] = {
        "campaign_id": str(campaign_id),
        "name": c.get("name"),
        "channels": list(c.get("channels") or []),
        "audience": c.get("audience"),
        "send_at": iso_utc(start),
        "recipients": int(c.get("recipients") or counts["recorded"]),
        "holdout": int(counts["holdout"]),
        "recorded": int(counts["recorded"]),
        "sent": sent,
        "failed": int(counts["failed"]),
        "skipped": {r["reason"]: int(r["n"]) for r in skipped},
        "delivered": delivered,
        "bounced": int(counts["bounced"]),
        "opened": int(counts["opened"]),
        "clicked": int(counts["clicked"]),
        "opted_out": int(counts["opted_out"]),
        "open_rate": _ratio(counts["opened"], delivered),
        "click_rate": _ratio(counts["clicked"], delivered),
        "by_variant": [
            {**v, "sent": int(v["sent"]), "opened": int(v["opened"]), "clicked": int(v["clicked"])}
            for v in by_variant
        ],
        "conversion": {
            "window_days": window_days,
            "window_end": iso_utc(end),
            "targeted": targeted,
            "holdout": control,
        },
    }
    report["uplift"] = _uplift(targeted, control, cost)
    return report


def _empty() -> dict[str, Any]:
    return {
        "customers": 0,
        "converted": 0,
        "orders": 0,
        "revenue": 0,
        "conversion_rate": None,
        "revenue_per_customer": None,
    }


def _conversions(
    q: Queries, campaign_id: uuid.UUID, start: datetime, end: datetime
) -> dict[int, dict[str, Any]]:
    """Per group (0 targeted, 1 holdout): customers (recipients as identity knows them
    now, each once), those who bought, orders, revenue."""
    rows = q.rows(
        """
        WITH recipients AS (
            SELECT customer_id, any(key_hash) AS key_hash,
                   max(event_type = 'message.skipped' AND reason = 'holdout') AS holdout
            FROM messages FINAL
            WHERE campaign_id = {cid:UUID}
              AND event_type IN ('message.sent', 'message.skipped', 'message.failed')
            GROUP BY customer_id
        ),
        attributed AS (
            -- one row per customer as identity knows them now: recipients merged into one
            -- customer since the send count once, with their purchases once; a customer
            -- with a recipient on each side counts as targeted (min: any targeted record),
            -- so the holdout keeps only people who were never messaged
            SELECT customer, min(holdout) AS holdout
            FROM (SELECT holdout,
                         if(isNull(o) OR o = toUUID('00000000-0000-0000-0000-000000000000'),
                            customer_id, assumeNotNull(o)) AS customer
                  FROM (SELECT holdout, customer_id,
                               joinGetOrNull('identity_lookup', 'customer_id', key_hash) AS o
                        FROM recipients))
            GROUP BY customer
        ),
        per_key AS (
            SELECT key_hash, joinGetOrNull('identity_lookup', 'customer_id', key_hash) AS owner,
                   countIf(kind = 'order') AS orders, sum(amount) AS revenue
            FROM orders FINAL
            WHERE day >= toDate({start:DateTime64(3, 'UTC')}, 'Asia/Tokyo') - 1
              AND day <= toDate({end:DateTime64(3, 'UTC')}, 'Asia/Tokyo') + 1
              AND occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
              AND NOT anonymous
            GROUP BY key_hash
        ),
        per_customer AS (
            SELECT assumeNotNull(owner) AS customer, sum(orders) AS orders, sum(revenue) AS revenue
            FROM per_key WHERE isNotNull(owner) AND owner != toUUID('00000000-0000-0000-0000-000000000000')
            GROUP BY customer
        )
        SELECT a.holdout AS holdout, count() AS customers, countIf(p.orders > 0) AS converted,
               sum(p.orders) AS orders, sum(p.revenue) AS revenue
        FROM attributed AS a LEFT JOIN per_customer AS p ON p.customer = a.customer
        GROUP BY holdout
        """,
        cid=str(campaign_id),
        start=start,
        end=end,
    )
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        customers = int(r["customers"])
        out[int(r["holdout"])] = {
            "customers": customers,
            "converted": int(r["converted"]),
            "orders": int(r["orders"]),
            "revenue": int(r["revenue"]),
            "conversion_rate": _ratio(r["converted"], customers),
            "revenue_per_customer": _ratio(r["revenue"], customers),
        }
    return out


def _uplift(targeted: dict[str, Any], control: dict[str, Any], cost: float | None) -> dict[str, Any]:
    t_rate, c_rate = targeted["conversion_rate"], control["conversion_rate"]
    t_rev, c_rev = targeted["revenue_per_customer"], control["revenue_per_customer"]
    if t_rate is None or c_rate is None or t_rev is None or c_rev is None:
        return {
            "conversion_points": None,
            "revenue_per_customer": None,
            "incremental_revenue": None,
            "roi": None,
            "cost": cost,
            "note": "no holdout to compare with" if c_rate is None else "no targeted recipients",
        }
    incremental = (t_rev - c_rev) * targeted["customers"]
    return {
        "conversion_points": round((t_rate - c_rate) * 100, 4),
        "revenue_per_customer": round(t_rev - c_rev, 2),
        "incremental_revenue": round(incremental),
        "cost": cost,
        "roi": round((incremental - cost) / cost, 4) if cost else None,
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(float(numerator) / float(denominator), 6) if denominator else None
