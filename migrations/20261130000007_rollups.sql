-- The per-minute roll-up of probe_results, kept longer than the raw
-- results ([retention] rollup, default 400 days) so trends survive them.
-- One row per minute and combination of the dimensions a 502 can follow;
-- timings as sums and counts (averages add up across rows) plus the
-- minute's median, 95th percentile and maximum of the total time.
-- Written every minute for the last minutes, and for a whole day just
-- before its raw partition is dropped (late results included). One-off
-- probes (request_id) are not rolled up.
CREATE TABLE probe_rollups (
    minute          timestamptz NOT NULL,
    url             text NOT NULL,
    check_name      text NOT NULL,
    agent_id        text NOT NULL,
    vantage         text NOT NULL,
    region          text NOT NULL,
    -- '' when unknown.
    egress_ip       text NOT NULL,
    resolver        text NOT NULL,
    dialed_ip       text NOT NULL,
    http_version    text NOT NULL,
    outcome         text NOT NULL,
    -- The HTTP status, else the forward proxy's refusal, else 0.
    status          smallint NOT NULL,
    gateway         text NOT NULL,
    probes          bigint NOT NULL,
    dns_us_sum      bigint NOT NULL,
    dns_us_count    bigint NOT NULL,
    connect_us_sum  bigint NOT NULL,
    connect_us_count bigint NOT NULL,
    tls_us_sum      bigint NOT NULL,
    tls_us_count    bigint NOT NULL,
    ttfb_us_sum     bigint NOT NULL,
    ttfb_us_count   bigint NOT NULL,
    total_us_sum    bigint NOT NULL,
    total_us_count  bigint NOT NULL,
    total_us_p50    bigint,
    total_us_p95    bigint,
    total_us_max    bigint,
    PRIMARY KEY (minute, url, check_name, agent_id, vantage, region, egress_ip, resolver,
                 dialed_ip, http_version, outcome, status, gateway)
) PARTITION BY RANGE (minute);

-- Creates the partition of probe_rollups for one UTC month, if missing.
CREATE FUNCTION ensure_probe_rollups_partition(month date) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF probe_rollups FOR VALUES FROM (%L) TO (%L)',
        'probe_rollups_p' || to_char(month, 'YYYYMM'),
        date_trunc('month', month)::timestamp AT TIME ZONE 'UTC',
        (date_trunc('month', month) + interval '1 month')::timestamp AT TIME ZONE 'UTC');
END
$$;
