-- An alert's sample records, apart from its row: a sample never changes once
-- a window takes it, so it is written once, while the row is rewritten with
-- every batch that updates a busy window (it was ten records of about 2 KB).
CREATE TABLE IF NOT EXISTS alert_samples (
    alert_id TEXT NOT NULL,
    idx      INTEGER NOT NULL,        -- 0-based, in the order the window took them
    record   TEXT NOT NULL,           -- the record's JSON
    PRIMARY KEY (alert_id, idx)
);
-- The samples of alerts stored before: they move here; readers take the
-- samples from this table only, so the copies left in old rows' JSON are
-- never read again (the next update of such a row writes it without them).
INSERT OR IGNORE INTO alert_samples (alert_id, idx, record)
    SELECT a.alert_id, e.key, e.value
    FROM alerts a, json_each(a.alert, '$.events') e;
