-- Detection v3: a failure that comes back with the same explanation soon
-- after its incident resolved reopens that incident instead of paging a
-- new one. The reopening is an event of its own; the incident's version
-- moves on with it, so its next resolution is a new (incident, event,
-- version) too.
ALTER TABLE incident_events DROP CONSTRAINT incident_events_event_check;
ALTER TABLE incident_events ADD CONSTRAINT incident_events_event_check
    CHECK (event IN ('incident.opened', 'incident.updated', 'incident.resolved',
                     'incident.reopened', 'incident.reminder'));

-- The detector asks, every pass, which incidents resolved within
-- `reopen_within`.
CREATE INDEX incidents_resolved_at ON incidents (resolved_at) WHERE resolved_at IS NOT NULL;
