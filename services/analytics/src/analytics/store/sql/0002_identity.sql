-- Who is who: identity_map turns an event's person_key into the customer it belongs to
-- *now*, so a merge or an unmerge re-attributes every past fact at once without
-- rewriting a single event (the pattern of PostHog's person overrides).
--
-- Rows come from the unified-profile topic (every identifier and the customer_id of a
-- customer; a merged customer's id points at its survivor) and from identity's own
-- decisions (merged, merge undone, linked, unlinked, erased). A key's current owner is
-- the row with the highest version (the deciding event's recorded_at, in µs):
-- read it through identity_current, never the raw table.

CREATE TABLE IF NOT EXISTS identity_map
(
    person_key String,
    customer_id UUID,
    version UInt64,
    is_deleted UInt8,
    source LowCardinality(String),
    -- a customer's keys (the 360 timeline) without reading the whole map
    INDEX idx_customer customer_id TYPE bloom_filter GRANULARITY 1
)
ENGINE = ReplacingMergeTree(version)
ORDER BY person_key;

CREATE MATERIALIZED VIEW IF NOT EXISTS identity_map_profile_mv TO identity_map AS
WITH
    JSONExtractString(raw, 'payload', 'status') AS _status,
    JSONExtractString(raw, 'payload', 'customer_id') AS _cid,
    toUInt64(toUnixTimestamp64Micro(parseDateTime64BestEffort(JSONExtractString(raw, 'recorded_at'), 6, 'UTC')))
        AS _v
SELECT
    key AS person_key,
    toUUID(if(_status = 'merged', JSONExtractString(raw, 'payload', 'merged_into'), _cid)) AS customer_id,
    _v AS version,
    toUInt8(_status = 'erased' AND key != _cid) AS is_deleted,
    'profile' AS source
FROM events_queue
ARRAY JOIN arrayConcat(
    [_cid],
    arrayMap(i -> JSONExtractString(i, 'hash'), JSONExtractArrayRaw(raw, 'payload', 'identifiers'))
) AS key
WHERE topic LIKE '%crm.identity.profile' AND raw != '';

CREATE MATERIALIZED VIEW IF NOT EXISTS identity_map_decisions_mv TO identity_map AS
WITH
    JSONExtractString(raw, 'event_type') AS _type,
    toUInt64(toUnixTimestamp64Micro(parseDateTime64BestEffort(JSONExtractString(raw, 'recorded_at'), 6, 'UTC')))
        AS _v,
    JSONExtractString(raw, 'payload', 'survivor_id') AS _survivor,
    JSONExtractString(raw, 'payload', 'customer_id') AS _cid,
    JSONExtractString(raw, 'payload', 'restored_id') AS _restored,
    (i -> JSONExtractString(i, 'hash')) AS _hash
SELECT
    row.1 AS person_key,
    toUUID(row.2) AS customer_id,
    _v AS version,
    row.3 AS is_deleted,
    'identity' AS source
FROM events_queue
ARRAY JOIN multiIf(
    _type = 'customer.merged',
        arrayConcat(
            [(JSONExtractString(raw, 'payload', 'merged_id'), _survivor, toUInt8(0))],
            arrayMap(i -> (JSONExtractString(i, 'hash'), _survivor, toUInt8(0)),
                     JSONExtractArrayRaw(raw, 'payload', 'moved'))),
    _type = 'customer.merge_undone',
        arrayConcat(
            [(_restored, _restored, toUInt8(0))],
            arrayMap(i -> (JSONExtractString(i, 'hash'), _restored, toUInt8(0)),
                     JSONExtractArrayRaw(raw, 'payload', 'restored'))),
    _type = 'customer.identifiers_linked',
        arrayMap(i -> (JSONExtractString(i, 'hash'), _cid, toUInt8(0)), JSONExtractArrayRaw(raw, 'payload', 'linked')),
    _type = 'customer.identifiers_unlinked',
        arrayMap(i -> (JSONExtractString(i, 'hash'), _cid, toUInt8(1)), JSONExtractArrayRaw(raw, 'payload', 'unlinked')),
    _type = 'customer.erased',
        arrayMap(i -> (JSONExtractString(i, 'hash'), _cid, toUInt8(1)), JSONExtractArrayRaw(raw, 'payload', 'tombstoned')),
    _type = 'customer.registered',
        [(_cid, _cid, toUInt8(0))],
    CAST([], 'Array(Tuple(String, String, UInt8))')
) AS row
WHERE topic LIKE '%crm.identity.customer';

-- The current owner of every key. Deleted keys (unlinked, erased) are absent: their
-- events stand on their own key, anonymous but still counted.
CREATE VIEW IF NOT EXISTS identity_current AS
SELECT person_key, customer_id
FROM
(
    SELECT person_key, argMax(customer_id, version) AS customer_id, argMax(is_deleted, version) AS deleted
    FROM identity_map
    GROUP BY person_key
)
WHERE deleted = 0;

-- One row per customer: the non-personal part of the unified profile, latest version.
CREATE TABLE IF NOT EXISTS customers
(
    customer_id UUID,
    status LowCardinality(String),
    merged_into Nullable(UUID),
    gender LowCardinality(String),
    birth_year Nullable(UInt16),
    birth_month Nullable(UInt8),
    prefecture LowCardinality(String),
    tags Array(String),
    consent_email UInt8,
    consent_sms UInt8,
    consent_line UInt8,
    consent_app_push UInt8,
    consent_postal UInt8,
    identifier_count UInt16,
    channels Array(LowCardinality(String)),
    first_seen Nullable(DateTime64(3, 'UTC')),
    last_seen Nullable(DateTime64(3, 'UTC')),
    events_seen UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY customer_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS customers_mv TO customers AS
WITH
    JSONExtractRaw(raw, 'payload') AS _p,
    arrayFilter(c -> JSONExtractBool(c, 'granted'), JSONExtractArrayRaw(_p, 'consents')) AS _granted,
    arrayMap(c -> JSONExtractString(c, 'channel'), _granted) AS _consented
SELECT
    toUUID(JSONExtractString(_p, 'customer_id')) AS customer_id,
    JSONExtractString(_p, 'status') AS status,
    toUUIDOrNull(JSONExtractString(_p, 'merged_into')) AS merged_into,
    JSONExtractString(_p, 'attributes', 'gender') AS gender,
    JSONExtract(_p, 'attributes', 'birth_year', 'Nullable(UInt16)') AS birth_year,
    JSONExtract(_p, 'attributes', 'birth_month', 'Nullable(UInt8)') AS birth_month,
    JSONExtractString(_p, 'attributes', 'prefecture') AS prefecture,
    JSONExtract(_p, 'attributes', 'tags', 'Array(String)') AS tags,
    toUInt8(has(_consented, 'email')) AS consent_email,
    toUInt8(has(_consented, 'sms')) AS consent_sms,
    toUInt8(has(_consented, 'line')) AS consent_line,
    toUInt8(has(_consented, 'app_push')) AS consent_app_push,
    toUInt8(has(_consented, 'postal')) AS consent_postal,
    toUInt16(length(JSONExtractArrayRaw(_p, 'identifiers'))) AS identifier_count,
    JSONExtract(_p, 'channels', 'Array(String)') AS channels,
    parseDateTime64BestEffortOrNull(JSONExtractString(_p, 'first_seen'), 3, 'UTC') AS first_seen,
    parseDateTime64BestEffortOrNull(JSONExtractString(_p, 'last_seen'), 3, 'UTC') AS last_seen,
    JSONExtractUInt(_p, 'events_seen') AS events_seen,
    toUInt64(toUnixTimestamp64Micro(parseDateTime64BestEffort(JSONExtractString(raw, 'recorded_at'), 6, 'UTC')))
        AS version
FROM events_queue
WHERE topic LIKE '%crm.identity.profile' AND raw != '';
