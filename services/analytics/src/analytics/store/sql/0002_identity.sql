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
    -- what KPI queries join on (see orders.key_hash)
    key_hash UInt64 MATERIALIZED cityHash64(person_key),
    customer_id UUID,
    version UInt64,
    is_deleted UInt8,
    source LowCardinality(String)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (key_hash, person_key);

CREATE MATERIALIZED VIEW IF NOT EXISTS identity_map_profile_mv TO identity_map AS
WITH JSONExtract(
    payload, 'Tuple(customer_id String, status String, merged_into String, identifiers Array(Tuple(kind String, hash String)))'
) AS p
SELECT
    key AS person_key,
    toUUID(if(tupleElement(p, 'status') = 'merged', tupleElement(p, 'merged_into'), tupleElement(p, 'customer_id')))
        AS customer_id,
    toUInt64(toUnixTimestamp64Micro(recorded_at)) AS version,
    toUInt8(tupleElement(p, 'status') = 'erased' AND key != tupleElement(p, 'customer_id')) AS is_deleted,
    'profile' AS source
FROM events_queue
ARRAY JOIN arrayConcat(
    [tupleElement(p, 'customer_id')], arrayMap(i -> tupleElement(i, 'hash'), tupleElement(p, 'identifiers'))
) AS key
WHERE event_type = 'customer.profile_snapshot';

CREATE MATERIALIZED VIEW IF NOT EXISTS identity_map_decisions_mv TO identity_map AS
WITH
    JSONExtract(
        payload,
        'Tuple(customer_id String, survivor_id String, merged_id String, restored_id String, moved Array(Tuple(kind String, hash String)), restored Array(Tuple(kind String, hash String)), linked Array(Tuple(kind String, hash String)), unlinked Array(Tuple(kind String, hash String)), tombstoned Array(Tuple(kind String, hash String)))'
    ) AS p,
    tupleElement(p, 'customer_id') AS _cid,
    tupleElement(p, 'survivor_id') AS _survivor,
    tupleElement(p, 'restored_id') AS _restored
SELECT
    row.1 AS person_key,
    toUUID(row.2) AS customer_id,
    toUInt64(toUnixTimestamp64Micro(recorded_at)) AS version,
    row.3 AS is_deleted,
    'identity' AS source
FROM events_queue
ARRAY JOIN multiIf(
    event_type = 'customer.merged',
        arrayConcat(
            [(tupleElement(p, 'merged_id'), _survivor, toUInt8(0))],
            arrayMap(i -> (tupleElement(i, 'hash'), _survivor, toUInt8(0)), tupleElement(p, 'moved'))),
    event_type = 'customer.merge_undone',
        arrayConcat(
            [(_restored, _restored, toUInt8(0))],
            arrayMap(i -> (tupleElement(i, 'hash'), _restored, toUInt8(0)), tupleElement(p, 'restored'))),
    event_type = 'customer.identifiers_linked',
        arrayMap(i -> (tupleElement(i, 'hash'), _cid, toUInt8(0)), tupleElement(p, 'linked')),
    event_type = 'customer.identifiers_unlinked',
        arrayMap(i -> (tupleElement(i, 'hash'), _cid, toUInt8(1)), tupleElement(p, 'unlinked')),
    event_type = 'customer.erased',
        arrayMap(i -> (tupleElement(i, 'hash'), _cid, toUInt8(1)), tupleElement(p, 'tombstoned')),
    event_type = 'customer.registered',
        [(_cid, _cid, toUInt8(0))],
    CAST([], 'Array(Tuple(String, String, UInt8))')
) AS row
WHERE event_type IN (
    'customer.merged', 'customer.merge_undone', 'customer.identifiers_linked',
    'customer.identifiers_unlinked', 'customer.erased', 'customer.registered'
);

