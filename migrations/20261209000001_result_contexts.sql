-- Results stored as a dictionary. Most of a result repeats from one probe
-- to the next: the agent's region, the check, its URL and method, the
-- resolver and what it answered, the addresses left from and dialled, the
-- TLS session and certificate, the layer that answered. Those fields go
-- once into `result_contexts` (one row per agent and distinct context,
-- keyed by a hash of its fields); each probe keeps only what changes
-- (`result_rows`: its key, outcome, status, TTLs, timings, body and the
-- per-request headers) and its context's id. `probe_results` becomes the
-- view that joins the two, with every column it had, so every query,
-- view and SQL user reads as before; an INSERT into it (a script, a test)
-- goes through a trigger. The collector writes both tables itself.
--
-- Bytes per result of an open day: 871 before (heap 683 + indexes), about
-- 300 after (storage bench).

-- The response headers that belong to the context: the same on every
-- response of one layer. Every other header (request ids, lengths,
-- locations) stays with the result. Held to the collector's list
-- (store::results::CONTEXT_HEADERS) by a test.
CREATE FUNCTION result_context_header_names() RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ARRAY['server', 'via', 'x-cache', 'x-served-by', 'x-amz-cf-pop',
                       'content-type'] $$;

CREATE TABLE result_contexts (
    agent_id                text NOT NULL,
    -- The first 8 bytes of a hash of the fields below: the same context
    -- gets the same id whoever stores it.
    id                      bigint NOT NULL,
    -- The latest day a result of this context started on: retention
    -- removes contexts no result of a kept day uses.
    last_used               date NOT NULL,
    region                  text NOT NULL,
    check_name              text NOT NULL,
    url                     text NOT NULL,
    method                  text NOT NULL,
    http_version            text,
    resolver                text,
    resolved_ips            inet[] NOT NULL DEFAULT '{}',
    dialed_ip               inet,
    dialed_port             integer,
    local_ip                inet,
    egress_ip               inet,
    -- The headers named by result_context_header_names().
    headers                 jsonb NOT NULL DEFAULT '{}',
    vantage                 text NOT NULL DEFAULT 'direct',
    proxy                   text,
    dns_rcode               text,
    resolver_egress_ip      inet,
    resolver_nsid           text,
    resolver_identity_error text,
    echo_ip                 inet,
    tls_version             text,
    tls_alpn                text,
    tls_cipher              text,
    cert_subject            text,
    cert_issuer             text,
    cert_not_after          timestamptz,
    gateway                 text,
    edge_location           text,
    interval_ms             integer,
    proxy_ip                inet,
    check_version           bigint,
    PRIMARY KEY (agent_id, id)
);
CREATE INDEX result_contexts_url ON result_contexts (url);
CREATE INDEX result_contexts_last_used ON result_contexts (last_used);

-- One row per probe, partitioned by day on its start time. Fixed-width
-- columns first, widest first (no padding between them).
CREATE TABLE result_rows (
    seq            bigint NOT NULL,
    started_at     timestamptz NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    context_id     bigint NOT NULL,
    body_bytes     bigint,
    request_id     bigint,
    -- Phase durations in microseconds (NULL: not measured); a phase
    -- longer than 2^31-1 µs (35.8 minutes) is stored as 2147483647.
    dns_us         integer,
    connect_us     integer,
    tls_us         integer,
    ttfb_us        integer,
    total_us       integer,
    proxy_us       integer,
    transfer_us    integer,
    http_status    smallint,
    proxy_status   smallint,
    body_truncated boolean NOT NULL DEFAULT false,
    agent_id       text NOT NULL,
    outcome        text NOT NULL
        CHECK (outcome IN ('ok', 'dns', 'connect', 'tls', 'timeout', 'http', 'other',
                           'protocol', 'cert_expiry', 'proxy', 'stalled')),
    -- NULL: no message.
    message        text,
    -- The TTLs of the context's resolved_ips, in their order; NULL: none.
    resolved_ttls  integer[],
    -- The headers not in the context; NULL: none.
    headers        jsonb,
    body_sha256    bytea,
    -- The redirects followed; NULL: none.
    hops           jsonb,
    PRIMARY KEY (agent_id, seq, started_at)
) PARTITION BY RANGE (started_at);
CREATE INDEX result_rows_request ON result_rows (request_id) WHERE request_id IS NOT NULL;

-- The indexes a day has while it can still receive results (a closed day
-- drops them): the incident pages read the rows of a few targets (their
-- contexts, then the contexts' rows: one key for many rows, which the
-- index stores once with a list of the rows, 6 bytes a row, where a key
-- with the start time would take about 40); the vantage list and the
-- roll-up a time range (rows arrive in about time order: a BRIN index is
-- a few pages).
CREATE FUNCTION result_rows_open_day_indexes(part text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (context_id)',
                   part || '_context', part);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I USING brin (started_at)',
                   part || '_started', part);
