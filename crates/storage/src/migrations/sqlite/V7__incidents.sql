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
    first_ms       INTEGER NOT NULL,
    last_ms        INTEGER NOT NULL,
    alert_count    INTEGER NOT NULL,
    incident       TEXT NOT NULL,                  -- JSON: rules, tactics, names, destinations
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    notices        INTEGER NOT NULL DEFAULT 0,     -- notifications made so far
    notified       INTEGER NOT NULL DEFAULT 0,     -- members those notifications covered
    notify_at      INTEGER,                        -- when the next one is due, if any
    last_notice_at INTEGER,
    remind_at      INTEGER                         -- reminder while open and unacknowledged
);
CREATE INDEX IF NOT EXISTS incidents_group ON incidents(group_key, last_ms);
CREATE INDEX IF NOT EXISTS incidents_last ON incidents(last_ms);
CREATE INDEX IF NOT EXISTS incidents_notify ON incidents(notify_at);
CREATE INDEX IF NOT EXISTS incidents_remind ON incidents(remind_at);

-- An incident's alerts, in the order they joined.
CREATE TABLE IF NOT EXISTS incident_alerts (
    incident_id TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    alert_id    TEXT NOT NULL UNIQUE,
    PRIMARY KEY (incident_id, idx)
);

-- What people (and hexwatch) did to an incident or an alert, and when.
CREATE TABLE IF NOT EXISTS activity (
    id      INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,                          -- an incident or alert id
    at      INTEGER NOT NULL,
    by_whom TEXT NOT NULL,
    what    TEXT NOT NULL,
    detail  TEXT
);
CREATE INDEX IF NOT EXISTS activity_subject ON activity(subject, id);

-- Silences: matching alerts are recorded, their notifications held back.
CREATE TABLE IF NOT EXISTS silences (
    silence_id      TEXT PRIMARY KEY,
    matchers        TEXT NOT NULL,                  -- JSON
    starts_at       INTEGER NOT NULL,
    ends_at         INTEGER NOT NULL,
    created_by      TEXT NOT NULL,
    comment         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    matched         INTEGER NOT NULL DEFAULT 0,
    last_matched_at INTEGER
);
ALTER TABLE alerts ADD COLUMN silence_id TEXT;

-- The outbox carries incident notifications too: `alert_id` is then the
-- notification's id (its Idempotency-Key), `message` the body to send. SQLite
-- cannot drop a foreign key, so the table is built again without it.
CREATE TABLE deliveries_v7 (
    id              INTEGER PRIMARY KEY,
    alert_id        TEXT NOT NULL,
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    queued_at       INTEGER,
    updated_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    claimed_until   INTEGER,
    incident_id     TEXT,
    message         TEXT,
    UNIQUE (alert_id, destination)
);
INSERT INTO deliveries_v7 (id, alert_id, destination, status, attempts, next_attempt_at,
    last_error, created_at, queued_at, updated_at, delivered_at, claimed_until)
    SELECT id, alert_id, destination, status, attempts, next_attempt_at, last_error,
           created_at, queued_at, updated_at, delivered_at, claimed_until FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v7 RENAME TO deliveries;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_incident ON deliveries(incident_id);
