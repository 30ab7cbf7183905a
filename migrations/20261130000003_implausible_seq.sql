-- implausible_seq: a result the collector refused because its sequence
-- number is far beyond any its agent can have given (a forged or corrupted
-- result: see vantage_proto::plausible_seq_ceiling). Recorded as a gap so
-- the refusal is visible; it never advances the agent's progress.
ALTER TABLE delivery_gaps DROP CONSTRAINT delivery_gaps_reason_check;
ALTER TABLE delivery_gaps ADD CONSTRAINT delivery_gaps_reason_check
    CHECK (reason IN ('spool_full', 'spool_age', 'spool_corrupt', 'spool_unreadable',
                      'memory_full', 'rejected', 'timestamp_skew', 'agent_crash',
                      'implausible_seq'));
