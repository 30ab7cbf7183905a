-- Closed days: a day of probe_results that ended longer ago than the
-- ingest accepts results for (ingest.max_result_age) can receive no row
-- any more. The collector's upkeep compacts it: its secondary indexes
-- dropped (the primary key stays: it is the parent's) and, where the
-- columnar access method is installed (the citus_columnar extension, or
-- Citus itself), its rows rewritten columnar with zstd. Every view reads
-- a compacted day as before.
--
-- Only a partition's own index can be dropped, not one attached to a
-- partitioned index: the two secondary indexes move from the parent to
-- each partition, made when the partition is.

-- The indexes a day's partition has while it can still receive results.
CREATE FUNCTION probe_results_open_day_indexes(part text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    -- The incident pages read recent rows per target; the vantage list and
    -- the roll-up read a time range.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (url, started_at)',
                   part || '_url_started', part);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (started_at)',
                   part || '_started', part);
END
$$;

CREATE OR REPLACE FUNCTION ensure_probe_results_partition(day date) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    part text := 'probe_results_p' || to_char(day, 'YYYYMMDD');
BEGIN
    -- An existing day keeps what it has: a compacted one gets no index
    -- back.
    IF to_regclass(part) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF probe_results FOR VALUES FROM (%L) TO (%L)',
        part,
        day::timestamp AT TIME ZONE 'UTC',
        (day + 1)::timestamp AT TIME ZONE 'UTC');
    PERFORM probe_results_open_day_indexes(part);
END
$$;

-- The days that exist get their own indexes before the parent's go.
DO $$
DECLARE
    part text;
BEGIN
    FOR part IN
        SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'probe_results'::regclass
    LOOP
        PERFORM probe_results_open_day_indexes(part);
    END LOOP;
END
$$;

DROP INDEX probe_results_url_started;
DROP INDEX probe_results_started;
