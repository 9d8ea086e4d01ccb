-- Campaign messages (crm.engagement.message): one row per message event — sent,
-- skipped (with the reason; the holdout is a reason), failed, bounced, opened, clicked,
-- opted out — and one row per launched campaign. Fed like the other facts: views over
-- the queue, sort keys made of the event's own fields with event_id last, read with
-- FINAL, so a record delivered twice never counts twice.
--
-- customer_id is the recipient as the campaign froze it; person_key (the event's
-- customer_key, the same id as text) goes through identity_lookup like every other
-- fact, so conversions are credited to the customer the recipient is *now* (a merge
-- after the send moves the recipient's purchases with them).

CREATE TABLE IF NOT EXISTS messages
(
    event_id UUID,
    event_type LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    day Date,
    campaign_id UUID,
    message_id UUID,
    customer_id UUID,
    person_key String,
    key_hash UInt64,
    channel LowCardinality(String),
    variant LowCardinality(String),
    -- skipped: the reason; failed: the provider's answer; bounced: hard / soft
    reason String,
    link_no UInt16,
    link_host LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (campaign_id, event_type, message_id, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS messages_mv TO messages AS
WITH JSONExtract(
    payload,
    'Tuple(campaign_id String, message_id String, customer_id String, channel Nullable(String), variant Nullable(String), reason Nullable(String), kind Nullable(String), link_no Nullable(UInt16), link_host Nullable(String))'
) AS p
SELECT
    event_id,
    event_type,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    toUUID(tupleElement(p, 'campaign_id')) AS campaign_id,
    toUUID(tupleElement(p, 'message_id')) AS message_id,
    toUUID(tupleElement(p, 'customer_id')) AS customer_id,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    ifNull(tupleElement(p, 'channel'), '') AS channel,
    ifNull(tupleElement(p, 'variant'), '') AS variant,
    if(event_type = 'message.bounced', ifNull(tupleElement(p, 'kind'), ''), ifNull(tupleElement(p, 'reason'), ''))
        AS reason,
    ifNull(tupleElement(p, 'link_no'), 0) AS link_no,
    ifNull(tupleElement(p, 'link_host'), '') AS link_host
FROM events_queue
WHERE event_type IN (
    'message.sent', 'message.skipped', 'message.failed', 'message.bounced',
    'message.opened', 'message.clicked', 'message.opted_out'
);

CREATE TABLE IF NOT EXISTS campaigns
(
    campaign_id UUID,
    event_id UUID,
    launched_at DateTime64(3, 'UTC'),
    name String,
    channels Array(LowCardinality(String)),
    audience String,
    recipients UInt32,
    holdout UInt32,
    holdout_pct Float32,
    variants UInt32,
    send_at DateTime64(3, 'UTC'),
    attribution_days UInt16
)
ENGINE = ReplacingMergeTree
ORDER BY (campaign_id, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS campaigns_mv TO campaigns AS
WITH JSONExtract(
    payload,
    'Tuple(campaign_id String, name String, channels Array(String), audience String, recipients UInt32, holdout UInt32, holdout_pct Float32, variants UInt32, send_at String, attribution_days UInt16)'
) AS p
SELECT
    toUUID(tupleElement(p, 'campaign_id')) AS campaign_id,
    event_id,
    toDateTime64(occurred_at, 3, 'UTC') AS launched_at,
    tupleElement(p, 'name') AS name,
    tupleElement(p, 'channels') AS channels,
    tupleElement(p, 'audience') AS audience,
    tupleElement(p, 'recipients') AS recipients,
    tupleElement(p, 'holdout') AS holdout,
    tupleElement(p, 'holdout_pct') AS holdout_pct,
    tupleElement(p, 'variants') AS variants,
    parseDateTime64BestEffort(tupleElement(p, 'send_at'), 3, 'UTC') AS send_at,
    tupleElement(p, 'attribution_days') AS attribution_days
FROM events_queue
WHERE event_type = 'campaign.launched';