END
$$;

CREATE FUNCTION ensure_result_rows_partition(day date) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    part text := 'result_rows_p' || to_char(day, 'YYYYMMDD');
BEGIN
    -- An existing day keeps what it has: a compacted one gets no index
    -- back.
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF result_rows FOR VALUES FROM (%L) TO (%L)',
        part,
        day::timestamp AT TIME ZONE 'UTC',
        (day + 1)::timestamp AT TIME ZONE 'UTC');
    PERFORM result_rows_open_day_indexes(part);
END
$$;

-- The views that read the old table, to be made again over the new view:
-- their definitions, before anything is dropped.
CREATE TEMPORARY TABLE dependent_views ON COMMIT DROP AS
WITH RECURSIVE deps AS (
    SELECT DISTINCT r.ev_class AS oid
    FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.refobjid = 'probe_results'::regclass AND r.ev_class <> 'probe_results'::regclass
    UNION
    SELECT r.ev_class
    FROM deps JOIN pg_depend d ON d.refobjid = deps.oid
    JOIN pg_rewrite r ON r.oid = d.objid
    WHERE r.ev_class <> deps.oid
)
SELECT c.oid::regclass::text AS name, pg_get_viewdef(c.oid) AS definition, c.oid
FROM deps JOIN pg_class c ON c.oid = deps.oid AND c.relkind = 'v';

DO $$
DECLARE
    v record;
BEGIN
    FOR v IN SELECT name FROM dependent_views LOOP
        EXECUTE format('DROP VIEW IF EXISTS %s CASCADE', v.name);
    END LOOP;
END
$$;

ALTER TABLE probe_results RENAME TO probe_results_v1;
DROP FUNCTION probe_results_open_day_indexes(text);
DROP FUNCTION ensure_probe_results_partition(date);

-- Every column probe_results had, in its order and of its type.
CREATE VIEW probe_results AS
SELECT r.agent_id, r.seq, r.started_at, r.received_at, c.region, c.check_name, c.url,
       c.method, r.outcome, COALESCE(r.message, '') AS message, r.http_status,
       c.http_version, c.resolver, c.resolved_ips,
       COALESCE(r.resolved_ttls, '{}') AS resolved_ttls, c.dialed_ip, c.dialed_port,
       c.local_ip, c.egress_ip, r.dns_us::bigint AS dns_us,
       r.connect_us::bigint AS connect_us, r.tls_us::bigint AS tls_us,
       r.ttfb_us::bigint AS ttfb_us, r.total_us::bigint AS total_us,
       c.headers || COALESCE(r.headers, '{}') AS headers, c.vantage, c.proxy,
       r.proxy_status, c.dns_rcode, c.resolver_egress_ip, c.resolver_nsid,
       c.resolver_identity_error, c.echo_ip, r.proxy_us::bigint AS proxy_us,
       r.transfer_us::bigint AS transfer_us, c.tls_version, c.tls_alpn, c.tls_cipher,
       c.cert_subject, c.cert_issuer, c.cert_not_after, r.body_bytes,
       encode(r.body_sha256, 'hex') AS body_sha256, r.body_truncated, c.gateway,
       c.edge_location, COALESCE(r.hops, '[]') AS hops, c.interval_ms, c.proxy_ip,
       c.check_version, r.request_id
FROM result_rows r
JOIN result_contexts c ON c.agent_id = r.agent_id AND c.id = r.context_id;

-- A phase duration as result_rows keeps it.
CREATE FUNCTION saturating_int4(us bigint) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE RETURNS NULL ON NULL INPUT
    AS $$ SELECT LEAST(us, 2147483647)::integer $$;

-- The id of a result's context when SQL stores it (the collector hashes
-- its own way: two ids for one context cost a row, nothing else).
CREATE FUNCTION result_context_id(r probe_results) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('x' || left(md5(row(r.region, r.check_name, r.url, r.method, r.http_version,
        r.resolver, r.resolved_ips, r.dialed_ip, r.dialed_port, r.local_ip, r.egress_ip,
        (SELECT jsonb_object_agg(key, value) FROM jsonb_each(r.headers)
         WHERE key = ANY (result_context_header_names())),
        r.vantage, r.proxy, r.dns_rcode, r.resolver_egress_ip, r.resolver_nsid,
        r.resolver_identity_error, r.echo_ip, r.tls_version, r.tls_alpn, r.tls_cipher,
        r.cert_subject, r.cert_issuer, r.cert_not_after, r.gateway, r.edge_location,
        r.interval_ms, r.proxy_ip, r.check_version)::text), 16))::bit(64)::bigint
$$;

