-- Every probe result carries the full identity of its path: the vantage
-- (egress path) and proxy, the resolver's rcode and own identity, TLS and
-- certificate details, the body's size and hash, the layer that produced an
-- error response and the CDN edge, each redirect hop, and the proxy and
-- transfer phases.

ALTER TABLE probe_results DROP CONSTRAINT probe_results_outcome_check;
ALTER TABLE probe_results ADD CONSTRAINT probe_results_outcome_check
    CHECK (outcome IN ('ok', 'dns', 'connect', 'tls', 'timeout', 'http', 'other',
                       'protocol', 'cert_expiry', 'proxy'));

ALTER TABLE probe_results
    -- The egress path; 'direct' for an agent that configures none.
    ADD COLUMN vantage                 text NOT NULL DEFAULT 'direct',
    -- The vantage's forward proxy, without credentials; NULL when direct.
    ADD COLUMN proxy                   text,
    -- Status of a CONNECT the proxy refused (the site was never reached).
    ADD COLUMN proxy_status            smallint,
    -- DNS response code as dig prints it: NOERROR, NXDOMAIN, SERVFAIL, ...
    ADD COLUMN dns_rcode               text,
    -- The resolver's own egress address and NSID, as last learned, and why
    -- they could not be.
    ADD COLUMN resolver_egress_ip      inet,
    ADD COLUMN resolver_nsid           text,
    ADD COLUMN resolver_identity_error text,
    -- The vantage's public address as its IP-echo URL reported it.
    ADD COLUMN echo_ip                 inet,
    ADD COLUMN proxy_us                bigint,
    ADD COLUMN transfer_us             bigint,
    ADD COLUMN tls_version             text,
    ADD COLUMN tls_alpn                text,
    ADD COLUMN tls_cipher              text,
    ADD COLUMN cert_subject            text,
    ADD COLUMN cert_issuer             text,
    ADD COLUMN cert_not_after          timestamptz,
    -- Body bytes read (bounded by the check), their SHA-256, and whether the
    -- body went on beyond them.
    ADD COLUMN body_bytes              bigint,
    ADD COLUMN body_sha256             text,
    ADD COLUMN body_truncated          boolean NOT NULL DEFAULT false,
    -- The layer that produced an error response (cloudflare, nginx,
    -- forward-proxy, unknown, ...) and the CDN point of presence.
    ADD COLUMN gateway                 text,
    ADD COLUMN edge_location           text,
    -- Each request of a probe that followed redirects:
    -- [{"url", "status", "dialed_addr", "dns_us", "connect_us", ...}].
    ADD COLUMN hops                    jsonb NOT NULL DEFAULT '[]';
