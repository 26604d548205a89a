-- Issue 14 (CONTRACT §7): patrol plans and patrol tasks. A `patrol` task is a row of `tasks` (type 'patrol'); its
-- plan period, checklist and results live here. Planned patrols are one per unit and period (the unique index makes
-- generation idempotent across restarts and processes); `kind = 'alert'` patrols are the extra ones a related alert
-- opens for a major hazard unit (重大危险源: "at any time"). A `hazard` task found on a patrol names the patrol in
-- `source_task_id`; a task about a unit (patrol, hazard, recheck) names it in `unit_id`.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS unit_id text;
CREATE INDEX IF NOT EXISTS tasks_unit_idx ON tasks (unit_id) WHERE unit_id IS NOT NULL;
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_resolution_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_resolution_check
    CHECK (resolution IS NULL OR resolution IN ('fixed', 'false_alarm', 'duplicate', 'referred_119', 'recovered',
                                                'done'));

CREATE TABLE IF NOT EXISTS patrols (
    task_id      text PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    unit_id      text NOT NULL REFERENCES units (id),
    class        text NOT NULL,
    kind         text NOT NULL DEFAULT 'plan' CHECK (kind IN ('plan', 'alert')),
    frequency    text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL CHECK (period_end > period_start),
    planned_for  date NOT NULL,
    checklist    jsonb NOT NULL,
    results      jsonb,
    note         text,
    done_at      timestamptz,
    done_by      text,
    hazards      integer NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS patrols_plan_period_key ON patrols (unit_id, period_start) WHERE kind = 'plan';
CREATE INDEX IF NOT EXISTS patrols_period_idx ON patrols (period_start, period_end);
CREATE INDEX IF NOT EXISTS patrols_unit_idx ON patrols (unit_id, period_start DESC);
