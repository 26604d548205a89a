-- Each reading row paid for three indexes; the unique key (device_id, metric, ts, seq) already serves every
-- query by device, metric and time, so the other two only slowed ingest down.
DROP INDEX IF EXISTS readings_device_metric_ts_idx;
DROP INDEX IF EXISTS readings_ts_idx;
DROP INDEX IF EXISTS events_device_ts_idx;
