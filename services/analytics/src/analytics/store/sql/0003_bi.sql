-- Views for BI tools. They hold no personal data: pseudonymous customer_ids, facts and
-- non-personal attributes only — no identifiers, no payloads (a payload may carry a
-- sealed field or a search query). Every figure is attributed to the current customer.
-- docs/analytics.md documents them; a server deployment grants a read-only role on
-- exactly these (see `python -m analytics render-roles`): the views run with their
-- definer's rights (SQL SECURITY DEFINER), so the role needs no grant on the tables.

CREATE VIEW IF NOT EXISTS bi_orders DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT
    o.event_id AS event_id,
    nullIf(joinGetOrNull('identity_lookup', 'customer_id', o.key_hash),
           toUUID('00000000-0000-0000-0000-000000000000')) AS customer_id,
    o.occurred_at AS occurred_at,
    o.day AS day,
    o.kind AS kind,
    o.channel AS channel,
    o.store_id AS store_id,
    o.order_id AS order_id,
    o.amount AS amount,
    o.items AS items,
    o.categories AS categories,
    o.max_unit_price AS max_unit_price
FROM orders AS o FINAL;

CREATE VIEW IF NOT EXISTS bi_events DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT
    e.event_id AS event_id,
    e.event_type AS event_type,
    nullIf(joinGetOrNull('identity_lookup', 'customer_id', cityHash64(e.person_key)),
           toUUID('00000000-0000-0000-0000-000000000000')) AS customer_id,
    e.occurred_at AS occurred_at,
    e.topic AS topic,
    e.channel AS channel,
    e.kind AS kind,
    e.store_id AS store_id,
    e.amount AS amount
FROM events AS e FINAL;

CREATE VIEW IF NOT EXISTS bi_customers DEFINER = CURRENT_USER SQL SECURITY DEFINER AS
SELECT
    customer_id,
    status,
    merged_into,
    gender,
    multiIf(
        birth_year IS NULL, 'unknown',
        toYear(now()) - birth_year < 20, '<20',
        toYear(now()) - birth_year >= 70, '70+',
        concat(toString(intDiv(toYear(now()) - birth_year, 10) * 10), 's')
    ) AS age_band,
    prefecture,
    tags,
    consent_email,
    consent_sms,
    consent_line,
    consent_app_push,
    consent_postal,
    channels,
    first_seen,
    last_seen
FROM customers FINAL;
