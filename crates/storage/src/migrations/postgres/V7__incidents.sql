-- Incidents: every created alert joins one, keyed by whom (or what) it is
-- about; the evaluator that holds the lease decides membership, in the same
-- transaction as the alert. Times: `*_ms` event time, `*_at` wall clock, unix ms.
CREATE TABLE IF NOT EXISTS incidents (
    incident_id    TEXT PRIMARY KEY,
    group_key      TEXT NOT NULL,
    severity       TEXT NOT NULL,
    title          TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',  -- open, acknowledged, resolved
    resolution     TEXT,                           -- e.g. false_positive
    assignee       TEXT,
    first_ms       BIGINT NOT NULL,
    last_ms        BIGINT NOT NULL,
    alert_count    BIGINT NOT NULL,
    incident       TEXT NOT NULL,                  -- JSON: rules, tactics, names, destinations
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    notices        BIGINT NOT NULL DEFAULT 0,     -- notifications made so far
    notified       BIGINT NOT NULL DEFAULT 0,     -- members those notifications covered
    notify_at      BIGINT,                        -- when the next one is due, if any
    last_notice_at BIGINT,
    remind_at      BIGINT                         -- reminder while open and unacknowledged
);
CREATE INDEX IF NOT EXISTS incidents_group ON incidents(group_key, last_ms);
CREATE INDEX IF NOT EXISTS incidents_last ON incidents(last_ms);
CREATE INDEX IF NOT EXISTS incidents_notify ON incidents(notify_at);
CREATE INDEX IF NOT EXISTS incidents_remind ON incidents(remind_at);

-- An incident's alerts, in the order they joined.
CREATE TABLE IF NOT EXISTS incident_alerts (
    incident_id TEXT NOT NULL,
    idx         BIGINT NOT NULL,
    alert_id    TEXT NOT NULL UNIQUE,
    PRIMARY KEY (incident_id, idx)
);

-- What people (and hexwatch) did to an incident or an alert, and when.
CREATE TABLE IF NOT EXISTS activity (
    id      BIGSERIAL PRIMARY KEY,
    subject TEXT NOT NULL,                          -- an incident or alert id
    at      BIGINT NOT NULL,
    by_whom TEXT NOT NULL,
    what    TEXT NOT NULL,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS activity_subject ON activity(subject, id);

-- Silences: matching alerts are recorded, their notifications held back.
CREATE TABLE IF NOT EXISTS silences (
    silence_id      TEXT PRIMARY KEY,
    matchers        TEXT NOT NULL,                  -- JSON
    starts_at       BIGINT NOT NULL,
    ends_at         BIGINT NOT NULL,
    created_by      TEXT NOT NULL,
    comment         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    matched         BIGINT NOT NULL DEFAULT 0,
    last_matched_at BIGINT
);
ALTER TABLE alerts ADD COLUMN silence_id TEXT;

-- The outbox carries incident notifications too: `alert_id` is then the
-- notification's id (its Idempotency-Key), `message` the body to send.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_alert_id_fkey;
ALTER TABLE deliveries ADD COLUMN incident_id TEXT;
ALTER TABLE deliveries ADD COLUMN message TEXT;
CREATE INDEX IF NOT EXISTS deliveries_incident ON deliveries(incident_id);
