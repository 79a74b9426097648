-- The evaluator lease: who holds it and until when (unix ms, the database's
-- clock). A holder renews it with every commit and while idle; a holder that
-- stops making progress loses it when it runs out.
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    -- The holder's server process: a lease whose session is gone is free.
    holder_pid BIGINT,
    expires_at BIGINT NOT NULL
);
