-- Detection v2: probe rounds, the proxy's address as a proxied vantage's
-- egress, incidents re-explained in place (with their history), path
-- incidents spanning several targets, and one detector per database.

-- The check's interval (one probe round) and, on a proxied vantage, the
-- forward proxy's address as dialled.
ALTER TABLE probe_results
    ADD COLUMN interval_ms integer,
    ADD COLUMN proxy_ip    inet;

-- The address a probe left from, as the target saw it: the vantage's
-- IP-echo answer when it has one; else, through a forward proxy, the
-- proxy's address (NULL, unknown, for rows from agents that did not report
-- it: never the agent's own address); else, for a direct probe, the
-- socket's own source address unless it is private (NAT hides it); else
-- the address the collector saw the agent's stream come from.
CREATE FUNCTION probe_egress(echo_ip inet, local_ip inet, proxy text, proxy_ip inet,
                             egress_ip inet)
    RETURNS inet
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT COALESCE(
        echo_ip,
        CASE
            WHEN proxy IS NOT NULL THEN proxy_ip
            WHEN local_ip IS NOT NULL
                 AND NOT (local_ip << '10.0.0.0/8'::inet OR local_ip << '172.16.0.0/12'::inet
                          OR local_ip << '192.168.0.0/16'::inet OR local_ip << '100.64.0.0/10'::inet
                          OR local_ip << '169.254.0.0/16'::inet OR local_ip << 'fc00::/7'::inet
                          OR local_ip << 'fe80::/10'::inet)
                THEN local_ip
            ELSE egress_ip
        END)
    $$;

CREATE OR REPLACE VIEW v_latest_by_vantage AS
SELECT DISTINCT ON (check_name, url, agent_id, vantage)
       check_name, url AS target, agent_id, vantage, region,
       started_at, now() - started_at AS age,
       outcome, http_status, gateway, edge_location, resolver,
       host(dialed_ip) AS dialed_ip,
       host(probe_egress(echo_ip, local_ip, proxy, proxy_ip, egress_ip)) AS egress_ip,
       round(total_us / 1000.0, 1) AS total_ms,
       message, seq
FROM probe_results
WHERE started_at > now() - interval '1 day'
ORDER BY check_name, url, agent_id, vantage, started_at DESC;

DROP FUNCTION probe_egress(inet, inet, text, inet);

-- Incidents: a path incident is about the vantages' own path (a proxy, a
-- resolver, an egress range, a region...) failing for several targets at
-- once; its `target` is '*' and `targets` lists them. `fault_side` says
-- whether the fault is in the vantages' own path or at the site.
-- `version` counts explanations: 1 at opening, +1 per re-explanation.
ALTER TABLE incidents
    ADD COLUMN scope      text NOT NULL DEFAULT 'target' CHECK (scope IN ('target', 'path')),
    ADD COLUMN targets    text[] NOT NULL DEFAULT '{}',
    ADD COLUMN fault_side text NOT NULL DEFAULT 'site' CHECK (fault_side IN ('site', 'path')),
    ADD COLUMN version    integer NOT NULL DEFAULT 1;

-- Every explanation an incident has had: version 1 is the one it opened
-- with; each later version replaced the one before (and is announced once
-- as `incident.updated`: `notified_at` is its outbox column).
CREATE TABLE incident_explanations (
    incident_id      bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    version          integer NOT NULL,
    scope            text NOT NULL,
    kind             text NOT NULL,
    dimension        text NOT NULL,
    value            text NOT NULL,
    narrowed_value   text,
    explanation      text NOT NULL,
    segment_failures bigint NOT NULL,
    segment_probes   bigint NOT NULL,
    rest_failures    bigint NOT NULL,
    rest_probes      bigint NOT NULL,
    p_value          double precision,
    explained_at     timestamptz NOT NULL,
    notified_at      timestamptz,
    PRIMARY KEY (incident_id, version)
);
CREATE INDEX incident_explanations_pending
    ON incident_explanations (incident_id) WHERE notified_at IS NULL AND version > 1;

-- Incidents opened before this version have their opening explanation.
INSERT INTO incident_explanations
    (incident_id, version, scope, kind, dimension, value, narrowed_value, explanation,
     segment_failures, segment_probes, rest_failures, rest_probes, p_value, explained_at,
     notified_at)
SELECT id, 1, scope, kind, dimension, value, narrowed_value, explanation, segment_failures,
       segment_probes, rest_failures, rest_probes, p_value, opened_at, open_notified_at
FROM incidents;

-- How each incident's explanation changed, oldest first.
CREATE VIEW v_incident_history AS
SELECT e.incident_id, e.version, e.scope, e.kind, e.dimension, e.value, e.narrowed_value,
       e.explanation, e.segment_failures, e.segment_probes, e.rest_failures, e.rest_probes,
       e.p_value, e.explained_at,
       lead(e.explained_at) OVER (PARTITION BY e.incident_id ORDER BY e.version) AS replaced_at,
       i.version = e.version AS current
FROM incident_explanations e
JOIN incidents i ON i.id = e.incident_id
ORDER BY e.incident_id, e.version;

CREATE OR REPLACE VIEW v_incidents AS
SELECT id, target, pattern, kind, dimension, value, narrowed_value,
       CASE WHEN resolved_at IS NULL THEN 'open' ELSE 'resolved' END AS state,
       explanation,
       segment_failures, segment_probes, rest_failures, rest_probes,
       p_value, failing_vantages, correlated, gateways, edge_locations,
       first_failure_at, last_failure_at,
       opened_at, last_seen_at, resolved_at,
       COALESCE(resolved_at, now()) - opened_at AS duration,
       window_seconds, statuses, evidence,
       scope, targets, fault_side, version
FROM incidents
WHERE resolved_at IS NULL OR resolved_at > now() - interval '7 days'
ORDER BY opened_at DESC;

-- The detector's memory is now per tracked failure: the failing
-- (target, vantage) pairs it was last seen on (`footprint`), so that a
-- better explanation of the same failure re-explains it instead of
-- opening another incident, and the explanation waiting to replace the
-- current one with how many consecutive passes it has led.
ALTER TABLE detector_state
    ADD COLUMN footprint         text[] NOT NULL DEFAULT '{}',
    ADD COLUMN pending_target    text,
    ADD COLUMN pending_dimension text,
    ADD COLUMN pending_value     text,
    ADD COLUMN pending_streak    integer NOT NULL DEFAULT 0;

-- Which collector ran each pass (its detector lease holder).
ALTER TABLE detection_runs ADD COLUMN runner text;

-- Which window the rates of a pass were taken over, in probe rounds.
ALTER TABLE segment_rates ADD COLUMN window_rounds integer;

CREATE OR REPLACE VIEW v_segment_rates AS
SELECT s.target, s.pattern, s.dimension, s.value,
       r.window_start, r.window_end,
       s.probes, s.failures,
       round(s.failures::numeric / NULLIF(s.probes, 0), 4) AS rate,
       s.rest_probes, s.rest_failures,
       round(s.rest_failures::numeric / NULLIF(s.rest_probes, 0), 4) AS rest_rate,
       s.vantages, s.p_value, s.flagged, r.evaluated_at, s.window_rounds
FROM segment_rates s
JOIN detection_runs r ON r.id = s.run_id
WHERE r.id = (SELECT max(id) FROM detection_runs);

-- One detector per database: the collector holding an unexpired lease
-- runs the passes; another takes over once it has expired (two detector
-- intervals after the holder's last pass).
CREATE TABLE detector_lease (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);
