"""The analytics queries: every one a parameterised SQL statement (values are bound by
the server, never spliced into the text), every figure attributed to the customer an
event belongs to *now* through ``identity_lookup``.

Definitions (docs/analytics.md says the same):

* Days are business days in Japan (Asia/Tokyo). A period is ``[start, end)`` in days.
* Facts are ``orders``: purchases (``kind = 'order'``) and returns/cancellations
  (negative amounts). Anonymous sales (no identifier) count in revenue, not in any
  per-customer figure.
* A customer is *active* in a period when they made a purchase in it; *new* when their
  first purchase ever (in the channel filter) is in it; *retained* when active in the
  previous period of the same length and in this one. Churn = 1 − retention.
* Repeat-purchase rate: active customers with ≥2 purchases in the period / active.
  Purchase frequency: purchases / active. AOV: gross purchase value / purchases.
  Revenue: purchases minus refunds. Historical LTV: net revenue of all time up to the
  period's end / customers who ever purchased by then.
* Cross-sell rate: active customers who bought in ≥2 categories in the period / active.
  Up-sell rate: customers active in both periods whose highest price band rose / those.
  Omnichannel share: active customers who bought in ≥2 channels (store/online/app).

Two stages keep attribution cheap: facts are first aggregated per key (``key_hash``),
each key's current owner is looked up once (``identity_lookup``, a hash table in
memory that follows identity_map), and the per-key results are folded per customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Self, get_args

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.common import StreamContext

from analytics.store.clickhouse import READ_SETTINGS

Channel = Literal["all", "store", "online", "app"]
CHANNELS: tuple[str, ...] = ("all", "store", "online", "app")
SEGMENTS: tuple[str, ...] = ("new", "repeat", "loyal", "dormant")
#: Upper bounds (yen, exclusive) of the price bands of up-sell; beyond the last, the top band.
PRICE_BANDS: tuple[int, ...] = (3_000, 10_000, 30_000)
#: KPIs whose series are built from one overview per bucket (at most MAX_OVERVIEW_BUCKETS)...
OverviewMetric = Literal[
    "repeat_customers",
    "repeat_purchase_rate",
    "retention_rate",
    "churn_rate",
    "purchase_frequency",
    "historical_ltv",
    "cross_sell_rate",
    "up_sell_rate",
    "omnichannel_share",
]
#: ...and every KPI a series can be asked for.
SeriesMetric = Literal["revenue", "orders", "aov", "active_customers", "new_customers", OverviewMetric]
OVERVIEW_SERIES: tuple[str, ...] = get_args(OverviewMetric)
MAX_OVERVIEW_BUCKETS = 36

#: In a per-key stage (grouped by ``key_hash``): the key's owner now, NULL when unknown,
#: the nil UUID when its owner let go of it (unlinked, erased).
_OWNER = "joinGetOrNull('identity_lookup', 'customer_id', key_hash) AS owner"
_UNOWNED = "(isNull(k.owner) OR empty(k.owner))"
#: A per-key row folded to its customer, as a 64-bit group key (a key nobody owns stands
#: for itself: an identified purchase not linked yet still counts once).
_ATTRIBUTE = f"if({_UNOWNED}, k.key_hash, cityHash64(k.owner))"
#: The customer's id as text, for lists: the customer_id, or the key itself if unowned.
_CUSTOMER_ID = f"any(if({_UNOWNED}, k.person_key, toString(k.owner)))"
_CHANNEL_OK = "({channel:String} = 'all' OR channel = {channel:String})"
_CHANNEL_BIT = "multiIf(channel = 'store', 1, channel = 'online', 2, channel = 'app', 4, 8)"
#: The columns of a segment's CSV export, in order.
EXPORT_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "rfm",
    "orders",
    "revenue",
    "recency_days",
    "first_day",
    "last_day",
)
#: Rows per block of an export's stream (one CSV chunk each: memory stays bounded).
EXPORT_BLOCK_ROWS = 10_000
#: The widest cohort matrix (periods from the first cohort to the end), 256 bits a mask.
MAX_COHORT_PERIODS = 256


@dataclass(frozen=True)
class RfmRules:
    """What makes a segment, as of a day. Ranks R/F/M 1–5 by these thresholds."""

    dormant_days: int = 180
    loyal_min_orders: int = 5
    loyal_min_revenue: int = 50_000
    recency_days: tuple[int, int, int, int] = (30, 90, 180, 365)
    frequency: tuple[int, int, int, int] = (2, 3, 5, 10)
    monetary: tuple[int, int, int, int] = (10_000, 30_000, 100_000, 300_000)


class Queries:
    def __init__(self, client: Client, budget: dict[str, Any] | None = None) -> None:
        self._client = client
        self._budget = {**READ_SETTINGS, **(budget or {})}

    @classmethod
    def of(cls, queries: Queries) -> Self:
        """Another module's queries on the same client and budget as ``queries`` (what
        ``Analytics.run`` hands out)."""
        return cls(queries._client, queries._budget)

    @property
    def client(self) -> Client:
        return self._client

    @property
    def budget(self) -> dict[str, Any]:
        return self._budget

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        """One query's rows as dicts, within the read budget (modules of analytics that
        add their own queries on the same client use it)."""
        result = self._client.query(sql, parameters=params, settings=self._budget)
        return list(result.named_results())

    _rows = rows

    # -- KPI overview -----------------------------------------------------------------

    def kpi_overview(self, start: date, end: date, channel: Channel = "all") -> dict[str, Any]:
        days = (end - start).days
        prev_start = start - timedelta(days=days)
        # Per row, once: o = a purchase, c = in the channel filter, p = in the period,
        # q = in the previous period, cb = the channel as a bit (omnichannel looks at
        # every channel, whatever the filter).
        sql = f"""
        WITH per_key AS (
            SELECT
                key_hash,
                {_OWNER},
                countIf(o AND c) AS ever,
                minIf(day, o AND c) AS first_day,
                countIf(o AND c AND p) AS orders,
                sumIf(amount, c AND p) AS revenue,
                sumIf(amount, o AND c AND p) AS gross,
                countIf(o AND c AND q) AS prev_orders,
                minIf(category_lo, o AND c AND p) AS category_lo,
                maxIf(category_hi, o AND c AND p) AS category_hi,
                groupBitOrIf(cb, o AND p) AS channels,
                maxIf(max_unit_price, o AND c AND p) AS top_price,
                maxIf(max_unit_price, o AND c AND q) AS prev_top_price,
                sumIf(amount, c) AS lifetime
            FROM (
                SELECT key_hash, day, amount, category_lo, category_hi, max_unit_price,
                       kind = 'order' AS o, {_CHANNEL_OK} AS c,
                       day >= {{start:Date}} AS p, day >= {{prev:Date}} AND day < {{start:Date}} AS q,
                       {_CHANNEL_BIT} AS cb
                FROM orders FINAL
                WHERE day < {{end:Date}} AND NOT anonymous
            )
            GROUP BY key_hash
        ),
        per_customer AS (
            SELECT
                {_ATTRIBUTE} AS customer,
                sum(k.ever) > 0 AS ever,
                minIf(k.first_day, k.ever > 0) AS first_day,
                sum(k.orders) AS orders,
                sum(k.revenue) AS revenue,
                sum(k.gross) AS gross,
                sum(k.prev_orders) AS prev_orders,
                -- two or more categories exactly when the extremes differ; a key without
                -- purchases in the period contributes no extremes
                minIf(k.category_lo, k.orders > 0) != maxIf(k.category_hi, k.orders > 0) AS cross_sold,
                bitCount(groupBitOr(k.channels)) >= 2 AS omnichannel,
                max(k.top_price) AS top_price,
                max(k.prev_top_price) AS prev_top_price,
                sum(k.lifetime) AS lifetime
            FROM per_key AS k
            GROUP BY customer
        )
        SELECT
            countIf(orders > 0) AS active_customers,
            countIf(orders > 0 AND first_day >= {{start:Date}}) AS new_customers,
            countIf(orders >= 2) AS repeat_customers,
            sum(orders) AS purchases,
            sum(revenue) AS customer_revenue,
            sum(gross) AS gross_total,
            countIf(prev_orders > 0) AS previous_active,
            countIf(prev_orders > 0 AND orders > 0) AS retained,
            countIf(orders > 0 AND cross_sold) AS cross_sell_customers,
            countIf(orders > 0 AND prev_orders > 0
                    AND {_band("top_price")} > {_band("prev_top_price")}) AS up_sell_customers,
            countIf(orders > 0 AND omnichannel) AS omnichannel_customers,
            sum(lifetime) AS lifetime_revenue,
            countIf(ever) AS lifetime_customers
        FROM per_customer
        """
        params = {"start": start, "end": end, "prev": prev_start, "channel": channel}
        row = self._rows(sql, **params)[0]
        anonymous = self._rows(
            f"""SELECT sum(gross + refunds) AS revenue, sum(orders) AS orders FROM kpi_daily FINAL
            WHERE day >= {{start:Date}} AND day < {{end:Date}} AND {_CHANNEL_OK} AND anonymous""",
            **params,
        )[0]
        active = row["active_customers"]
        orders = row["purchases"] + anonymous["orders"]
        revenue = row["customer_revenue"] + (anonymous["revenue"] or 0)
        return {
            "period": {"start": start.isoformat(), "end": end.isoformat(), "days": days},
            "previous_period": {"start": prev_start.isoformat(), "end": start.isoformat()},
            "channel": channel,
            "active_customers": active,
            "new_customers": row["new_customers"],
            "repeat_customers": row["repeat_customers"],
            "repeat_purchase_rate": _ratio(row["repeat_customers"], active),
            "retention_rate": _ratio(row["retained"], row["previous_active"]),
            "churn_rate": None
            if row["previous_active"] == 0
            else round(1 - row["retained"] / row["previous_active"], 6),
            "purchase_frequency": _ratio(row["purchases"], active),
            "orders": orders,
            "revenue": revenue,
            "anonymous_revenue": anonymous["revenue"] or 0,
            "aov": _ratio(row["gross_total"], row["purchases"]),
            "historical_ltv": _ratio(row["lifetime_revenue"], row["lifetime_customers"]),
            "cross_sell_rate": _ratio(row["cross_sell_customers"], active),
            "up_sell_rate": _ratio(row["up_sell_customers"], row["retained"]),
            "omnichannel_share": _ratio(row["omnichannel_customers"], active),
        }

    # -- time series ------------------------------------------------------------------

    def timeseries(
        self, metric: str, start: date, end: date, interval: str = "day", channel: Channel = "all"
    ) -> list[dict[str, Any]]:
        if metric in OVERVIEW_SERIES:
            # Rates and per-customer figures do not add up across days: each point is
            # the KPI overview of its bucket (the same definitions, the previous period
            # of the same length for retention and up-sell), one statement per bucket.
            points = []
            for lo, hi in buckets(start, end, interval):
                overview = self.kpi_overview(lo, hi, channel)
                points.append({"bucket": bucket_label(lo, interval).isoformat(), "value": overview[metric]})
            return points
        truncate = {"day": "", "week": "toMonday", "month": "toStartOfMonth"}[interval]
        bucket = f"{truncate}(day)"
        if metric == "new_customers":
            # Customers by the bucket of their first purchase ever (in the channel filter).
            sql = f"""
            SELECT {truncate}(first_day) AS bucket, count() AS value FROM (
                SELECT {_ATTRIBUTE} AS customer, min(k.first_day) AS first_day
                FROM (
                    SELECT key_hash, {_OWNER}, min(day) AS first_day FROM orders FINAL
                    WHERE kind = 'order' AND {_CHANNEL_OK} AND day < {{end:Date}} AND NOT anonymous
                    GROUP BY key_hash
                ) AS k
                GROUP BY customer
            )
            WHERE first_day >= {{start:Date}}
            GROUP BY bucket ORDER BY bucket
            """
        elif metric == "active_customers":
            sql = f"""
            SELECT bucket, uniqExact({_ATTRIBUTE}) AS value FROM (
                SELECT key_hash, {_OWNER}, {bucket} AS bucket FROM orders FINAL
                WHERE kind = 'order' AND day >= {{start:Date}} AND day < {{end:Date}} AND {_CHANNEL_OK}
                  AND NOT anonymous
                GROUP BY key_hash, bucket
            ) AS k
            GROUP BY bucket ORDER BY bucket
            """
        else:
            # Sums need no attribution (whoever a purchase belongs to, it counts once):
            # they come from the daily aggregates.
            value = {
                "revenue": "sum(gross + refunds)",
                "orders": "sum(orders)",
                "aov": "if(sum(orders) = 0, 0, sum(gross) / sum(orders))",
            }[metric]
            sql = f"""
            SELECT {bucket} AS bucket, {value} AS value FROM kpi_daily FINAL
            WHERE day >= {{start:Date}} AND day < {{end:Date}} AND {_CHANNEL_OK}
            GROUP BY bucket ORDER BY bucket
            """
        rows = self._rows(sql, start=start, end=end, channel=channel)
        return [{"bucket": r["bucket"].isoformat(), "value": _num(r["value"])} for r in rows]

    # -- cohorts ----------------------------------------------------------------------

    def cohorts(
        self, start: date, end: date, grain: str = "month", channel: Channel = "all"
    ) -> dict[str, Any]:
        """Customers by the month (week) of their first purchase, and how many of them
        bought again k months (weeks) later. Cohorts start in ``[start, end)``.

        Each key's periods with a purchase are a bit mask (bit i = the i-th period from
        the first cohort's), OR-ed per customer: no arrays are built per customer."""
        trunc = "toStartOfMonth" if grain == "month" else "toMonday"
        unit = "month" if grain == "month" else "week"
        first, periods = cohort_periods(start, end, grain)
        if periods > MAX_COHORT_PERIODS:
            raise ValueError(f"a cohort matrix covers at most {MAX_COHORT_PERIODS} {unit}s, not {periods}")
        mask = "UInt64" if periods <= 64 else "UInt256"
        sql = f"""
        WITH per_key AS (
            SELECT key_hash, {_OWNER}, min(day) AS first_day,
                   groupBitOrIf(bitShiftLeft(to{mask}(1), greatest(0, dateDiff('{unit}', {{first:Date}}, {trunc}(day)))),
                                day >= {{first:Date}}) AS mask
            FROM orders FINAL
            WHERE kind = 'order' AND {_CHANNEL_OK} AND day < {{end:Date}} AND NOT anonymous
            GROUP BY key_hash
        ),
        per_customer AS (
            SELECT {_ATTRIBUTE} AS customer, min(k.first_day) AS first_day, groupBitOr(k.mask) AS mask
            FROM per_key AS k
            GROUP BY customer
            HAVING first_day >= {{first:Date}}
        )
        SELECT {trunc}(first_day) AS cohort, idx - dateDiff('{unit}', {{first:Date}}, cohort) AS offset,
               count() AS customers
        FROM per_customer
        ARRAY JOIN arrayFilter(i -> bitAnd(bitShiftRight(mask, i), 1) = 1,
                               range(dateDiff('{unit}', {{first:Date}}, {trunc}(first_day)), {periods})) AS idx
        GROUP BY cohort, offset
        ORDER BY cohort, offset
        """
        rows = self._rows(sql, first=first, end=end, channel=channel)
        cohorts: dict[str, dict[int, int]] = {}
        for r in rows:
            cohorts.setdefault(r["cohort"].isoformat(), {})[int(r["offset"])] = int(r["customers"])
        width = max((max(v) for v in cohorts.values()), default=-1) + 1
        matrix = []
        for cohort, counts in cohorts.items():
            size = counts.get(0, 0)
            row = [counts.get(k, 0) for k in range(width)]
            matrix.append(
                {
                    "cohort": cohort,
                    "size": size,
                    "counts": row,
                    "rates": [round(c / size, 6) if size else None for c in row],
                }
            )
        return {"grain": grain, "channel": channel, "offsets": list(range(width)), "cohorts": matrix}

    # -- RFM segments -----------------------------------------------------------------

    @staticmethod
    def _rfm_sql(*, ids: bool = False) -> str:
        """Every customer scored as of a day by the rules :func:`_rfm_params` binds;
        ``ids``: with their customer_id (for lists: reading the keys' text costs, sizes do
        without)."""
        key_text = "any(person_key) AS person_key," if ids else ""
        customer_id = f"{_CUSTOMER_ID} AS customer_id," if ids else ""
        return f"""
        WITH per_key AS (
            SELECT key_hash, {_OWNER}, {key_text} min(day) AS first_day, max(day) AS last_day,
                   countIf(kind = 'order') AS orders, sum(amount) AS revenue
            FROM orders FINAL
            WHERE day < {{as_of:Date}} AND {_CHANNEL_OK} AND NOT anonymous
            GROUP BY key_hash
        ),
        per_customer AS (
            SELECT {_ATTRIBUTE} AS customer, {customer_id}
                   min(k.first_day) AS first_day, max(k.last_day) AS last_day,
                   sum(k.orders) AS orders, sum(k.revenue) AS revenue
            FROM per_key AS k
            GROUP BY customer
            HAVING orders > 0
        ),
        scored AS (
            SELECT *,
                   dateDiff('day', last_day, {{as_of:Date}}) AS recency_days,
                   multiIf(recency_days <= {{r0:UInt32}}, 5, recency_days <= {{r1:UInt32}}, 4,
                           recency_days <= {{r2:UInt32}}, 3, recency_days <= {{r3:UInt32}}, 2, 1) AS r,
                   multiIf(orders >= {{f3:UInt32}}, 5, orders >= {{f2:UInt32}}, 4, orders >= {{f1:UInt32}}, 3,
                           orders >= {{f0:UInt32}}, 2, 1) AS f,
                   multiIf(revenue >= {{m3:Int64}}, 5, revenue >= {{m2:Int64}}, 4, revenue >= {{m1:Int64}}, 3,
                           revenue >= {{m0:Int64}}, 2, 1) AS m,
                   multiIf(recency_days > {{dormant_days:UInt32}}, 'dormant',
                           orders >= {{loyal_min_orders:UInt32}} AND revenue >= {{loyal_min_revenue:Int64}}, 'loyal',
                           orders >= 2, 'repeat', 'new') AS segment
            FROM per_customer
        )
        """

    @staticmethod
    def _rfm_params(rules: RfmRules) -> dict[str, int]:
        """The rules as the bound parameters of :func:`_rfm_sql` (revenue as Int64, like
        the sums it is compared with)."""
        return {
            **{f"r{i}": days for i, days in enumerate(rules.recency_days)},
            **{f"f{i}": orders for i, orders in enumerate(rules.frequency)},
            **{f"m{i}": revenue for i, revenue in enumerate(rules.monetary)},
            "dormant_days": rules.dormant_days,
            "loyal_min_orders": rules.loyal_min_orders,
            "loyal_min_revenue": rules.loyal_min_revenue,
        }

    def segments(self, as_of: date, channel: Channel = "all", rules: RfmRules = RfmRules()) -> dict[str, Any]:
        sql = (
            self._rfm_sql()
            + """
        SELECT segment, count() AS customers, sum(revenue) AS revenue, avg(orders) AS avg_orders,
               avg(recency_days) AS avg_recency_days
        FROM scored GROUP BY segment"""
        )
        params = {"as_of": as_of, "channel": channel, **self._rfm_params(rules)}
        rows = {r["segment"]: r for r in self._rows(sql, **params)}
        ranks = self._rows(
            self._rfm_sql()
            + " SELECT r, f, m, count() AS customers FROM scored GROUP BY r, f, m ORDER BY r DESC, f DESC, m DESC",
            **params,
        )
        return {
            "as_of": as_of.isoformat(),
            "channel": channel,
            "rules": rules.__dict__,
            "segments": [
                {
                    "segment": name,
                    "customers": int(rows[name]["customers"]) if name in rows else 0,
                    "revenue": int(rows[name]["revenue"]) if name in rows else 0,
                    "avg_orders": _num(rows[name]["avg_orders"]) if name in rows else 0,
                    "avg_recency_days": _num(rows[name]["avg_recency_days"]) if name in rows else 0,
                }
                for name in SEGMENTS
            ],
            "rfm": [{"rfm": f"R{x['r']}F{x['f']}M{x['m']}", "customers": int(x["customers"])} for x in ranks],
        }

    def segment_members(
        self,
        segment: str,
        as_of: date,
        channel: Channel = "all",
        rules: RfmRules = RfmRules(),
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        sql = (
            self._rfm_sql(ids=True)
            + """
        SELECT customer_id, first_day, last_day, orders, revenue, recency_days,
               concat('R', toString(r), 'F', toString(f), 'M', toString(m)) AS rfm
        FROM scored WHERE segment = {segment:String}
        ORDER BY revenue DESC, customer_id LIMIT {limit:UInt32} OFFSET {offset:UInt64}"""
        )
        rows = self._rows(
            sql,
            as_of=as_of,
            channel=channel,
            segment=segment,
            limit=limit,
            offset=offset,
            **self._rfm_params(rules),
        )
        return [
            {**r, "first_day": r["first_day"].isoformat(), "last_day": r["last_day"].isoformat()}
            for r in rows
        ]

    def segment_export(
        self, segment: str, as_of: date, channel: Channel, rules: RfmRules, max_rows: int
    ) -> StreamContext:
        """A segment's customers by revenue (at most ``max_rows``) as ONE streamed query:
        the segment is computed once for the whole export and read block by block
        (:data:`EXPORT_BLOCK_ROWS` rows each), never again per page. Each row ends with
        ``total``, the segment's size before the limit (a window over the same result).
        Open it on the thread that reads it (chDB's stream belongs to that thread)."""
        sql = (
            self._rfm_sql(ids=True)
            + f"""
        SELECT {", ".join(EXPORT_COLUMNS[:1])},
               concat('R', toString(r), 'F', toString(f), 'M', toString(m)) AS rfm,
               {", ".join(EXPORT_COLUMNS[2:])}, count() OVER () AS total
        FROM scored WHERE segment = {{segment:String}}
        ORDER BY revenue DESC, customer_id LIMIT {{limit:UInt64}}"""
        )
        params = {
            "as_of": as_of,
            "channel": channel,
            "segment": segment,
            "limit": max_rows,
            **self._rfm_params(rules),
        }
        return self._client.query_row_block_stream(
            sql, parameters=params, settings={**self._budget, "max_block_size": EXPORT_BLOCK_ROWS}
        )

    # -- funnels ----------------------------------------------------------------------

    def funnel(
        self, steps: list[tuple[str, str | None]], start: date, end: date, window_s: int
    ) -> dict[str, Any]:
        """Customers reaching each step in order within ``window_s`` of the first."""
        conditions = []
        params: dict[str, Any] = {"start": start, "end": end, "window": window_s}
        for i, (event_type, kind) in enumerate(steps):
            params[f"t{i}"] = event_type
            cond = f"event_type = {{t{i}:String}}"
            if kind:
                params[f"k{i}"] = kind
                cond += f" AND kind = {{k{i}:String}}"
            conditions.append(f"({cond})")
        types = ", ".join(f"{{t{i}:String}}" for i in range(len(steps)))
        sql = f"""
        SELECT level, count() AS customers FROM (
            SELECT {_ATTRIBUTE} AS customer,
                   windowFunnel({{window:UInt64}})(toDateTime(k.occurred_at), {", ".join(conditions)}) AS level
            FROM (
                SELECT key_hash, {_OWNER}, occurred_at, event_type, kind
                FROM (
                    SELECT cityHash64(person_key) AS key_hash, occurred_at, event_type, kind FROM events FINAL
                    WHERE occurred_at >= toDateTime({{start:Date}}, 'Asia/Tokyo')
                      AND occurred_at < toDateTime({{end:Date}}, 'Asia/Tokyo')
                      AND event_type IN ({types}) AND NOT startsWith(person_key, 'anonymous:')
                )
            ) AS k
            GROUP BY customer
        )
        GROUP BY level ORDER BY level
        """
        counts = {int(r["level"]): int(r["customers"]) for r in self._rows(sql, **params)}
        reached = [sum(c for level, c in counts.items() if level >= i + 1) for i in range(len(steps))]
        return {
            "window_seconds": window_s,
            "steps": [
                {
                    "step": t if k is None else f"{t}:{k}",
                    "customers": n,
                    "conversion_from_first": _ratio(n, reached[0]),
                    "conversion_from_previous": _ratio(n, reached[i - 1]) if i else 1.0 if n else None,
                }
                for i, ((t, k), n) in enumerate(zip(steps, reached, strict=True))
            ],
        }

    # -- the 360 view -----------------------------------------------------------------

    #: Every key that belongs to the customer now (its identifiers, its own id and those
    #: of customers merged into it): candidates by customer (a primary-key lookup in
    #: identity_by_customer), each confirmed as still theirs by identity_lookup (a later
    #: merge, undo or unlink may have moved it).
    _KEYS = """
        SELECT DISTINCT person_key FROM identity_by_customer
        WHERE customer_id = {cid:UUID}
          AND joinGetOrNull('identity_lookup', 'customer_id', cityHash64(person_key)) = {cid:UUID}
        UNION ALL SELECT toString({cid:UUID})
    """

    def customer_keys(self, customer_id: str) -> list[str]:
        return sorted({r["person_key"] for r in self._rows(self._KEYS, cid=customer_id)})

    def timeline(
        self, customer_id: str, limit: int = 100, before: Any = None, before_event: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first. Paging: pass the last row's ``occurred_at`` as ``before`` and its
        ``event_id`` as ``before_event`` (events at the same instant are not skipped).

        One statement; copies of a re-delivered event are dropped with ``LIMIT 1 BY
        event_id`` (cheaper here than FINAL, which would merge every part's granules)."""
        sql = f"""
        SELECT event_id, event_type, occurred_at, topic, channel, kind, store_id, order_id, amount, payload
        FROM events
        WHERE person_key IN ({self._KEYS})
          AND ({{before:Nullable(DateTime64(3, 'UTC'))}} IS NULL
               OR (occurred_at, event_id) < ({{before:Nullable(DateTime64(3, 'UTC'))}},
                                            ifNull({{before_event:Nullable(UUID)}}, toUUID('00000000-0000-0000-0000-000000000000'))))
        ORDER BY occurred_at DESC, event_id DESC
        LIMIT 1 BY event_id
        LIMIT {{limit:UInt32}}
        """
        rows = self._rows(sql, cid=customer_id, before=before, before_event=before_event, limit=limit)
        return [{**r, "event_id": str(r["event_id"]), "occurred_at": iso_utc(r["occurred_at"])} for r in rows]

    def customer_summary(self, customer_id: str) -> dict[str, Any] | None:
        keys = self.customer_keys(customer_id)
        profile = self._rows(
            """SELECT customer_id, status, merged_into, gender, birth_year, prefecture, tags,
                      consent_email, consent_sms, consent_line, consent_app_push, consent_postal,
                      channels, first_seen, last_seen
               FROM customers FINAL WHERE customer_id = {cid:UUID}""",
            cid=customer_id,
        )
        facts = self._rows(
            """SELECT countIf(event_type IN ('order.store_completed', 'order.online_completed')) AS orders,
                      sumIf(amount, topic = 'crm.commerce.order') AS revenue,
                      sumIf(amount, event_type = 'member.points_changed') AS points,
                      argMaxIf(kind, occurred_at, event_type = 'member.rank_changed') AS rank_changed_to,
                      argMaxIf(JSONExtractString(payload, 'rank'), occurred_at, event_type = 'member.enrolled')
                          AS enrolled_rank,
                      groupUniqArrayIf(channel, channel != '') AS channels,
                      min(occurred_at) AS first_event, max(occurred_at) AS last_event, count() AS events
               FROM events FINAL WHERE person_key IN {keys:Array(String)}""",
            keys=keys,
        )[0]
        if not profile and facts["events"] == 0:
            return None
        p = profile[0] if profile else {}
        return {
            "customer_id": customer_id,
            "status": p.get("status", "unknown"),
            "merged_into": str(p["merged_into"]) if p.get("merged_into") else None,
            "attributes": {
                "gender": p.get("gender") or "unknown",
                "birth_year": p.get("birth_year"),
                "prefecture": p.get("prefecture") or None,
                "tags": p.get("tags", []),
            },
            "consents": {
                c: bool(p.get(f"consent_{c}")) for c in ("email", "sms", "line", "app_push", "postal")
            },
            "rank": facts["rank_changed_to"] or facts["enrolled_rank"] or None,
            "orders": int(facts["orders"]),
            "revenue": int(facts["revenue"]),
            "points": int(facts["points"]),
            "channels": sorted(facts["channels"]),
            "events": int(facts["events"]),
            "first_event": iso_utc(facts["first_event"]) if facts["events"] else None,
            "last_event": iso_utc(facts["last_event"]) if facts["events"] else None,
            "keys": len(keys),
            "tickets": _ticket_summary(self._client, self._budget, keys),
        }

    def freshness(self) -> dict[str, Any]:
        row = self._rows("SELECT count() AS events, max(ingested_at) AS last_ingested FROM events")[0]
        return {
            "events": int(row["events"]),
            "last_ingested": iso_utc(row["last_ingested"]) if row["events"] else None,
        }


def _ticket_summary(client: Client, budget: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The inquiry history's counts for the 360 (analytics.support_queries)."""
    from analytics.support_queries import SupportQueries

    found = SupportQueries(client, budget).customer_tickets(keys, limit=5)
    return {k: found[k] for k in ("total", "open", "complaints", "last_opened_at")} | {
        "latest": found["tickets"]
    }


def iso_utc(value: datetime) -> str:
    """An instant as ISO 8601 in UTC with ``Z`` (ClickHouse hands back naive UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def buckets(start: date, end: date, interval: str) -> list[tuple[date, date]]:
    """``[start, end)`` cut into days, weeks (Monday) or months: each bucket's first day
    and its end, clipped to the period."""
    out: list[tuple[date, date]] = []
    lo = start
    while lo < end:
        if interval == "day":
            hi = lo + timedelta(days=1)
        elif interval == "week":
            hi = lo + timedelta(days=7 - lo.weekday())
        else:
            hi = date(lo.year + lo.month // 12, lo.month % 12 + 1, 1)
        out.append((lo, min(hi, end)))
        lo = hi
    return out


def bucket_label(day: date, interval: str) -> date:
    """The first day of ``day``'s bucket, as the summed series label theirs."""
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1) if interval == "month" else day


def cohort_periods(start: date, end: date, grain: str) -> tuple[date, int]:
    """The first cohort's month (ISO week) and how many months (weeks) there are from it
    up to the one holding the day before ``end``."""
    last = end - timedelta(days=1)
    if grain == "month":
        first = start.replace(day=1)
        return first, (last.year - first.year) * 12 + last.month - first.month + 1
    first = start - timedelta(days=start.weekday())
    return first, (last - first).days // 7 + 1


def _band(column: str) -> str:
    """The price band of a unit price: 0 below the first bound, one more per bound reached."""
    return " + ".join(f"({column} >= {b})" for b in PRICE_BANDS)


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if not denominator else round(numerator / denominator, 6)


def _num(value: Any) -> float | int:
    if isinstance(value, int):
        return value
    return round(float(value), 6)
