-- Pages that always reach on-call: a durable outbox per event and sink.
--
-- `incident_events` records what happened to an incident (written by the
-- detector in the transaction that made it happen). The alerter fans each
-- event out into one `notification_deliveries` row per configured sink,
-- and each row is retried until a 2xx came back or it expires. Silences
-- hold matching deliveries back, visibly.

CREATE TABLE silences (
    id          bigserial PRIMARY KEY,
    -- A target URL (matches an incident on it, or a path incident that
    -- lists it), or '*' for every target.
    target      text NOT NULL,
    -- Both NULL: the whole target.
    dimension   text,
    value       text,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    comment     text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Ended early by `silence expire`.
    expired_at  timestamptz,
    CHECK (ends_at > starts_at),
    CHECK (value IS NULL OR dimension IS NOT NULL)
);

CREATE TABLE incident_events (
    id            bigserial PRIMARY KEY,
    incident_id   bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    event         text NOT NULL CHECK (event IN ('incident.opened', 'incident.updated',
                                                 'incident.resolved', 'incident.reminder')),
    -- The incident's explanation version the event announces.
    version       integer NOT NULL,
    -- A reminder is for one sink (its `repeat_interval`); NULL: every sink.
    sink          text,
    created_at    timestamptz NOT NULL,
    -- When its deliveries were created (NULL: not yet).
    fanned_out_at timestamptz
);
CREATE UNIQUE INDEX incident_events_once
    ON incident_events (incident_id, event, version) WHERE event <> 'incident.reminder';
CREATE INDEX incident_events_unfanned ON incident_events (id) WHERE fanned_out_at IS NULL;

CREATE TABLE notification_deliveries (
    id              bigserial PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES incident_events (id) ON DELETE CASCADE,
    incident_id     bigint NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    sink            text NOT NULL,
    sink_kind       text NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'expired', 'silenced')),
    -- Completed attempts (a 2xx, or a failure with its error).
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    -- While pending: when it is due; while claimed, the claim's end.
    next_attempt_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    expired_at      timestamptz,
    silenced_by     bigint REFERENCES silences (id),
    -- Who is sending it now (NULL: nobody).
    claimed_by      text,
    UNIQUE (event_id, sink)
);
-- Senders walk a sink's pending rows oldest event first and stop at their
-- batch: no sort of the whole backlog per claim.
CREATE INDEX notification_deliveries_pending
    ON notification_deliveries (sink, event_id) WHERE state = 'pending';
CREATE INDEX notification_deliveries_per_incident
    ON notification_deliveries (incident_id, sink, event_id);
CREATE INDEX notification_deliveries_silenced
    ON notification_deliveries (silenced_by) WHERE state = 'silenced';

-- Notifications the old outbox had not handled become events: the first
-- collector with sinks delivers them.
INSERT INTO incident_events (incident_id, event, version, created_at)
SELECT id, 'incident.opened', 1, opened_at FROM incidents WHERE open_notified_at IS NULL;
INSERT INTO incident_events (incident_id, event, version, created_at)
SELECT incident_id, 'incident.updated', version, explained_at
FROM incident_explanations WHERE notified_at IS NULL AND version > 1
ORDER BY explained_at, version;
INSERT INTO incident_events (incident_id, event, version, created_at)
SELECT id, 'incident.resolved', version, resolved_at FROM incidents
WHERE resolved_at IS NOT NULL AND resolve_notified_at IS NULL;

-- The outbox is the tables above now: one source of truth.
DROP INDEX IF EXISTS incidents_pending_notification;
DROP INDEX IF EXISTS incident_explanations_pending;
ALTER TABLE incidents DROP COLUMN open_notified_at, DROP COLUMN resolve_notified_at;
ALTER TABLE incident_explanations DROP COLUMN notified_at;

-- Every delivery of every event to every sink, newest first: what was
-- sent, what is still being retried and why, what expired or is held by
-- a silence.
CREATE VIEW v_notifications AS
SELECT d.id, d.event_id, d.incident_id, e.event, e.version, d.sink, d.sink_kind, d.state,
       d.attempts, d.last_status, d.last_error,
       CASE WHEN d.state = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
       d.last_attempt_at, d.created_at, d.delivered_at, d.expired_at, d.expires_at,
       d.silenced_by,
       CASE WHEN d.state = 'silenced' THEN
           format('silenced by silence %s until %s: %s', s.id,
                  LEAST(s.ends_at, s.expired_at), s.comment)
       END AS reason
FROM notification_deliveries d
JOIN incident_events e ON e.id = d.event_id
LEFT JOIN silences s ON s.id = d.silenced_by
ORDER BY d.id DESC;

-- Silences, with whether each is in force now.
CREATE VIEW v_silences AS
SELECT id, target, dimension, value, starts_at, ends_at, expired_at, comment, created_by,
       created_at,
       (expired_at IS NULL AND starts_at <= now() AND ends_at > now()) AS active
FROM silences
ORDER BY id DESC;
