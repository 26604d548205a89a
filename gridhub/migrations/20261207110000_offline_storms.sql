-- Offline storms and recovery (issue 12): the hub resolves a device_offline task whose devices came back and
-- stayed back as `recovered` (alerts/offline.py). A person still cannot choose it (gridhub.alerts.tasks checks
-- the resolutions people may give); the database accepts it from the hub.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_resolution_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_resolution_check
    CHECK (resolution IS NULL OR resolution IN ('fixed', 'false_alarm', 'duplicate', 'referred_119', 'recovered'));

-- The active offline alerts of a building within the storm window, looked up on every new offline alert.
CREATE INDEX IF NOT EXISTS alerts_building_offline_idx ON alerts (building_id, first_seen)
    WHERE type = 'device_offline' AND state = 'active';
