-- Detection: every dimension a failure can follow, the statistics that
-- prove it, incidents that carry their evidence, and the operator views.

-- The address a probe left from, as the rest of the internet saw it: the
-- vantage's IP-echo answer when it has one; else, for a direct probe, the
-- socket's own source address unless it is private (NAT hides it); else
-- the address the collector saw the agent's stream come from.
CREATE FUNCTION probe_egress(echo_ip inet, local_ip inet, proxy text, egress_ip inet)
    RETURNS inet
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT COALESCE(
        echo_ip,
        CASE WHEN proxy IS NULL AND local_ip IS NOT NULL
                  AND NOT (local_ip << '10.0.0.0/8'::inet OR local_ip << '172.16.0.0/12'::inet
                           OR local_ip << '192.168.0.0/16'::inet OR local_ip << '100.64.0.0/10'::inet
                           OR local_ip << '169.254.0.0/16'::inet OR local_ip << 'fc00::/7'::inet
                           OR local_ip << 'fe80::/10'::inet)
             THEN local_ip END,
        egress_ip)
    $$;

-- The detection window scans one or two daily partitions by start time;
-- this index is created on every partition (existing and future).
CREATE INDEX probe_results_started ON probe_results (started_at);

-- IP-to-ASN table (`vantage-collector asn load <file>`): inclusive address
-- ranges as in the common ip2asn TSV format.
CREATE TABLE asn_ranges (
    first_ip inet NOT NULL,
    last_ip  inet NOT NULL,
    asn      bigint NOT NULL,
    country  text NOT NULL,
    name     text NOT NULL,
    PRIMARY KEY (first_ip)
);

-- One row per load: the detector reloads the table when this changes.
CREATE TABLE asn_loads (
    id        bigserial PRIMARY KEY,
    source    text NOT NULL,
    ranges    bigint NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);

-- Incidents now say which failure pattern they follow (the configured
-- statuses, or connection-level failures), and carry their evidence.
DROP VIEW v_open_incidents;
DROP VIEW v_status_by_region;
DROP VIEW v_status_by_egress_prefix;
DROP INDEX incidents_one_open;

ALTER TABLE incidents RENAME COLUMN segment_502 TO segment_failures;
ALTER TABLE incidents RENAME COLUMN rest_502 TO rest_failures;
ALTER TABLE incidents
    -- 'status': the statuses configured for the check (default 502);
    -- 'connection': DNS, connect, TLS, timeout, protocol, proxy failures.
    ADD COLUMN pattern          text NOT NULL DEFAULT 'status'
        CHECK (pattern IN ('status', 'connection')),
    -- The statuses counted as failures when the incident opened.
    ADD COLUMN statuses         smallint[] NOT NULL DEFAULT '{502}',
    -- For IP prefixes: the most specific prefix covering every failure.
    ADD COLUMN narrowed_value   text,
    -- One paragraph an on-call engineer reads first.
    ADD COLUMN explanation      text NOT NULL DEFAULT '',
    -- One-sided Fisher exact test, Holm-corrected over the segments tested.
    ADD COLUMN p_value          double precision,
    -- Distinct vantages (agent and egress path) with failures in the segment.
    ADD COLUMN failing_vantages integer NOT NULL DEFAULT 0,
    -- Other flagged segments the same failing probes share:
    -- [{"dimension", "value", "shared_failures", "failures", "probes"}].
    ADD COLUMN correlated       jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN first_failure_at timestamptz,
    ADD COLUMN last_failure_at  timestamptz,
    -- The layers that produced the failing responses, and the CDN edges.
    ADD COLUMN gateways         text[] NOT NULL DEFAULT '{}',
    ADD COLUMN edge_locations   text[] NOT NULL DEFAULT '{}',
    -- The counts table of the winner and the runners-up, the prefix walk,
    -- sample result ids ({"agent_id", "seq", "started_at"}), and how the
    -- incident relates to a global one.
    ADD COLUMN evidence         jsonb NOT NULL DEFAULT '{}';

