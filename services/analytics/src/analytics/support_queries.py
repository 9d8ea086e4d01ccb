"""Support KPIs and a customer's inquiry history, from ``tickets`` (0005_support.sql).

Definitions (docs/analytics.md and docs/support.md say the same):

* A period is ``[start, end)`` in business days in Japan (Asia/Tokyo), like every KPI.
* *Opened*: tickets opened in the period. *Resolved*: tickets with a resolution in the
  period (a ticket reopened and resolved again in it counts once, with its last
  resolution). *Backlog*: tickets opened before the period's end whose status at the
  end was open or pending.
* *First response time*: seconds from opening to the first staff reply, for tickets
  first answered in the period; *resolution time*: seconds from opening to the
  (last) resolution in the period, time spent pending excluded. Medians.
* *SLA met rate*: resolved tickets whose resolution met both targets (first response
  and resolution, as the support service judged them) / resolved tickets with a verdict.
* *CSAT*: ratings given in the period — their mean (1..5), distribution, and the share
  of 4s and 5s (the usual "CSAT %").
* *Customers*: distinct customers who opened tickets in the period, attributed through
  identity_lookup to the customer each ticket belongs to *now*.

Breakdowns by the ticket's channel or category (set when it was opened).
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from analytics.queries import Queries, iso_utc

GroupBy = Literal["none", "channel", "category"]

_PER_TICKET = """
    SELECT
        ticket_id,
        anyIf(channel, event_type = 'ticket.opened') AS channel,
        anyIf(category, event_type = 'ticket.opened') AS category,
        anyIf(key_hash, event_type = 'ticket.opened') AS key_hash,
        anyIf(anonymous, event_type = 'ticket.opened') AS anonymous,
        countIf(event_type = 'ticket.opened') > 0 AS known,
        minIf(day, event_type = 'ticket.opened') AS opened_day,
        argMaxIf(status, (occurred_at, recorded_at), status != '') AS status_at_end,
        minIf(first_response_seconds, event_type = 'ticket.replied' AND first_response_seconds >= 0) AS frt,
        minIf(day, event_type = 'ticket.replied' AND first_response_seconds >= 0) AS frt_day,
        countIf(event_type = 'ticket.replied' AND first_response_seconds >= 0) > 0 AS answered,
        countIf(event_type = 'ticket.resolved' AND day >= {start:Date}) > 0 AS has_resolution,
        argMaxIf(resolution_seconds, (occurred_at, recorded_at),
                 event_type = 'ticket.resolved' AND day >= {start:Date}) AS rt,
        argMaxIf(sla_met, (occurred_at, recorded_at),
                 event_type = 'ticket.resolved' AND day >= {start:Date}) AS verdict,
        maxIf(satisfaction, event_type = 'ticket.rated' AND day >= {start:Date}) AS rating
    FROM tickets FINAL
    WHERE day < {end:Date}
    GROUP BY ticket_id
