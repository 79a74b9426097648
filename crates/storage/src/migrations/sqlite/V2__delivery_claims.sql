-- A delivery being sent is claimed until `claimed_until` (unix ms): another
-- worker (on PostgreSQL, another replica) leaves it alone until then, and takes
-- it over if the claimer died mid-send.
ALTER TABLE deliveries ADD COLUMN claimed_until INTEGER;
