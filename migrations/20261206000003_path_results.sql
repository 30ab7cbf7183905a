-- Path traces: the route from a vantage to the address a probe dialled
-- (or to its forward proxy), traced right after the probe when a probe
-- request asked (`probe --path`, the detector's confirmation probes) or
-- a check's path_interval came round. One row per trace, keyed like the
-- result it follows; its probes in path_hops.

ALTER TABLE probe_requests ADD COLUMN trace_path boolean NOT NULL DEFAULT false;

CREATE TABLE path_results (
    -- The result the trace follows (probe_results' key).
    agent_id          text NOT NULL,
    seq               bigint NOT NULL,
    started_at        timestamptz NOT NULL,
    -- Copied from the result, to find traces without it: the request
    -- that asked (NULL on schedule), the vantage, the check.
    request_id        bigint,
    vantage           text NOT NULL,
    check_name        text NOT NULL,
    protocol          text NOT NULL CHECK (protocol IN ('udp', 'tcp')),
    source_ip         inet,
    -- NULL when there was nowhere to trace to (end_reason 'error').
    destination_ip    inet,
    destination_port  integer,
    -- The destination is the vantage's forward proxy: the site is beyond.
    via_proxy         boolean NOT NULL,
    -- PathEnd's text forms (vantage.proto); the schema test holds them to
    -- the enum.
    end_reason        text NOT NULL
                      CHECK (end_reason IN ('reached', 'unreachable', 'max_hops', 'timed_out', 'error')),
    error             text,
    -- The TTL the destination answered at (end_reason 'reached').
    hop_count         smallint,
    path_mtu          integer,
    -- The router that reported path_mtu; NULL: this host or the search.
    mtu_from          inet,
    black_hole_after_ttl       smallint,
    black_hole_largest_passed  integer,
    black_hole_smallest_lost   integer,
    -- The first TTL at which the destination port answered a TCP SYN:
    -- below hop_count, something on the way answers for it.
    port_answered_at  smallint,
    port_reached      boolean NOT NULL,
    port_rtt_us       bigint,
    port_error        text,
    duration_us       bigint NOT NULL,
    PRIMARY KEY (agent_id, seq, started_at)
);

CREATE INDEX path_results_request ON path_results (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX path_results_started ON path_results (started_at);

CREATE TABLE path_hops (
    agent_id    text NOT NULL,
    seq         bigint NOT NULL,
    started_at  timestamptz NOT NULL,
    ttl         smallint NOT NULL,
    -- The probe's place among its hop's probes (0, 1, ...).
    probe       smallint NOT NULL,
    -- Who answered; NULL (with rtt_us and reply) when nothing did.
    address     inet,
    rtt_us      bigint,
    -- HopReply's text forms (vantage.proto).
    reply       text CHECK (reply IN ('time_exceeded', 'port_unreachable', 'net_unreachable',
                                      'host_unreachable', 'prohibited', 'frag_needed',
                                      'other_icmp', 'tcp_open', 'tcp_reset')),
    -- The probe's size on the wire (0: a TCP SYN).
    size        integer NOT NULL,
    PRIMARY KEY (agent_id, seq, started_at, ttl, probe),
    FOREIGN KEY (agent_id, seq, started_at) REFERENCES path_results ON DELETE CASCADE
);

-- One row per trace and hop: the address that answered most of the hop's
-- probes (then the first), its best RTT, the probes sent and answered.
CREATE VIEW path_hop_summary AS
SELECT agent_id, seq, started_at, ttl,
       (array_agg(address ORDER BY n DESC, first_probe) FILTER (WHERE address IS NOT NULL))[1] AS address,
       min(best_rtt_us) AS best_rtt_us,
       sum(sent)::int AS sent,
       sum(answered)::int AS answered
FROM (
    SELECT agent_id, seq, started_at, ttl, address,
           count(*) AS sent,
           count(reply) AS answered,
           count(*) FILTER (WHERE address IS NOT NULL) AS n,
           min(probe) AS first_probe,
           min(rtt_us) AS best_rtt_us
    FROM path_hops
    GROUP BY agent_id, seq, started_at, ttl, address
) per_address
GROUP BY agent_id, seq, started_at, ttl;

-- Per probe request (a `probe --path`, a confirmation), where the paths of
-- the vantages whose probes failed part from those of the vantages whose
-- probes succeeded: each hop address seen on failing paths, how many
-- failing and healthy traces pass it, and the lowest TTL it was seen at.
-- A hop every failing path passes and no healthy path does is where they
-- diverge; the smallest such TTL is the first divergent hop.
CREATE VIEW path_divergence AS
WITH traced AS (
    SELECT p.request_id, p.agent_id, p.seq, p.started_at,
           (r.outcome <> 'ok') AS failing
    FROM path_results p
    JOIN probe_results r USING (agent_id, seq, started_at)
    WHERE p.request_id IS NOT NULL
),
passes AS (
    SELECT t.request_id, t.failing, h.address, min(h.ttl) AS ttl,
           count(DISTINCT (t.agent_id, t.seq)) AS traces
    FROM traced t
    JOIN path_hop_summary h USING (agent_id, seq, started_at)
    WHERE h.address IS NOT NULL
    GROUP BY t.request_id, t.failing, h.address
),
totals AS (
    SELECT request_id,
           count(*) FILTER (WHERE failing) AS failing_traces,
           count(*) FILTER (WHERE NOT failing) AS healthy_traces
    FROM traced GROUP BY request_id
)
SELECT f.request_id, f.address, f.ttl,
       f.traces AS failing_through,
       tot.failing_traces,
       coalesce(h.traces, 0) AS healthy_through,
       tot.healthy_traces,
       (f.traces = tot.failing_traces AND coalesce(h.traces, 0) = 0) AS divergent
FROM passes f
JOIN totals tot USING (request_id)
LEFT JOIN passes h ON h.request_id = f.request_id AND h.address = f.address AND NOT h.failing
WHERE f.failing;

-- A response that began and then stopped mid-body (vantage.proto:
-- OUTCOME_STALLED): a path-MTU black hole's signature, its own outcome.
ALTER TABLE probe_results DROP CONSTRAINT probe_results_outcome_check;
ALTER TABLE probe_results ADD CONSTRAINT probe_results_outcome_check
    CHECK (outcome IN ('ok', 'dns', 'connect', 'tls', 'timeout', 'http', 'other',
                       'protocol', 'cert_expiry', 'proxy', 'stalled'));
