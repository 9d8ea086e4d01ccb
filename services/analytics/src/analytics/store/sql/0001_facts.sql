-- The fact tables, and how raw Kafka records become facts.
--
-- The sink inserts each batch of validated records, as they came off Kafka, into the
-- Null-engine queues below; materialised views parse them into the fact tables inside
-- ClickHouse (the pattern of ClickHouse's own Kafka engine), so the sink's Python does
-- no per-field work. Every fact table is a ReplacingMergeTree whose sort key is made
-- of the event's own fields with event_id last: a record delivered twice has the same
-- sort key and collapses, and queries read with FINAL, so a retry never counts twice.

CREATE TABLE IF NOT EXISTS events_queue
(
    topic LowCardinality(String),
    partition UInt32,
    offset UInt64,
    raw String
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
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (person_key, occurred_at, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_mv TO events AS
WITH JSONExtractString(raw, 'event_type') AS _type
SELECT
    toUUID(JSONExtractString(raw, 'event_id')) AS event_id,
    _type AS event_type,
    toUInt16(JSONExtractUInt(raw, 'schema_version')) AS schema_version,
    parseDateTime64BestEffort(JSONExtractString(raw, 'occurred_at'), 3, 'UTC') AS occurred_at,
    parseDateTime64BestEffort(JSONExtractString(raw, 'recorded_at'), 3, 'UTC') AS recorded_at,
    JSONExtractString(raw, 'producer') AS producer,
    topic,
    JSONExtractString(raw, 'customer_key') AS person_key,
    arrayMap(i -> JSONExtractString(i, 'hash'), JSONExtractArrayRaw(raw, 'identifiers')) AS identifiers,
    if(_type = 'order.store_completed', 'store', JSONExtractString(raw, 'payload', 'channel')) AS channel,
    multiIf(
        _type = 'order.returned', JSONExtractString(raw, 'payload', 'kind'),
        _type = 'member.points_changed', JSONExtractString(raw, 'payload', 'reason'),
        _type = 'member.rank_changed', JSONExtractString(raw, 'payload', 'rank'),
        JSONExtractString(raw, 'payload', 'kind')
    ) AS kind,
    JSONExtractString(raw, 'payload', 'store_id') AS store_id,
    if(_type = 'order.returned', JSONExtractString(raw, 'payload', 'original_order_id'),
       JSONExtractString(raw, 'payload', 'order_id')) AS order_id,
    multiIf(
        _type IN ('order.store_completed', 'order.online_completed'), JSONExtractInt(raw, 'payload', 'total'),
        _type = 'order.returned', -JSONExtractInt(raw, 'payload', 'refund_total'),
        _type = 'member.points_changed', JSONExtractInt(raw, 'payload', 'points'),
        0
    ) AS amount,
    JSONExtractRaw(raw, 'payload') AS payload
FROM events_queue
WHERE topic NOT LIKE '%crm.identity.profile';

-- Purchases, returns and cancellations: what every commerce KPI reads. Much smaller
-- than events (no interactions, no payload), sorted by person for per-customer scans.
CREATE TABLE IF NOT EXISTS orders
(
    event_id UUID,
    person_key String,
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
    max_unit_price UInt32
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (person_key, day, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS orders_mv TO orders AS
WITH
    JSONExtractString(raw, 'event_type') AS _type,
    JSONExtractArrayRaw(raw, 'payload', 'lines') AS _lines,
    parseDateTime64BestEffort(JSONExtractString(raw, 'occurred_at'), 3, 'UTC') AS _at
SELECT
    toUUID(JSONExtractString(raw, 'event_id')) AS event_id,
    JSONExtractString(raw, 'customer_key') AS person_key,
    _at AS occurred_at,
    toDate(_at, 'Asia/Tokyo') AS day,
    if(_type = 'order.returned', JSONExtractString(raw, 'payload', 'kind'), 'order') AS kind,
    if(_type = 'order.store_completed', 'store', JSONExtractString(raw, 'payload', 'channel')) AS channel,
    JSONExtractString(raw, 'payload', 'store_id') AS store_id,
    if(_type = 'order.returned', JSONExtractString(raw, 'payload', 'original_order_id'),
       JSONExtractString(raw, 'payload', 'order_id')) AS order_id,
    if(_type = 'order.returned', -JSONExtractInt(raw, 'payload', 'refund_total'),
       JSONExtractInt(raw, 'payload', 'total')) AS amount,
    toUInt32(arraySum(arrayMap(l -> JSONExtractUInt(l, 'quantity'), _lines))) AS items,
    arrayDistinct(arrayMap(l -> JSONExtractString(l, 'category'), _lines)) AS categories,
    toUInt32(if(_type = 'order.returned', 0, arrayMax(arrayMap(l -> JSONExtractUInt(l, 'unit_price'), _lines))))
        AS max_unit_price
FROM events_queue
WHERE _type IN ('order.store_completed', 'order.online_completed', 'order.returned');
