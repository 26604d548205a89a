-- Issue 15 (CONTRACT §8): the alerts part holds its partitions by lease (gridhub/leases.py: part_leases and
-- part_instances, part 'alerts'), each partition being the persistent sessions named by it
-- (gridhub-alerts-p<k>-events, -telemetry), instead of 64 shards leased by every instance of a hot standby that
-- received every message. The shard leases go; a device timer is now tied to the device's partition, fired only by
-- the partition's holder (-1 still lets any holder fire it). Every device is on partition 0 while there is one
-- partition (mosquitto), which is what the hub ran with before.
DROP TABLE IF EXISTS alert_shards;
DROP TABLE IF EXISTS alert_instances;

ALTER TABLE timers RENAME COLUMN shard TO partition;
UPDATE timers SET partition = 0 WHERE partition > 0;
COMMENT ON COLUMN timers.partition IS
    'the device''s partition (alerts/partitions.py): fired by its lease holder only; -1: by any holder';
