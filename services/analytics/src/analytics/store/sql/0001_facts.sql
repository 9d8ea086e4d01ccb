-- The fact tables, and how records become facts.
--
-- The sink inserts each batch of validated records as they came off Kafka — JSON lines
-- (JSONEachRow), with the topic added as `_topic` — into the Null-engine queue below.
-- ClickHouse parses them natively (one pass per record: the envelope into columns, the
-- payload kept as its JSON text), and materialised views turn the queue's rows into
-- the fact tables, extracting what they need from the payload in one JSONExtract each
-- (the pattern of ClickHouse's own Kafka engine). The sink's Python does no per-field
-- work. Every fact table is a ReplacingMergeTree whose sort key is made of the event's
-- own fields with event_id last: a record delivered twice has the same sort key and
-- collapses, and queries read with FINAL, so a retry never counts twice.

CREATE TABLE IF NOT EXISTS events_queue
(
    _topic LowCardinality(String),
    event_id UUID,
    event_type LowCardinality(String),
    schema_version UInt16,
    occurred_at DateTime64(6, 'UTC'),
    recorded_at DateTime64(6, 'UTC'),
    producer LowCardinality(String),
    customer_key String,
    identifiers Array(Tuple(kind String, hash String)),
    payload String
)
ENGINE = Null;

-- Every event of every topic: the customer timeline, funnels, anything not modelled yet.
CREATE TABLE IF NOT EXISTS events
(
    event_id UUID,
    event_type LowCardinality(String),
    schema_version UInt16,
    occurred_at DateTime64(3, 'UTC'),
    recorded_at DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    producer LowCardinality(String),
    topic LowCardinality(String),
    -- The event's customer_key: a customer_id, the blind index of the strongest
    -- identifier observed, or "anonymous:…". identity_map turns it into the customer.
    person_key String,
    identifiers Array(String),
    channel LowCardinality(String),
    kind LowCardinality(String),
    store_id LowCardinality(String),
    order_id String,
    amount Int64,
    payload String CODEC(ZSTD(3)),
    INDEX idx_type event_type TYPE set(64) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
-- Yearly partitions and small granules: a customer's timeline is a handful of index
-- probes (one per part) each reading ~1k rows, not 8k rows of payload per month.
PARTITION BY toYear(occurred_at)
ORDER BY (person_key, occurred_at, event_id)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_mv TO events AS
WITH JSONExtract(
    payload,
    'Tuple(channel String, kind String, reason String, rank String, store_id String, order_id String, original_order_id String, total Int64, refund_total Int64, points Int64)'
) AS p
SELECT
    event_id,
    event_type,
    schema_version,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDateTime64(recorded_at, 3, 'UTC') AS recorded_at,
    producer,
    _topic AS topic,
    customer_key AS person_key,
    arrayMap(i -> tupleElement(i, 'hash'), identifiers) AS identifiers,
    if(event_type = 'order.store_completed', 'store', tupleElement(p, 'channel')) AS channel,
    multiIf(
        event_type = 'member.points_changed', tupleElement(p, 'reason'),
        event_type = 'member.rank_changed', tupleElement(p, 'rank'),
        tupleElement(p, 'kind')
    ) AS kind,
    tupleElement(p, 'store_id') AS store_id,
    if(event_type = 'order.returned', tupleElement(p, 'original_order_id'), tupleElement(p, 'order_id')) AS order_id,
    multiIf(
        event_type IN ('order.store_completed', 'order.online_completed'), tupleElement(p, 'total'),
        event_type = 'order.returned', -tupleElement(p, 'refund_total'),
        event_type = 'member.points_changed', tupleElement(p, 'points'),
        0
    ) AS amount,
    payload
FROM events_queue
WHERE event_type != 'customer.profile_snapshot';

-- Purchases, returns and cancellations: what every commerce KPI reads. Much smaller
-- than events (no interactions, no payload). Sorted by day first: a period is a range
-- of the primary key, and parts written one after another cover days one after
-- another, so FINAL only has to merge where parts overlap (the last few days, until
-- ClickHouse merges them) instead of every part's rows.
CREATE TABLE IF NOT EXISTS orders
(
    event_id UUID,
    person_key String,
    -- cityHash64(person_key): KPI queries group and join on this 8-byte key instead of
    -- the 64-character blind index (a collision among millions of keys has a
    -- probability around 1e-7); anonymous sales flagged so the key need not be read
    key_hash UInt64,
    anonymous UInt8,
    occurred_at DateTime64(3, 'UTC'),
    day Date,
    -- 'order' for a purchase, 'return' / 'cancellation' for money given back
    kind LowCardinality(String),
    channel LowCardinality(String),
    store_id LowCardinality(String),
    order_id String,
    -- yen, signed: a purchase adds its total, a return subtracts its refund
    amount Int64,
    items UInt32,
    categories Array(LowCardinality(String)),
    -- the smallest and largest hash of the categories: a customer bought in two or
    -- more categories exactly when their smallest and largest differ (cross-sell),
    -- found without collecting category sets per customer
    category_lo UInt64,
    category_hi UInt64,
    max_unit_price UInt32
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, key_hash, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS orders_mv TO orders AS
WITH JSONExtract(
    payload,
    'Tuple(kind String, channel String, store_id String, order_id String, original_order_id String, total Int64, refund_total Int64, lines Array(Tuple(category String, quantity UInt32, unit_price UInt32)))'
) AS p
SELECT
    event_id,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    toUInt8(startsWith(customer_key, 'anonymous:')) AS anonymous,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    if(event_type = 'order.returned', tupleElement(p, 'kind'), 'order') AS kind,
    if(event_type = 'order.store_completed', 'store', tupleElement(p, 'channel')) AS channel,
    tupleElement(p, 'store_id') AS store_id,
    if(event_type = 'order.returned', tupleElement(p, 'original_order_id'), tupleElement(p, 'order_id')) AS order_id,
    if(event_type = 'order.returned', -tupleElement(p, 'refund_total'), tupleElement(p, 'total')) AS amount,
    toUInt32(arraySum(arrayMap(l -> tupleElement(l, 'quantity'), tupleElement(p, 'lines')))) AS items,
    arrayDistinct(arrayMap(l -> tupleElement(l, 'category'), tupleElement(p, 'lines'))) AS categories,
    arrayMin(arrayMap(l -> cityHash64(tupleElement(l, 'category')), tupleElement(p, 'lines'))) AS category_lo,
    arrayMax(arrayMap(l -> cityHash64(tupleElement(l, 'category')), tupleElement(p, 'lines'))) AS category_hi,
    toUInt32(if(event_type = 'order.returned', 0,
                arrayMax(arrayMap(l -> tupleElement(l, 'unit_price'), tupleElement(p, 'lines'))))) AS max_unit_price
FROM events_queue
WHERE event_type IN ('order.store_completed', 'order.online_completed', 'order.returned');

-- Daily KPI aggregates: sales per day, channel and store, for series and anything
-- additive (revenue, orders, AOV, refunds, anonymous sales) without reading orders.
-- Not fed by a view: a summing view would count a re-delivered record twice. The sink
-- recomputes the days a batch touched from orders (FINAL, a range of its primary key)
-- and the newest computation of a day replaces the older (store/daily.py).
CREATE TABLE IF NOT EXISTS kpi_daily
(
    day Date,
    channel LowCardinality(String),
    store_id LowCardinality(String),
    anonymous UInt8,
    orders UInt64,
    returns UInt64,
    -- yen: purchases' totals, and refunds as a negative sum (revenue = gross + refunds)
    gross Int64,
    refunds Int64,
    items UInt64,
    computed_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (day, channel, store_id, anonymous);
