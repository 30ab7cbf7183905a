-- Rounds each asked vantage runs, one after the other (confirmation
-- probes ask for two: what the scheduled rounds would give a round later).
ALTER TABLE probe_requests ADD COLUMN rounds integer NOT NULL DEFAULT 1
    CHECK (rounds BETWEEN 1 AND 10);
