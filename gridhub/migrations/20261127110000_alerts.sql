-- Alerts, grid tasks, durable timers, per-device rule state, shard leases and the ordered change log
-- (CONTRACT §4, §4.1, §4.2). Written by the alerts part; the API reads them and runs task actions through
-- gridhub.alerts.tasks.

CREATE TABLE IF NOT EXISTS alerts (
    id          text PRIMARY KEY,
    device_id   text,
    building_id text,
    grid_id     text,
    type        text        NOT NULL,
    severity    text        NOT NULL CHECK (severity IN ('critical', 'high', 'normal', 'low')),
    state       text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'cleared')),
    acked       boolean     NOT NULL DEFAULT false,
    acked_by    text,
    acked_at    timestamptz,
    count       integer     NOT NULL DEFAULT 1,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    cleared_at  timestamptz,
    task_id     text,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
-- One active alert per (device, type); a fire incident is one per (building, type). INSERT ... ON CONFLICT
-- names these indexes' columns and predicates, so concurrent raises can never make two.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_active_per_device
    ON alerts (device_id, type) WHERE state = 'active' AND type <> 'fire_incident';
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_active_per_building
    ON alerts (building_id, type) WHERE state = 'active' AND type = 'fire_incident';
CREATE INDEX IF NOT EXISTS alerts_last_seen_idx ON alerts (last_seen DESC, id DESC);
CREATE INDEX IF NOT EXISTS alerts_grid_idx ON alerts (grid_id, last_seen DESC);
CREATE INDEX IF NOT EXISTS alerts_building_type_idx ON alerts (building_id, type, last_seen DESC);

CREATE TABLE IF NOT EXISTS tasks (
    id               text PRIMARY KEY,
    type             text        NOT NULL,
    severity         text        NOT NULL CHECK (severity IN ('critical', 'high', 'normal', 'low')),
    state            text        NOT NULL DEFAULT 'open'
                                 CHECK (state IN ('open', 'accepted', 'on_site', 'resolved', 'closed')),
    grid_id          text,
    building_id      text,
    device_id        text,
    assignee         text,
    escalation_level integer     NOT NULL DEFAULT 0,
    accept_due       timestamptz,
    resolve_due      timestamptz,
    opened_at        timestamptz NOT NULL,
    accepted_at      timestamptz,
    resolved_at      timestamptz,
    closed_at        timestamptz,
    resolution       text CHECK (resolution IS NULL OR resolution IN ('fixed', 'false_alarm', 'duplicate', 'referred_119')),
    count            integer     NOT NULL DEFAULT 1,
    last_seen        timestamptz NOT NULL,
    incident_key     text        NOT NULL
);
-- One task per incident (device + alert type, or building for a fire incident) until a person closes it.
CREATE UNIQUE INDEX IF NOT EXISTS tasks_one_open_per_incident ON tasks (incident_key) WHERE state <> 'closed';
CREATE INDEX IF NOT EXISTS tasks_opened_idx ON tasks (opened_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS tasks_grid_state_idx ON tasks (grid_id, state);
CREATE INDEX IF NOT EXISTS tasks_assignee_state_idx ON tasks (assignee, state);

CREATE TABLE IF NOT EXISTS task_alerts (
    task_id  text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    alert_id text NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, alert_id)
);
CREATE INDEX IF NOT EXISTS task_alerts_alert_idx ON task_alerts (alert_id);

CREATE TABLE IF NOT EXISTS task_history (
    id      bigserial PRIMARY KEY,
    task_id text        NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at      timestamptz NOT NULL,
    actor   text        NOT NULL,
    action  text        NOT NULL,
    note    text
);
CREATE INDEX IF NOT EXISTS task_history_task_idx ON task_history (task_id, id);

-- Durable timers: offline deadlines, accept/resolve escalations, reminders, noisy-device checks.
-- Fired with SELECT ... FOR UPDATE SKIP LOCKED; `shard` >= 0 ties a device timer to the instance holding
-- that device's shard, -1 lets any instance fire it.
CREATE TABLE IF NOT EXISTS timers (
    kind    text        NOT NULL,
    key     text        NOT NULL,
    due_at  timestamptz NOT NULL,
    shard   integer     NOT NULL DEFAULT -1,
    payload jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS timers_due_idx ON timers (due_at);

-- Per-device rule state (hold windows, last values), flushed by the instance holding the device's shard.
CREATE TABLE IF NOT EXISTS rule_state (
    device_id  text        NOT NULL,
    rule       text        NOT NULL,
    state      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, rule)
);

-- Events already evaluated (QoS 1 redelivery, a second instance, a restart): each is evaluated once.
-- Also the fire-alarm history that noisy_device counts. Pruned after two days.
CREATE TABLE IF NOT EXISTS rule_events (
    device_id text        NOT NULL,
    ts        timestamptz NOT NULL,
    seq       bigint      NOT NULL DEFAULT -1,
    type      text        NOT NULL,
    PRIMARY KEY (device_id, ts, seq)
);
CREATE INDEX IF NOT EXISTS rule_events_alarm_idx ON rule_events (device_id, type, ts);

-- Shards of devices leased by alerts instances; an instance evaluates only the devices of shards it holds.
CREATE TABLE IF NOT EXISTS alert_shards (
    shard      integer PRIMARY KEY,
    holder     text,
    expires_at timestamptz
);
INSERT INTO alert_shards (shard) SELECT g FROM generate_series(0, 63) g ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS alert_instances (
    id         text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL
);

-- The ordered log of every alert and task change, written in the same transaction as the change, in commit
-- order (writers hold a transaction advisory lock from the insert to the commit). Payload is the REST shape;
-- `recipients` are the workers whose task topic it goes to. The API's SSE stream reads it (Last-Event-ID).
CREATE TABLE IF NOT EXISTS changes (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text        NOT NULL CHECK (kind IN ('alert', 'task')),
    entity_id  text        NOT NULL,
    grid_id    text,
    payload    jsonb       NOT NULL,
    recipients text[]      NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS changes_entity_idx ON changes (entity_id, id);

-- How far the MQTT notifier has published the change log (one row; its lock elects the publisher).
CREATE TABLE IF NOT EXISTS change_publish_cursor (
    id      integer PRIMARY KEY CHECK (id = 1),
    last_id bigint  NOT NULL
);
INSERT INTO change_publish_cursor (id, last_id) VALUES (1, 0) ON CONFLICT DO NOTHING;
