-- The detector's cells, written by the ingest in each batch's own
-- transaction: the batch's results counted per cell (what the detector
-- groups by: target, check, outcome, status, agent, vantage, round,
-- whether a confirmation probe, and the value of every dimension's source)
-- and time slot (a quarter of the round). A detection pass reads only the
-- cells committed since its last read, whoever ingested them, instead of
-- reading results back: its cost follows what arrived, not who stored it.
--
-- On Citus both tables stay on the coordinator (the results go to the
-- workers): the pass's snapshot is one node's, so "committed since the
-- last read" means exactly that, with no per-worker transaction ids.

-- A cell's identity, once; cells refer to it by its id.
CREATE TABLE detector_cell_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target        text NOT NULL,
    check_name    text NOT NULL,
    outcome       text NOT NULL,
    status        smallint,
    agent_id      text NOT NULL,
    vantage       text NOT NULL,
    interval_ms   integer NOT NULL,
    confirmation  boolean NOT NULL,
    -- The value of each source of the dimension table (source_names: the
    -- sources' SQL expressions, in the same order), so that collectors of
    -- different versions, whose tables may differ, read each other's keys.
    source_names  text[] NOT NULL,
    sources       text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX detector_cell_keys_identity ON detector_cell_keys
    (agent_id, vantage, target, check_name, outcome, status, interval_ms, confirmation,
     source_names, sources) NULLS NOT DISTINCT;

-- A batch's probes of one cell in one slot. Hourly partitions by the
-- slot's newest probe; the collector creates them ahead and on demand and
-- drops those older than the detector's window.
CREATE TABLE detector_cells (
    key_id     bigint NOT NULL,
    slot       bigint NOT NULL,
    probes     integer NOT NULL,
    first_at   timestamptz NOT NULL,
    last_at    timestamptz NOT NULL,
    last_seq   bigint NOT NULL,
    -- The transaction that wrote the row (see 20261201000001_ingest_xid).
    ingest_xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
) PARTITION BY RANGE (last_at);
CREATE INDEX detector_cells_ingest_xid ON detector_cells
    USING brin (ingest_xid) WITH (autosummarize = on);

-- Creates the partition of detector_cells for one UTC hour, if missing.
CREATE FUNCTION ensure_detector_cells_partition(hour timestamptz) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    start timestamptz := date_trunc('hour', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF detector_cells FOR VALUES FROM (%L) TO (%L)',
        'detector_cells_p' || to_char(start AT TIME ZONE 'UTC', 'YYYYMMDDHH24'),
        start, start + interval '1 hour');
END
$$;

-- Nothing reads results by the transaction that stored them any more.
DROP INDEX probe_results_ingest_xid;
ALTER TABLE probe_results DROP COLUMN ingest_xid;
