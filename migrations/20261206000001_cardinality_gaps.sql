-- cardinality: a result the collector refused because its vantage or check
-- name would take its agent past the cap on distinct names
-- (ingest.max_vantages_per_agent, ingest.max_checks_per_agent): one agent
-- cannot grow the tables, the pages and the detector's window without
-- bound. Recorded as a gap so the refusal is visible.
ALTER TABLE delivery_gaps DROP CONSTRAINT delivery_gaps_reason_check;
ALTER TABLE delivery_gaps ADD CONSTRAINT delivery_gaps_reason_check
    CHECK (reason IN ('spool_full', 'spool_age', 'spool_corrupt', 'spool_unreadable',
                      'memory_full', 'rejected', 'timestamp_skew', 'agent_crash',
                      'implausible_seq', 'cardinality'));
