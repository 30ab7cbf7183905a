-- Checks defined centrally (`vantage-collector check apply FILE.toml`): the
-- file is the whole set. Each check keeps the [[check]] keys as written
-- (validated by the same rules as an agent's own checks) and a selector of
-- the agents that run it. The set has one version, raised by every apply
-- or delete that changes something; a check's version is the set's when it
-- last changed.
CREATE TABLE central_checks (
    name       text PRIMARY KEY,
    definition jsonb NOT NULL,
    -- {"regions": [...], "agents": [...], "labels": {...}}; empty: every agent.
    selector   jsonb NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE central_check_set (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO central_check_set (version) VALUES (0);
