-- Probe options (issue 33): a check may accept any certificate
-- (tls_insecure_skip_verify) and fail on what its body says
-- (fail_if_body_matches / fail_if_body_not_matches).

-- Whether the site's certificate went unverified: a property of the
-- context (the check's), NULL when verified so that the contexts stored
-- before this column keep their ids (the collector leaves the field out of
-- a context's hash when false).
ALTER TABLE result_contexts ADD COLUMN tls_insecure boolean;

-- probe_results gains it as its last column (CREATE OR REPLACE VIEW may
-- only append), false when verified.
CREATE OR REPLACE VIEW probe_results AS
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
       c.check_version, r.request_id, COALESCE(c.tls_insecure, false) AS tls_insecure
FROM result_rows r
JOIN result_contexts c ON c.agent_id = r.agent_id AND c.id = r.context_id;

-- The body was read and failed the check's body patterns (vantage.proto:
-- OUTCOME_BODY_MATCH): the site answered, with the wrong page.
ALTER TABLE result_rows DROP CONSTRAINT result_rows_outcome_check;
ALTER TABLE result_rows ADD CONSTRAINT result_rows_outcome_check
    CHECK (outcome IN ('ok', 'dns', 'connect', 'tls', 'timeout', 'http', 'other',
                       'protocol', 'cert_expiry', 'proxy', 'stalled', 'body_match'));
