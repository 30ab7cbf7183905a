-- What each agent made of the central checks assigned to it, as it last
-- reported (ChecksApplied, after every check set it receives): the
-- check's version it holds, and whether it runs it or refused it and why
-- (a CA file it cannot read, a vantage it lacks, a name its own config
-- uses). `check apply` waits for these; `check list` and /vantages show
-- them.
CREATE TABLE agent_checks (
    agent_id    text NOT NULL REFERENCES agents (agent_id) ON DELETE CASCADE,
    check_name  text NOT NULL,
    version     bigint NOT NULL,
    state       text NOT NULL CHECK (state IN ('running', 'refused')),
    reason      text,
    reported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, check_name),
    CHECK ((state = 'refused') = (reason IS NOT NULL))
);

-- The check set version each agent last reported on, and when.
ALTER TABLE agents ADD COLUMN checks_set_version bigint;
ALTER TABLE agents ADD COLUMN checks_reported_at timestamptz;