"""

_BUCKET = "multiIf({by:String} = 'channel', channel, {by:String} = 'category', category, 'all')"
_FILTER = (
    "({channel:String} = '' OR channel = {channel:String})"
    " AND ({category:String} = '' OR category = {category:String})"
)


class SupportQueries(Queries):
    """The support KPIs and a customer's inquiry history, on the API's client and budget."""

    def kpis(
        self, start: date, end: date, by: GroupBy = "none", channel: str = "", category: str = ""
    ) -> dict[str, Any]:
        # Only fixed SQL fragments are spliced; every value is a bound parameter.
        sql = f"""
        WITH t AS ({_PER_TICKET})
        SELECT
            {_BUCKET} AS bucket,
            countIf(opened_day >= {{start:Date}}) AS opened,
            countIf(has_resolution) AS resolved,
            countIf(status_at_end IN ('open', 'pending')) AS backlog,
            uniqExactIf(
                if(isNull(owner) OR empty(owner), key_hash, cityHash64(owner)),
                opened_day >= {{start:Date}} AND NOT anonymous
            ) AS customers,
            countIf(answered AND frt_day >= {{start:Date}}) AS first_responses,
            quantileExactIf(0.5)(frt, answered AND frt_day >= {{start:Date}})
                AS median_first_response_seconds,
            quantileExactIf(0.5)(rt, has_resolution AND rt >= 0) AS median_resolution_seconds,
            countIf(has_resolution AND verdict = 1) AS sla_met,
            countIf(has_resolution AND verdict >= 0) AS sla_judged,
            countIf(rating > 0) AS ratings,
            avgIf(rating, rating > 0) AS csat_average,
            countIf(rating >= 4) AS satisfied,
            [countIf(rating = 1), countIf(rating = 2), countIf(rating = 3),
             countIf(rating = 4), countIf(rating = 5)]
                AS csat_distribution
        FROM (
            SELECT *, joinGetOrNull('identity_lookup', 'customer_id', key_hash) AS owner
            FROM t WHERE known AND {_FILTER}
        )
        GROUP BY bucket
        ORDER BY opened DESC, bucket
        """  # noqa: S608
        rows = self._rows(sql, start=start, end=end, by=by, channel=channel, category=category)
        groups = [_kpi(r) for r in rows]
        return {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "by": by,
            "filters": {"channel": channel or None, "category": category or None},
            "groups": groups if by != "none" else [],
            "total": _kpi(rows[0])
            if by == "none" and rows
            else _kpi(None)
            if by == "none"
            else _total(groups),
        }

    def customer_tickets(self, keys: list[str], limit: int = 50) -> dict[str, Any]:
        """A customer's tickets (the 360's inquiry history): counts and the latest."""
        sql = """
        SELECT
            ticket_id,
            anyIf(channel, event_type = 'ticket.opened') AS channel,
            anyIf(category, event_type = 'ticket.opened') AS category,
            anyIf(priority, event_type = 'ticket.opened') AS priority,
            minIf(occurred_at, event_type = 'ticket.opened') AS opened_at,
            argMaxIf(status, (occurred_at, recorded_at), status != '') AS status,
            maxIf(satisfaction, event_type = 'ticket.rated') AS satisfaction,
            argMaxIf(escalated_to, (occurred_at, recorded_at), event_type = 'ticket.escalated')
                AS escalated_to,
            max(occurred_at) AS updated_at
        FROM tickets FINAL
        WHERE person_key IN {keys:Array(String)}
        GROUP BY ticket_id
        HAVING countIf(event_type = 'ticket.opened') > 0
        ORDER BY opened_at DESC, ticket_id
        """
        rows = self._rows(sql, keys=keys)
        tickets = [
            {
                "ticket_id": str(r["ticket_id"]),
                "channel": r["channel"],
                "category": r["category"],
                "priority": r["priority"],
                "status": r["status"],
                "opened_at": iso_utc(r["opened_at"]),
                "updated_at": iso_utc(r["updated_at"]),
                "satisfaction": int(r["satisfaction"]) or None,
                "escalated_to": r["escalated_to"] or None,
            }
            for r in rows
        ]
        return {
            "total": len(tickets),
            "open": sum(t["status"] in ("open", "pending") for t in tickets),
            "complaints": sum(t["category"] == "complaint" for t in tickets),
            "last_opened_at": tickets[0]["opened_at"] if tickets else None,
            "tickets": tickets[:limit],
        }


def _kpi(row: dict[str, Any] | None) -> dict[str, Any]:
    r = row or {}
    judged, ratings = int(r.get("sla_judged", 0)), int(r.get("ratings", 0))
    first, resolved = int(r.get("first_responses", 0)), int(r.get("resolved", 0))
    out = {
        "opened": int(r.get("opened", 0)),
        "resolved": resolved,
        "backlog": int(r.get("backlog", 0)),
        "customers": int(r.get("customers", 0)),
        "median_first_response_seconds": _num(r.get("median_first_response_seconds")) if first else None,
        "median_resolution_seconds": _num(r.get("median_resolution_seconds")) if resolved else None,
        "sla_met_rate": int(r["sla_met"]) / judged if judged else None,
        "csat_average": round(float(r["csat_average"]), 3) if ratings else None,
        "csat_satisfied_rate": int(r["satisfied"]) / ratings if ratings else None,
        "csat_distribution": {str(i + 1): int(n) for i, n in enumerate(r.get("csat_distribution", [0] * 5))},
        "ratings": ratings,
    }
    if row is not None and "bucket" in row:
        out = {"key": row["bucket"], **out}
    return out


def _total(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Additive figures summed over the groups (medians are per group only)."""
    keys = ("opened", "resolved", "backlog", "ratings")
    return {k: sum(g[k] for g in groups) for k in keys}


def _num(value: Any) -> float | None:
    return None if value is None else float(value)
