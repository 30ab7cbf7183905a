-- The results of one probe request (a confirmation or a person's one-off
-- probe), found without scanning the window: the detector counts each
-- confirmation's results at every pass while its candidate is tracked, and
-- did it by a scan of the window's partitions (2.6 s a pass at 10 M
-- results). Partial: scheduled results, nearly all of them, are not in it.
CREATE INDEX probe_results_request ON probe_results (request_id)
    WHERE request_id IS NOT NULL;