-- Stores the rows of `source`, a query of one column `r` of type
-- probe_results ($1 in it is `arg`), contexts first, a missing value
-- taking the old table's default: what the trigger below and this
-- migration's copy of the old table do.
CREATE FUNCTION store_probe_results(source text, arg probe_results DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format($q$
        INSERT INTO result_contexts
        SELECT DISTINCT ON ((s.r).agent_id, result_context_id(s.r))
               (s.r).agent_id, result_context_id(s.r),
               ((s.r).started_at AT TIME ZONE 'UTC')::date,
               (s.r).region, (s.r).check_name, (s.r).url, (s.r).method, (s.r).http_version,
               (s.r).resolver, COALESCE((s.r).resolved_ips, '{}'), (s.r).dialed_ip,
               (s.r).dialed_port,
               (s.r).local_ip, (s.r).egress_ip,
               COALESCE((SELECT jsonb_object_agg(key, value) FROM jsonb_each((s.r).headers)
                         WHERE key = ANY (result_context_header_names())), '{}'),
               COALESCE((s.r).vantage, 'direct'), (s.r).proxy, (s.r).dns_rcode,
               (s.r).resolver_egress_ip, (s.r).resolver_nsid, (s.r).resolver_identity_error, (s.r).echo_ip,
               (s.r).tls_version, (s.r).tls_alpn, (s.r).tls_cipher, (s.r).cert_subject,
               (s.r).cert_issuer, (s.r).cert_not_after, (s.r).gateway, (s.r).edge_location,
               (s.r).interval_ms, (s.r).proxy_ip, (s.r).check_version
        FROM (%s) s
        ORDER BY (s.r).agent_id, result_context_id(s.r), (s.r).started_at DESC
        ON CONFLICT (agent_id, id) DO UPDATE SET last_used = EXCLUDED.last_used
            WHERE result_contexts.last_used < EXCLUDED.last_used$q$, source) USING arg;
    EXECUTE format($q$
        INSERT INTO result_rows (agent_id, seq, started_at, received_at, context_id,
            body_bytes, request_id, dns_us, connect_us, tls_us, ttfb_us, total_us, proxy_us,
            transfer_us, http_status, proxy_status, body_truncated, outcome, message,
            resolved_ttls, headers, body_sha256, hops)
        SELECT (s.r).agent_id, (s.r).seq, (s.r).started_at, COALESCE((s.r).received_at, now()),
               result_context_id(s.r), (s.r).body_bytes, (s.r).request_id,
               saturating_int4((s.r).dns_us), saturating_int4((s.r).connect_us),
               saturating_int4((s.r).tls_us), saturating_int4((s.r).ttfb_us),
               saturating_int4((s.r).total_us), saturating_int4((s.r).proxy_us),
               saturating_int4((s.r).transfer_us), (s.r).http_status, (s.r).proxy_status,
               COALESCE((s.r).body_truncated, false), (s.r).outcome,
               NULLIF((s.r).message, ''), NULLIF((s.r).resolved_ttls, '{}'),
               (SELECT jsonb_object_agg(key, value) FROM jsonb_each((s.r).headers)
                WHERE key <> ALL (result_context_header_names())),
               decode((s.r).body_sha256, 'hex'), NULLIF((s.r).hops, '[]')
        FROM (%s) s$q$, source) USING arg;
END
$fn$;

CREATE FUNCTION probe_results_insert() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    -- The defaults the table had.
    NEW.received_at := COALESCE(NEW.received_at, now());
    NEW.message := COALESCE(NEW.message, '');
    NEW.resolved_ips := COALESCE(NEW.resolved_ips, '{}');
    NEW.resolved_ttls := COALESCE(NEW.resolved_ttls, '{}');
    NEW.headers := COALESCE(NEW.headers, '{}');
    NEW.vantage := COALESCE(NEW.vantage, 'direct');
    NEW.body_truncated := COALESCE(NEW.body_truncated, false);
    NEW.hops := COALESCE(NEW.hops, '[]');
    PERFORM store_probe_results('SELECT $1 AS r', NEW);
    RETURN NEW;
END
$$;

CREATE TRIGGER probe_results_insert INSTEAD OF INSERT ON probe_results
    FOR EACH ROW EXECUTE FUNCTION probe_results_insert();

-- The days the old table has, with their rows.
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'probe_results_v1'::regclass
          AND c.relname ~ '^probe_results_p[0-9]{8}$'
        ORDER BY 1
    LOOP
        PERFORM ensure_result_rows_partition(
            to_date(substring(part.name FROM 16), 'YYYYMMDD'));
        PERFORM store_probe_results(
            format('SELECT ROW(o.*)::probe_results AS r FROM %I o', part.name));
    END LOOP;
END
$$;
DROP TABLE probe_results_v1;

-- The views, as they were, over the new view (in the order they were
-- first made: a view before those reading it).
DO $$
DECLARE
    v record;
BEGIN
    FOR v IN SELECT name, definition FROM dependent_views ORDER BY oid LOOP
        EXECUTE format('CREATE VIEW %s AS %s', v.name, v.definition);
    END LOOP;
END
$$;