-- At most one open incident per (target, pattern, dimension, value).
CREATE UNIQUE INDEX incidents_one_open
    ON incidents (target, pattern, dimension, value) WHERE resolved_at IS NULL;

-- The detector's hysteresis, per candidate incident: consecutive
-- evaluations the condition held (or not). Persisted so that a restart
-- neither reopens nor forgets.
CREATE TABLE detector_state (
    target       text NOT NULL,
    pattern      text NOT NULL,
    dimension    text NOT NULL,
    value        text NOT NULL,
    held_streak  integer NOT NULL,
    clear_streak integer NOT NULL,
    last_held_at timestamptz,
    incident_id  bigint REFERENCES incidents (id),
    PRIMARY KEY (target, pattern, dimension, value)
);

-- Every detection pass, and the counts it saw per segment (kept for a
-- configurable time, one hour by default).
CREATE TABLE detection_runs (
    id           bigserial PRIMARY KEY,
    evaluated_at timestamptz NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    probes       bigint NOT NULL,
    duration_ms  double precision NOT NULL
);

CREATE TABLE segment_rates (
    run_id        bigint NOT NULL REFERENCES detection_runs (id) ON DELETE CASCADE,
    target        text NOT NULL,
    pattern       text NOT NULL,
    dimension     text NOT NULL,
    value         text NOT NULL,
    probes        bigint NOT NULL,
    failures      bigint NOT NULL,
    rest_probes   bigint NOT NULL,
    rest_failures bigint NOT NULL,
    vantages      integer NOT NULL,
    p_value       double precision,
    flagged       boolean NOT NULL,
    PRIMARY KEY (run_id, target, pattern, dimension, value)
);

-- Open incidents, and those resolved in the last 7 days; newest first.
CREATE VIEW v_incidents AS
SELECT id, target, pattern, kind, dimension, value, narrowed_value,
       CASE WHEN resolved_at IS NULL THEN 'open' ELSE 'resolved' END AS state,
       explanation,
       segment_failures, segment_probes, rest_failures, rest_probes,
       p_value, failing_vantages, correlated, gateways, edge_locations,
       first_failure_at, last_failure_at,
       opened_at, last_seen_at, resolved_at,
       COALESCE(resolved_at, now()) - opened_at AS duration,
       window_seconds, statuses, evidence
FROM incidents
WHERE resolved_at IS NULL OR resolved_at > now() - interval '7 days'
ORDER BY opened_at DESC;

-- The latest detection pass: per target, failure pattern and value of
-- every dimension, probes and failures in the window versus the rest.
CREATE VIEW v_segment_rates AS
SELECT s.target, s.pattern, s.dimension, s.value,
       r.window_start, r.window_end,
       s.probes, s.failures,
       round(s.failures::numeric / NULLIF(s.probes, 0), 4) AS rate,
       s.rest_probes, s.rest_failures,
       round(s.rest_failures::numeric / NULLIF(s.rest_probes, 0), 4) AS rest_rate,
       s.vantages, s.p_value, s.flagged, r.evaluated_at
FROM segment_rates s
JOIN detection_runs r ON r.id = s.run_id
WHERE r.id = (SELECT max(id) FROM detection_runs);

-- The newest result per check and vantage over the last day (one index
-- range scan on today's and yesterday's partitions).
CREATE VIEW v_latest_by_vantage AS
SELECT DISTINCT ON (check_name, url, agent_id, vantage)
       check_name, url AS target, agent_id, vantage, region,
       started_at, now() - started_at AS age,
       outcome, http_status, gateway, edge_location, resolver,
       host(dialed_ip) AS dialed_ip,
       host(probe_egress(echo_ip, local_ip, proxy, egress_ip)) AS egress_ip,
       round(total_us / 1000.0, 1) AS total_ms,
       message, seq
FROM probe_results
WHERE started_at > now() - interval '1 day'
ORDER BY check_name, url, agent_id, vantage, started_at DESC;
