-- Each change row is published to MQTT once: the publisher that claims it (row lock) sets published_at after
-- the broker acknowledged it. The alert engine's priority lane publishes its own rows right after commit, the
-- notifier catches up on every row still unpublished (in id order per entity). Rows the old single cursor had
-- already passed count as published.
ALTER TABLE changes ADD COLUMN IF NOT EXISTS published_at timestamptz;
UPDATE changes SET published_at = at
 WHERE published_at IS NULL AND id <= (SELECT last_id FROM change_publish_cursor WHERE id = 1);
CREATE INDEX IF NOT EXISTS changes_unpublished_idx ON changes (id) WHERE published_at IS NULL;
