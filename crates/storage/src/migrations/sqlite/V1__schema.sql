-- hexwatch storage, SQLite. The README documents these tables; the PostgreSQL
-- schema (../postgres) has the same tables and columns.
-- Every accepted record, in arrival order. `key` is the idempotency key.
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    received_at INTEGER NOT NULL,          -- unix milliseconds
    event_time  TEXT NOT NULL,             -- p_event_time
    action      TEXT NOT NULL,
    record      TEXT NOT NULL              -- the record as rules see it (JSON)
);
CREATE INDEX IF NOT EXISTS events_received_at ON events(received_at);

-- Records that did not parse or did not fit Hex.Audit, with the reason.
CREATE TABLE IF NOT EXISTS quarantine (
    id           INTEGER PRIMARY KEY,
    received_at  INTEGER NOT NULL,         -- unix milliseconds
    record_index INTEGER,                  -- position in the request body
    line         INTEGER,                  -- NDJSON line
    reason       TEXT NOT NULL,
    raw          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_received_at ON quarantine(received_at);

-- How far each consumer of the journal has got (the evaluator's cursor).
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);

-- Event-time high-water marks (unix ms): `evaluated` is the latest event time
-- the evaluator has committed. Rule state and alert windows expire on event time,
-- so they are pruned against this mark, never against the wall clock.
CREATE TABLE IF NOT EXISTS watermarks (
    name TEXT PRIMARY KEY,
    ms   INTEGER NOT NULL
);

-- Rule state helpers (SPEC §5). expires_at is in event-time milliseconds.
CREATE TABLE IF NOT EXISTS state_counters (
    key        TEXT PRIMARY KEY,
    value      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS state_sets (
    key        TEXT NOT NULL,
    member     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE TABLE IF NOT EXISTS state_kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,              -- JSON
    expires_at INTEGER NOT NULL
);

-- Alert windows: one row per (rule, dedup) window; `created` once the
-- threshold is reached. `alert` is the alert JSON as delivered (SPEC §6).
CREATE TABLE IF NOT EXISTS alerts (
    alert_id       TEXT PRIMARY KEY,
    rule_id        TEXT NOT NULL,
    type           TEXT NOT NULL,          -- RULE or RULE_ERROR
    dedup          TEXT NOT NULL,
    severity       TEXT NOT NULL,
    title          TEXT NOT NULL,
    created        INTEGER NOT NULL,       -- 1 once the threshold is reached
    threshold      INTEGER NOT NULL,
    window_start   INTEGER NOT NULL,       -- event time, unix ms
    window_end     INTEGER NOT NULL,
    last_event_ms  INTEGER NOT NULL,
    event_count    INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    first_event_at TEXT NOT NULL,
    last_event_at  TEXT NOT NULL,
    updated_at     INTEGER NOT NULL,       -- wall clock, unix ms
    alert          TEXT NOT NULL           -- JSON
);
CREATE INDEX IF NOT EXISTS alerts_window ON alerts(rule_id, type, dedup, window_start);

-- The delivery outbox: one row per (alert, destination), written in the same
-- transaction as the alert; the dispatcher works through it.
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    alert_id        TEXT NOT NULL REFERENCES alerts(alert_id),
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,         -- pending, delivered, failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,      -- unix ms
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    queued_at       INTEGER,               -- unix ms: created, or re-queued by `hexwatch redeliver`
    updated_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    UNIQUE (alert_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, status, next_attempt_at);
