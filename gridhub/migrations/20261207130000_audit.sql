-- The audit trail (issue 13): who did what, when, from where. Append-only for the hub: rows are inserted, never
-- updated; retention like tasks (kept).
CREATE TABLE IF NOT EXISTS audit_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text,                     -- worker id, 'system', 'cli:<os user>', or null for an unknown log-in name
    action   text        NOT NULL,     -- e.g. login.ok, login.failed, login.throttled, device.command, task.accept,
                                       -- registry.import, devices.credentials, devices.rotate, worker.deactivated
    target   text,                     -- what it was done to: a worker, device or task id, a file name
    address  text,                     -- the client's address (after trusted X-Forwarded-For), or the host for the CLI
    detail   jsonb       NOT NULL DEFAULT '{}'::jsonb   -- never a password, token or key
);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at DESC, id DESC);
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor, at DESC);
CREATE INDEX IF NOT EXISTS audit_log_action_idx ON audit_log (action, at DESC);
