-- hexwatch storage, PostgreSQL: the same tables and columns as the SQLite
-- schema (../sqlite), so the README's queries work on both. Times are unix
-- milliseconds (BIGINT), JSON is kept as text exactly as rules and receivers see it.
CREATE TABLE IF NOT EXISTS events (
    seq         BIGSERIAL PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    received_at BIGINT NOT NULL,
    event_time  TEXT NOT NULL,
    action      TEXT NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_received_at ON events(received_at);

CREATE TABLE IF NOT EXISTS quarantine (
    id           BIGSERIAL PRIMARY KEY,
    received_at  BIGINT NOT NULL,
    record_index BIGINT,
    line         BIGINT,
    reason       TEXT NOT NULL,
    raw          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_received_at ON quarantine(received_at);

CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    seq  BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS watermarks (
    name TEXT PRIMARY KEY,
    ms   BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS state_counters (
    key        TEXT PRIMARY KEY,
    value      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS state_sets (
    key        TEXT NOT NULL,
    member     TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE TABLE IF NOT EXISTS state_kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS alerts (
    alert_id       TEXT PRIMARY KEY,
    rule_id        TEXT NOT NULL,
    type           TEXT NOT NULL,
    dedup          TEXT NOT NULL,
    severity       TEXT NOT NULL,
    title          TEXT NOT NULL,
    created        BOOLEAN NOT NULL,
    threshold      BIGINT NOT NULL,
    window_start   BIGINT NOT NULL,
    window_end     BIGINT NOT NULL,
    last_event_ms  BIGINT NOT NULL,
    event_count    BIGINT NOT NULL,
    created_at     TEXT NOT NULL,
    first_event_at TEXT NOT NULL,
    last_event_at  TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    alert          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_window ON alerts(rule_id, type, dedup, window_start);

CREATE TABLE IF NOT EXISTS deliveries (
    id              BIGSERIAL PRIMARY KEY,
    alert_id        TEXT NOT NULL REFERENCES alerts(alert_id),
    destination     TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    queued_at       BIGINT,
    updated_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (alert_id, destination)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, status, next_attempt_at);
