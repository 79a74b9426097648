-- The evaluator lease (used on PostgreSQL, where replicas share the database;
-- kept here too so both engines have the same tables).
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    -- The holder's server process: a lease whose session is gone is free.
    holder_pid INTEGER,
    expires_at INTEGER NOT NULL
);