-- The same rows by customer: a customer's keys (the 360 timeline) with a primary-key
-- lookup instead of a scan of the map. Fed from identity_map itself (cascading views),
-- so the re-pointing after a merge reaches it too. Candidates only: a key's current
-- owner is still read from identity_map.
CREATE TABLE IF NOT EXISTS identity_by_customer
(
    customer_id UUID,
    person_key String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (customer_id, person_key)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS identity_by_customer_mv TO identity_by_customer AS
SELECT customer_id, person_key, version FROM identity_map;

-- The current owner of every key, in memory: what queries attribute facts with
-- (joinGet, a hash lookup per key instead of reading and joining the whole map for
-- every query). A key whose owner is gone (unlinked, erased) maps to the nil UUID and
-- stands for itself; a key absent stands for itself too.
--
-- It follows identity_map through the view below, row by row as they are written, and
-- keeps the highest version of each key — the same rule as identity_map's FINAL, so
-- the order rows arrive in does not matter (a late, older decision is ignored). The
-- Join engine keeps its state on disk and reloads it at start. Overwritten rows leave
-- their old copy in memory until the table is rebuilt from identity_map
-- (analytics.store.lookup.rebuild, which the sink runs when it has grown).
CREATE TABLE IF NOT EXISTS identity_lookup
(
    key_hash UInt64,
    customer_id UUID,
    version UInt64
)
ENGINE = Join(ANY, LEFT, key_hash)
SETTINGS join_any_take_last_row = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS identity_lookup_mv TO identity_lookup AS
SELECT key_hash, owner AS customer_id, latest AS version
FROM (
    SELECT
        key_hash,
        argMax(if(is_deleted = 1, toUUID('00000000-0000-0000-0000-000000000000'), customer_id), version) AS owner,
        max(version) AS latest
    FROM identity_map
    GROUP BY key_hash
)
WHERE latest >= ifNull(joinGetOrNull('identity_lookup', 'version', key_hash), 0);

-- The current owner of every key: the table is sorted by key and replaced by version,
-- so FINAL keeps each key's latest row (cheaper than GROUP BY … argMax). Deleted keys
-- (unlinked, erased) are absent: their events stand on their own key, still counted.
CREATE VIEW IF NOT EXISTS identity_current AS
SELECT person_key, key_hash, customer_id
FROM identity_map FINAL
WHERE is_deleted = 0;

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
    JSONExtract(
        payload,
        'Tuple(customer_id String, status String, merged_into String, attributes Tuple(gender String, birth_year Nullable(UInt16), birth_month Nullable(UInt8), prefecture String, tags Array(String)), consents Array(Tuple(channel String, granted Bool)), identifiers Array(Tuple(kind String, hash String)), channels Array(String), first_seen String, last_seen String, events_seen UInt64)'
    ) AS p,
    tupleElement(p, 'attributes') AS a,
    arrayMap(c -> tupleElement(c, 'channel'), arrayFilter(c -> tupleElement(c, 'granted'), tupleElement(p, 'consents')))
        AS _consented
SELECT
    toUUID(tupleElement(p, 'customer_id')) AS customer_id,
    tupleElement(p, 'status') AS status,
    toUUIDOrNull(tupleElement(p, 'merged_into')) AS merged_into,
    tupleElement(a, 'gender') AS gender,
    tupleElement(a, 'birth_year') AS birth_year,
    tupleElement(a, 'birth_month') AS birth_month,
    tupleElement(a, 'prefecture') AS prefecture,
    tupleElement(a, 'tags') AS tags,
    toUInt8(has(_consented, 'email')) AS consent_email,
    toUInt8(has(_consented, 'sms')) AS consent_sms,
    toUInt8(has(_consented, 'line')) AS consent_line,
    toUInt8(has(_consented, 'app_push')) AS consent_app_push,
    toUInt8(has(_consented, 'postal')) AS consent_postal,
    toUInt16(length(tupleElement(p, 'identifiers'))) AS identifier_count,
    tupleElement(p, 'channels') AS channels,
    parseDateTime64BestEffortOrNull(tupleElement(p, 'first_seen'), 3, 'UTC') AS first_seen,
    parseDateTime64BestEffortOrNull(tupleElement(p, 'last_seen'), 3, 'UTC') AS last_seen,
    tupleElement(p, 'events_seen') AS events_seen,
    toUInt64(toUnixTimestamp64Micro(recorded_at)) AS version
FROM events_queue
WHERE event_type = 'customer.profile_snapshot';
