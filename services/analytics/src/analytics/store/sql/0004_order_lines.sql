-- Order lines: one row per line of every purchase, return and cancellation — what SKU
-- and category analysis reads (best sellers, return rates per product, basket mix).
-- Fed like orders: a materialised view over the queue, sort key ending in
-- (event_id, line_no), read with FINAL, so a re-delivered record never counts twice.
-- Signs follow orders.amount: a return's lines have negative quantity and amount.
-- A line's amount is quantity × unit price − its discount (tax included, as prices are);
-- shipping and order-level discounts belong to the order, so an order's lines need not
-- add up to orders.amount.

CREATE TABLE IF NOT EXISTS order_lines
(
    event_id UUID,
    line_no UInt16,
    person_key String,
    key_hash UInt64,
    anonymous UInt8,
    occurred_at DateTime64(3, 'UTC'),
    day Date,
    -- 'order', or the return's kind: 'return' / 'cancellation'
    kind LowCardinality(String),
    channel LowCardinality(String),
    store_id LowCardinality(String),
    -- the order the line belongs to (a return's original order)
    order_id String,
    sku String,
    category LowCardinality(String),
    quantity Int32,
    -- 0 on a returned line (the refund is its amount)
    unit_price UInt32,
    discount UInt32,
    amount Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, key_hash, event_id, line_no);

CREATE MATERIALIZED VIEW IF NOT EXISTS order_lines_mv TO order_lines AS
WITH
    JSONExtract(
        payload,
        'Tuple(kind String, channel String, store_id String, order_id String, original_order_id String, lines Array(Tuple(line_no UInt16, sku String, category String, quantity Int32, unit_price UInt32, discount UInt32, amount Int64)))'
    ) AS p,
    event_type = 'order.returned' AS is_return
SELECT
    event_id,
    tupleElement(l, 'line_no') AS line_no,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    toUInt8(startsWith(customer_key, 'anonymous:')) AS anonymous,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    if(is_return, tupleElement(p, 'kind'), 'order') AS kind,
    if(event_type = 'order.store_completed', 'store', tupleElement(p, 'channel')) AS channel,
    tupleElement(p, 'store_id') AS store_id,
    if(is_return, tupleElement(p, 'original_order_id'), tupleElement(p, 'order_id')) AS order_id,
    tupleElement(l, 'sku') AS sku,
    tupleElement(l, 'category') AS category,
    if(is_return, -tupleElement(l, 'quantity'), tupleElement(l, 'quantity')) AS quantity,
    if(is_return, 0, tupleElement(l, 'unit_price')) AS unit_price,
    if(is_return, 0, tupleElement(l, 'discount')) AS discount,
    if(is_return, -tupleElement(l, 'amount'),
       toInt64(tupleElement(l, 'quantity')) * tupleElement(l, 'unit_price') - tupleElement(l, 'discount')) AS amount
FROM events_queue
ARRAY JOIN tupleElement(p, 'lines') AS l
WHERE event_type IN ('order.store_completed', 'order.online_completed', 'order.returned');

-- A store that had orders before this migration: their lines from the payloads events
-- keeps (the same fields as the view above reads from the queue). Copies of a record in
-- events collapse in order_lines like any re-delivery.
INSERT INTO order_lines
WITH
    JSONExtract(
        payload,
        'Tuple(kind String, channel String, store_id String, order_id String, original_order_id String, lines Array(Tuple(line_no UInt16, sku String, category String, quantity Int32, unit_price UInt32, discount UInt32, amount Int64)))'
    ) AS p,
    event_type = 'order.returned' AS is_return
SELECT
    event_id,
    tupleElement(l, 'line_no') AS line_no,
    person_key,
    cityHash64(person_key) AS key_hash,
    toUInt8(startsWith(person_key, 'anonymous:')) AS anonymous,
    occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    if(is_return, tupleElement(p, 'kind'), 'order') AS kind,
    if(event_type = 'order.store_completed', 'store', tupleElement(p, 'channel')) AS channel,
    tupleElement(p, 'store_id') AS store_id,
    if(is_return, tupleElement(p, 'original_order_id'), tupleElement(p, 'order_id')) AS order_id,
    tupleElement(l, 'sku') AS sku,
    tupleElement(l, 'category') AS category,
    if(is_return, -tupleElement(l, 'quantity'), tupleElement(l, 'quantity')) AS quantity,
    if(is_return, 0, tupleElement(l, 'unit_price')) AS unit_price,
    if(is_return, 0, tupleElement(l, 'discount')) AS discount,
    if(is_return, -tupleElement(l, 'amount'),
       toInt64(tupleElement(l, 'quantity')) * tupleElement(l, 'unit_price') - tupleElement(l, 'discount')) AS amount
FROM events
ARRAY JOIN tupleElement(p, 'lines') AS l
WHERE event_type IN ('order.store_completed', 'order.online_completed', 'order.returned');

-- For BI tools, like bi_orders: the current customer, no identifiers.
CREATE VIEW IF NOT EXISTS bi_order_lines DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT
    l.event_id AS event_id,
    l.line_no AS line_no,
    nullIf(joinGetOrNull('identity_lookup', 'customer_id', l.key_hash),
           toUUID('00000000-0000-0000-0000-000000000000')) AS customer_id,
    l.occurred_at AS occurred_at,
    l.day AS day,
    l.kind AS kind,
    l.channel AS channel,
    l.store_id AS store_id,
    l.order_id AS order_id,
    l.sku AS sku,
    l.category AS category,
    l.quantity AS quantity,
    l.unit_price AS unit_price,
    l.discount AS discount,
    l.amount AS amount
FROM order_lines AS l FINAL;
