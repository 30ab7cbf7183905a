-- Delivery: enrolled agents only, and loss recorded where operators see it.

-- Enrolment (`vantage-collector agent add|list|revoke`). An agent connects
-- with the token printed at enrolment; only its SHA-256 is stored. The token
-- is 256 random bits, so a fast hash is enough: there is nothing to guess.
ALTER TABLE agents
    ADD COLUMN token_sha256 text UNIQUE,
    ADD COLUMN enrolled_at  timestamptz,
    ADD COLUMN revoked_at   timestamptz;

COMMENT ON COLUMN agents.region IS
    'The region given at enrolment; a vantage''s region overrides it per result.';

-- Results an agent produced and never delivered, and why: spool_full and
-- spool_age (the agent's spool bound dropped the oldest), spool_corrupt
-- (records it could not read back), spool_unreadable (a spool file it could
-- not open; count unknown), memory_full (the in-memory fallback overflowed),
-- rejected (a batch the collector refused as invalid, quarantined by the
-- agent), timestamp_skew (results the collector refused one by one),
-- agent_crash (the agent was killed: numbers it had leased and not synced;
-- count unknown, and the range may include numbers never used).
CREATE TABLE delivery_gaps (
    agent_id    text NOT NULL REFERENCES agents (agent_id),
    first_seq   bigint NOT NULL,
    last_seq    bigint NOT NULL,
    -- NULL: unknown (the agent could not read what it lost).
    count       bigint,
    reason      text NOT NULL CHECK (reason IN ('spool_full', 'spool_age', 'spool_corrupt',
                                                'spool_unreadable', 'memory_full', 'rejected',
                                                'timestamp_skew', 'agent_crash')),
    detected_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CHECK (first_seq <= last_seq),
    PRIMARY KEY (agent_id, first_seq, reason)
);

-- Loss per agent and reason, newest first.
CREATE VIEW v_delivery_gaps AS
SELECT agent_id, reason, first_seq, last_seq, count, detected_at, received_at
FROM delivery_gaps
ORDER BY detected_at DESC;
