-- The control plane: which check version a result ran, one-off probes
-- asked for by `vantage-collector probe` or by the detector (confirmation
-- probes), and what agents announce they can do.

-- The version of a check assigned by the collector (central_checks.version
-- when it last changed); NULL for a check of the agent's own config.
ALTER TABLE probe_results ADD COLUMN check_version bigint;
-- The probe request a one-off result answers; NULL for scheduled probes.
-- The detector's statistics count scheduled probes and confirmation
-- probes only.
ALTER TABLE probe_results ADD COLUMN request_id bigint;

CREATE TABLE probe_requests (
    id           bigserial PRIMARY KEY,
    -- 'manual': `vantage-collector probe`; 'confirmation': the detector,
    -- for a candidate segment it holds.
    purpose      text NOT NULL CHECK (purpose IN ('manual', 'confirmation')),
    -- A check the agents run (by name), or a definition of its own.
    check_name   text,
    definition   jsonb,
    CHECK ((check_name IS NULL) <> (definition IS NULL)),
    -- {"regions": [...], "agents": [...], "vantages": [...]}: who probes;
    -- or, for confirmation probes, the (agent, vantage) pairs asked.
    selector     jsonb NOT NULL DEFAULT '{}',
    resolvers    text[] NOT NULL DEFAULT '{}',
    dial_each    boolean NOT NULL DEFAULT false,
    -- Confirmation probes: the candidate they test (target, dimension,
    -- segment), as the detector's findings name it.
    candidate    jsonb,
    requested_at timestamptz NOT NULL DEFAULT now()
);

-- Each agent a request was sent to, and its answer.
CREATE TABLE probe_request_agents (
    request_id bigint NOT NULL REFERENCES probe_requests (id) ON DELETE CASCADE,
    agent_id   text NOT NULL,
    vantages   text[] NOT NULL DEFAULT '{}',
    sent_at    timestamptz NOT NULL DEFAULT now(),
    done_at    timestamptz,
    -- Results the agent made (they arrive through its spool like any).
    results    integer,
    error      text,
    PRIMARY KEY (request_id, agent_id)
);

-- What the agent said in its last Hello: capabilities and vantages.
ALTER TABLE agents ADD COLUMN capabilities text[] NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN vantages jsonb NOT NULL DEFAULT '[]';
