-- Console sessions ended by logging out, until they would have expired: a
-- session cookie is signed, not stored, so ending one takes remembering it.
CREATE TABLE IF NOT EXISTS console_logouts (
    session TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
