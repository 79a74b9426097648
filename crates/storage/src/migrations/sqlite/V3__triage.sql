-- Triage from the console (or its API): an alert is open until someone
-- acknowledges or resolves it, with who did it, when (unix ms) and a note.
ALTER TABLE alerts ADD COLUMN triage TEXT NOT NULL DEFAULT 'open';
ALTER TABLE alerts ADD COLUMN triage_by TEXT;
ALTER TABLE alerts ADD COLUMN triage_at INTEGER;
ALTER TABLE alerts ADD COLUMN triage_note TEXT;
-- The console lists created alerts newest first.
CREATE INDEX IF NOT EXISTS alerts_created_at ON alerts(created, created_at);
