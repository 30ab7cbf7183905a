-- Vantage schema, version 1. Forward-only: later changes are new files.

-- Every agent that ever said hello.
CREATE TABLE agents (
    agent_id     text PRIMARY KEY,
    region       text NOT NULL,
    labels       jsonb NOT NULL DEFAULT '{}',
    version      text NOT NULL DEFAULT '',
    -- The agent's address as the collector saw it on its latest stream.
    observed_ip  inet,
    -- Highest sequence number committed for this agent (progress row,
    -- updated in the same transaction as the results).
    last_seq     bigint NOT NULL DEFAULT 0,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now()
);

-- One row per probe. Partitioned by day on the probe's start time; the
-- collector creates partitions ahead of time and on demand.
CREATE TABLE probe_results (
    agent_id      text NOT NULL,
    seq           bigint NOT NULL,
    started_at    timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    -- The agent's region when the result arrived (agents may move).
    region        text NOT NULL,
    check_name    text NOT NULL,
    url           text NOT NULL,
    method        text NOT NULL,
    outcome       text NOT NULL
        CHECK (outcome IN ('ok', 'dns', 'connect', 'tls', 'timeout', 'http', 'other')),
    message       text NOT NULL DEFAULT '',
    http_status   smallint,
    http_version  text,
    -- The nameserver asked, e.g. 'udp://127.0.0.1:53'; 'literal' for IP URLs.
    resolver      text,
    -- Every A/AAAA answer, and their TTLs in the same order.
    resolved_ips  inet[] NOT NULL DEFAULT '{}',
    resolved_ttls integer[] NOT NULL DEFAULT '{}',
    dialed_ip     inet,
    dialed_port   integer,
    local_ip      inet,
    -- The agent's egress address (as the collector saw it).
    egress_ip     inet,
    -- Phase durations in microseconds; NULL means not measured.
    dns_us        bigint,
    connect_us    bigint,
    tls_us        bigint,
    ttfb_us       bigint,
    total_us      bigint,
    -- Headers that identify the responding layer (server, via, cf-ray, ...).
    headers       jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (agent_id, seq, started_at)
) PARTITION BY RANGE (started_at);

-- Creates the partition of probe_results for one UTC day, if missing.
CREATE FUNCTION ensure_probe_results_partition(day date) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF probe_results FOR VALUES FROM (%L) TO (%L)',
        'probe_results_p' || to_char(day, 'YYYYMMDD'),
        day::timestamp AT TIME ZONE 'UTC',
        (day + 1)::timestamp AT TIME ZONE 'UTC');
END
$$;

-- The detector and the views scan recent rows per target.
CREATE INDEX probe_results_url_started ON probe_results (url, started_at);

-- A pattern the detector found: a 502 rate specific to one value of one
-- dimension (region, egress prefix), or global.
CREATE TABLE incidents (
    id              bigserial PRIMARY KEY,
    target          text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('segment', 'global')),
    dimension       text NOT NULL,
    value           text NOT NULL,
    -- Counts over the window at the latest evaluation while open.
    segment_502     bigint NOT NULL,
    segment_probes  bigint NOT NULL,
    rest_502        bigint NOT NULL,
    rest_probes     bigint NOT NULL,
    window_seconds  integer NOT NULL,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    -- Alert outbox: set once the webhooks were sent (or gave up).
    open_notified_at    timestamptz,
    resolve_notified_at timestamptz
);

-- At most one open incident per (target, dimension, value).
CREATE UNIQUE INDEX incidents_one_open
    ON incidents (target, dimension, value) WHERE resolved_at IS NULL;
CREATE INDEX incidents_pending_notification
    ON incidents (id) WHERE open_notified_at IS NULL OR
                            (resolved_at IS NOT NULL AND resolve_notified_at IS NULL);

-- The /24 (IPv4) or /48 (IPv6) network an address belongs to.
CREATE FUNCTION egress_prefix(ip inet) RETURNS cidr
    LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURNS NULL ON NULL INPUT
    AS $$ SELECT network(set_masklen(ip, CASE family(ip) WHEN 4 THEN 24 ELSE 48 END)) $$;

-- Per target and region, the last 15 minutes.
CREATE VIEW v_status_by_region AS
SELECT url AS target,
       region,
       count(*) AS probes,
       count(*) FILTER (WHERE http_status = 502) AS status_502,
       round(100.0 * count(*) FILTER (WHERE http_status = 502) / count(*), 1) AS pct_502,
       count(*) FILTER (WHERE outcome <> 'ok') AS failures,
       max(started_at) AS last_probe_at
FROM probe_results
WHERE started_at > now() - interval '15 minutes'
GROUP BY url, region;

-- Per target and egress prefix, the last 15 minutes.
CREATE VIEW v_status_by_egress_prefix AS
SELECT url AS target,
       egress_prefix(egress_ip) AS egress_prefix,
       count(*) AS probes,
       count(*) FILTER (WHERE http_status = 502) AS status_502,
       round(100.0 * count(*) FILTER (WHERE http_status = 502) / count(*), 1) AS pct_502,
       count(*) FILTER (WHERE outcome <> 'ok') AS failures,
       max(started_at) AS last_probe_at
FROM probe_results
WHERE started_at > now() - interval '15 minutes' AND egress_ip IS NOT NULL
GROUP BY url, egress_prefix(egress_ip);

-- Incidents not yet resolved, newest first.
CREATE VIEW v_open_incidents AS
SELECT id, target, kind, dimension, value,
       segment_502, segment_probes, rest_502, rest_probes,
       window_seconds, opened_at, last_seen_at
FROM incidents
WHERE resolved_at IS NULL
ORDER BY opened_at DESC;
