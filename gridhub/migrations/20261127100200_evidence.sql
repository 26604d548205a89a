-- Evidence images (detector findings and workers' photos), in the database so that any API process can serve them.
CREATE TABLE IF NOT EXISTS evidence (
    id           text PRIMARY KEY,
    device_id    text,
    task_id      text,
    kind         text        NOT NULL CHECK (kind IN ('detection', 'photo')),
    content_type text        NOT NULL DEFAULT 'image/jpeg',
    data         bytea       NOT NULL,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS evidence_device_idx ON evidence (device_id, created_at DESC);
CREATE INDEX IF NOT EXISTS evidence_task_idx ON evidence (task_id, created_at DESC);
