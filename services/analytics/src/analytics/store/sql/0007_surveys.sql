-- Surveys and forms (topic crm.engagement.form): survey invitations and answers, form
-- submissions and event registrations, as facts fed from the queue like orders are.
-- Every table is a ReplacingMergeTree whose sort key is made of the event's own fields
-- with event_id last (then the question, for answers): a re-delivered record has the
-- same sort key and collapses; queries read with FINAL. Keys are attributed to the
-- current customer at query time through identity_lookup, like every other KPI.
-- Free text is not here: the events carry its length only.

-- One row per answered question of every response.
CREATE TABLE IF NOT EXISTS survey_answers
(
    event_id UUID,
    survey_id UUID,
    survey_version UInt16,
    response_id UUID,
    -- 1 when answered through an invitation (the response rate's numerator)
    invited UInt8,
    person_key String,
    key_hash UInt64,
    anonymous UInt8,
    occurred_at DateTime64(3, 'UTC'),
    day Date,
    -- 'invitation' or 'link' (anonymous)
    channel LowCardinality(String),
    question_id LowCardinality(String),
    -- nps | csat | single_choice | multiple_choice | free_text
    kind LowCardinality(String),
    -- NPS 0-10, CSAT 1-5; NULL for other kinds
    score Nullable(UInt8),
    choices Array(LowCardinality(String)),
    text_length Nullable(UInt32)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (survey_id, day, key_hash, event_id, question_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS survey_answers_mv TO survey_answers AS
WITH JSONExtract(
    payload,
    'Tuple(survey_id UUID, survey_version UInt16, response_id UUID, invitation_id Nullable(String), anonymous Bool, channel String, answers Array(Tuple(question_id String, kind String, score Nullable(UInt8), choices Array(String), text_length Nullable(UInt32))))'
) AS p
SELECT
    event_id,
    tupleElement(p, 'survey_id') AS survey_id,
    tupleElement(p, 'survey_version') AS survey_version,
    tupleElement(p, 'response_id') AS response_id,
    toUInt8(isNotNull(tupleElement(p, 'invitation_id'))) AS invited,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    toUInt8(startsWith(customer_key, 'anonymous:')) AS anonymous,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    tupleElement(p, 'channel') AS channel,
    tupleElement(a, 'question_id') AS question_id,
    tupleElement(a, 'kind') AS kind,
    tupleElement(a, 'score') AS score,
    tupleElement(a, 'choices') AS choices,
    tupleElement(a, 'text_length') AS text_length
FROM events_queue
ARRAY JOIN tupleElement(p, 'answers') AS a
WHERE event_type = 'survey.answered';

-- One row per invitation (the response rate's denominator).
CREATE TABLE IF NOT EXISTS survey_invitations
(
    event_id UUID,
    survey_id UUID,
    invitation_id UUID,
    person_key String,
    key_hash UInt64,
    occurred_at DateTime64(3, 'UTC'),
    day Date,
    -- 'segment:<name>' or 'customers'
    audience LowCardinality(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (survey_id, day, key_hash, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS survey_invitations_mv TO survey_invitations AS
WITH JSONExtract(payload, 'Tuple(survey_id UUID, invitation_id UUID, audience String)') AS p
SELECT
    event_id,
    tupleElement(p, 'survey_id') AS survey_id,
    tupleElement(p, 'invitation_id') AS invitation_id,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    tupleElement(p, 'audience') AS audience
FROM events_queue
WHERE event_type = 'survey.invited';

-- One row per form submission, with the consent it recorded.
CREATE TABLE IF NOT EXISTS form_submissions
(
    event_id UUID,
    form_id UUID,
    form_kind LowCardinality(String),
    submission_id UUID,
    person_key String,
    key_hash UInt64,
    occurred_at DateTime64(3, 'UTC'),
    day Date,
    -- identity's answer: created (a new customer: a sign-up) | linked | matched | merged
    outcome LowCardinality(String),
    consent_purpose LowCardinality(String),
    consent_wording_version LowCardinality(String),
    -- per channel: 1 granted, 0 refused, NULL not asked
    consent_email Nullable(UInt8),
    consent_sms Nullable(UInt8),
    consent_line Nullable(UInt8),
    consent_app_push Nullable(UInt8),
    consent_postal Nullable(UInt8)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (form_id, day, key_hash, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS form_submissions_mv TO form_submissions AS
WITH JSONExtract(
    payload,
    'Tuple(form_id UUID, form_kind String, submission_id UUID, outcome String, consent Tuple(purpose String, wording_version String, email Nullable(Bool), sms Nullable(Bool), line Nullable(Bool), app_push Nullable(Bool), postal Nullable(Bool)))'
) AS p,
tupleElement(p, 'consent') AS c
SELECT
    event_id,
    tupleElement(p, 'form_id') AS form_id,
    tupleElement(p, 'form_kind') AS form_kind,
    tupleElement(p, 'submission_id') AS submission_id,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    tupleElement(p, 'outcome') AS outcome,
    tupleElement(c, 'purpose') AS consent_purpose,
    tupleElement(c, 'wording_version') AS consent_wording_version,
    CAST(tupleElement(c, 'email'), 'Nullable(UInt8)') AS consent_email,
    CAST(tupleElement(c, 'sms'), 'Nullable(UInt8)') AS consent_sms,
    CAST(tupleElement(c, 'line'), 'Nullable(UInt8)') AS consent_line,
    CAST(tupleElement(c, 'app_push'), 'Nullable(UInt8)') AS consent_app_push,
    CAST(tupleElement(c, 'postal'), 'Nullable(UInt8)') AS consent_postal
FROM events_queue
WHERE event_type = 'form.submitted';

-- Event/seminar registrations and their changes: a submission's current status is its
-- latest row (confirmed / waitlisted, then cancelled or promoted to confirmed).
CREATE TABLE IF NOT EXISTS form_registrations
(
    event_id UUID,
    form_id UUID,
    submission_id UUID,
    person_key String,
    key_hash UInt64,
    occurred_at DateTime64(3, 'UTC'),
    day Date,
    status LowCardinality(String),
    -- registered | promoted_from_waitlist | cancelled
    reason LowCardinality(String),
    -- the event's places (0 on a change: read it from the registrations)
    capacity UInt32
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (form_id, day, key_hash, event_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS form_registrations_mv TO form_registrations AS
WITH JSONExtract(
    payload, 'Tuple(form_id UUID, submission_id UUID, status String, reason String, capacity UInt32)'
) AS p
SELECT
    event_id,
    tupleElement(p, 'form_id') AS form_id,
    tupleElement(p, 'submission_id') AS submission_id,
    customer_key AS person_key,
    cityHash64(customer_key) AS key_hash,
    toDateTime64(occurred_at, 3, 'UTC') AS occurred_at,
    toDate(occurred_at, 'Asia/Tokyo') AS day,
    tupleElement(p, 'status') AS status,
    if(event_type = 'form.registered', 'registered', tupleElement(p, 'reason')) AS reason,
    tupleElement(p, 'capacity') AS capacity
FROM events_queue
WHERE event_type IN ('form.registered', 'form.registration_changed');
