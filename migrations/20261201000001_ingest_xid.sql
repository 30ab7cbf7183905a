-- The transaction that stored each result, so the detector reads only what
-- was committed since its last pass (cost with the new results, not with
-- the window). A result is new to a pass when its transaction is visible
-- in the pass's snapshot and was not in the previous pass's snapshot
-- (pg_visible_in_snapshot), which holds whatever order transactions commit
-- in. Stored as bigint because BRIN has no xid8 operator class: rows are
-- appended in about transaction order, so a BRIN index finds the recent
-- ones for the price of a few pages and costs the ingest next to nothing.
-- Results stored before this migration have none; the detector reads them
-- when it rebuilds its window (at start, and when it takes the lease).
ALTER TABLE probe_results ADD COLUMN ingest_xid bigint;
ALTER TABLE probe_results ALTER COLUMN ingest_xid
    SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX probe_results_ingest_xid ON probe_results
    USING brin (ingest_xid) WITH (autosummarize = on);
