-- Support tickets (crm.support.ticket): one row per ticket event, what the support KPIs
-- and the customer 360's inquiry history read. Fed like orders: a materialised view over
-- the queue, a ReplacingMergeTree whose sort key is the event's own fields with event_id
-- last, read with FINAL, so a re-delivered record never counts twice. A ticket's state
-- at any instant is folded from its rows (its status at the end of a period is the
-- status of its last status-bearing row before it, by occurred_at then recorded_at).
--
-- No personal data: subjects, bodies and comments stay sealed in events.payload and are
-- not copied here; the person is the event's customer_key (a blind index), attributed to
-- the current customer through identity_lookup like every other fact.

CREATE TABLE IF NOT EXISTS tickets
(
    event_id UUID,
    ticket_id UUID,
    event_type LowCardinality(String),
    person_key String,
    key_hash UInt64,
    anonymous UInt8,
    occurred_at DateTime64(3, 'UTC'),
    -- when support recorded the change: orders a ticket's changes that share an
    -- instant (opened and resolved at once, as an imported call often is)
    recorded_at DateTime64(6, 'UTC'),
    day Date,
    -- set on ticket.opened (the ticket's own attributes; '' on the other rows)
    channel LowCardinality(String),
    category LowCardinality(String),
    priority LowCardinality(String),
    store_id LowCardinality(String),
    -- the status the event leaves the ticket in: opened → open, status_changed → its
    -- status, resolved → resolved; '' when the event does not change it
    status LowCardinality(String),
    owner String,
    escalated_to String,
    -- first staff reply (ticket.replied) or the resolution's: seconds from opening; -1 none
    first_response_seconds Int64,
    -- ticket.resolved: seconds from opening, time spent pending excluded; -1 otherwise
    resolution_seconds Int64,
    -- ticket.resolved: 1 both SLA targets met, 0 not; -1 otherwise
    sla_met Int8,
    -- ticket.rated: CSAT 1..5; 0 otherwise
    satisfaction UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (day, ticket_id, occurred_at, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS tickets_mv TO tickets AS
WITH JSONExtract(
    payload,
    'Tuple(ticket_id String, channel String, category String, priority String, store_id String, status String, owner String, escalated_to String, first_response_seconds Nullable(Int64), resolution_seconds Nullable(Int64), sla_met Nullable(Bool), satisfaction Nullable(UInt8))'
) AS p
SELECT
    event_id,
    toUUID(tupleElement(p, 'ticket_id')) AS ticket_id,
    event_type,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    toUInt8(startsWith(customer_key, 'anonymous:')) AS anonymous,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDateTime64(recorded_at, 6, 'UTC') AS recorded_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    if(event_type = 'ticket.opened', tupleElement(p, 'channel'), '') AS channel,
    if(event_type = 'ticket.opened', tupleElement(p, 'category'), '') AS category,
    if(event_type = 'ticket.opened', tupleElement(p, 'priority'), '') AS priority,
    if(event_type = 'ticket.opened', tupleElement(p, 'store_id'), '') AS store_id,
    multiIf(
        event_type = 'ticket.opened', 'open',
        event_type = 'ticket.status_changed', tupleElement(p, 'status'),
        event_type = 'ticket.resolved', 'resolved',
        ''
    ) AS status,
    tupleElement(p, 'owner') AS owner,
    tupleElement(p, 'escalated_to') AS escalated_to,
    ifNull(tupleElement(p, 'first_response_seconds'), -1) AS first_response_seconds,
    if(event_type = 'ticket.resolved', ifNull(tupleElement(p, 'resolution_seconds'), -1), -1) AS resolution_seconds,
    if(event_type = 'ticket.resolved', toInt8(ifNull(tupleElement(p, 'sla_met'), false)), toInt8(-1)) AS sla_met,
    if(event_type = 'ticket.rated', ifNull(tupleElement(p, 'satisfaction'), 0), 0) AS satisfaction
FROM events_queue
WHERE event_type LIKE 'ticket.%';

-- Ticket events recorded before this migration: from the payloads events keeps.
INSERT INTO tickets
WITH JSONExtract(
    payload,
    'Tuple(ticket_id String, channel String, category String, priority String, store_id String, status String, owner String, escalated_to String, first_response_seconds Nullable(Int64), resolution_seconds Nullable(Int64), sla_met Nullable(Bool), satisfaction Nullable(UInt8))'
) AS p
SELECT
    event_id,
    toUUID(tupleElement(p, 'ticket_id')) AS ticket_id,
    event_type,
    person_key,
    cityHash64(person_key) AS key_hash,
    toUInt8(startsWith(person_key, 'anonymous:')) AS anonymous,
    occurred_at,
    recorded_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    if(event_type = 'ticket.opened', tupleElement(p, 'channel'), '') AS channel,
    if(event_type = 'ticket.opened', tupleElement(p, 'category'), '') AS category,
    if(event_type = 'ticket.opened', tupleElement(p, 'priority'), '') AS priority,
    if(event_type = 'ticket.opened', tupleElement(p, 'store_id'), '') AS store_id,
    multiIf(
        event_type = 'ticket.opened', 'open',
        event_type = 'ticket.status_changed', tupleElement(p, 'status'),
        event_type = 'ticket.resolved', 'resolved',
        ''
    ) AS status,
    tupleElement(p, 'owner') AS owner,
    tupleElement(p, 'escalated_to') AS escalated_to,
    ifNull(tupleElement(p, 'first_response_seconds'), -1) AS first_response_seconds,
    if(event_type = 'ticket.resolved', ifNull(tupleElement(p, 'resolution_seconds'), -1), -1) AS resolution_seconds,
    if(event_type = 'ticket.resolved', toInt8(ifNull(tupleElement(p, 'sla_met'), false)), toInt8(-1)) AS sla_met,
    if(event_type = 'ticket.rated', ifNull(tupleElement(p, 'satisfaction'), 0), 0) AS satisfaction
FROM events
WHERE event_type LIKE 'ticket.%';

-- For BI tools: ticket events of the current customer, no identifiers, no content.
CREATE VIEW IF NOT EXISTS bi_tickets DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT
    t.event_id AS event_id,
    t.ticket_id AS ticket_id,
    t.event_type AS event_type,
    nullIf(joinGetOrNull('identity_lookup', 'customer_id', t.key_hash),
           toUUID('00000000-0000-0000-0000-000000000000')) AS customer_id,
    t.occurred_at AS occurred_at,
    t.day AS day,
    t.channel AS channel,
    t.category AS category,
    t.priority AS priority,
    t.store_id AS store_id,
    t.status AS status,
    t.escalated_to AS escalated_to,
    t.first_response_seconds AS first_response_seconds,
    t.resolution_seconds AS resolution_seconds,
    t.sla_met AS sla_met,
    t.satisfaction AS satisfaction
FROM tickets AS t FINAL;
