-- Issue 14 (CONTRACT §7): hazard reports (社区提报). A `hazard` task opened from a report keeps who reported it (the
-- reporter may read that task outside their scope: GET /api/v1/reports/{id}), the report's fields (`detail`: category,
-- place, description, photos, referrals) and when it was confirmed (立案); a `recheck` task names the hazard it checks.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS reported_by text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS detail jsonb;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS confirmed_at timestamptz;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS source_task_id text;
CREATE INDEX IF NOT EXISTS tasks_reported_by_idx ON tasks (reported_by, opened_at DESC) WHERE reported_by IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_source_task_idx ON tasks (source_task_id) WHERE source_task_id IS NOT NULL;
