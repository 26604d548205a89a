-- Notifications (CONTRACT §6): who can be reached how, push subscriptions, and one row per delivery.
-- Deliveries are written in the transaction of the task change that needs them (alerts/notify/plan.py), sent by
-- `gridhub notify run` (alerts/notify/sender.py), and never deleted before their task.

ALTER TABLE workers ADD COLUMN IF NOT EXISTS wecom_userid text;
ALTER TABLE workers ADD COLUMN IF NOT EXISTS dingtalk_mobile text;

-- A drill (演练) is delivered marked 【演练】, never by SMS, and is left out of the KPIs.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS drill boolean NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS push_subscriptions (
    id         text PRIMARY KEY,
    worker_id  text        NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    endpoint   text        NOT NULL,
    p256dh     text        NOT NULL,
    auth       text        NOT NULL,
    user_agent text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_ok_at timestamptz,
    UNIQUE (worker_id, endpoint)
);

CREATE TABLE IF NOT EXISTS notify_deliveries (
    id            text PRIMARY KEY,                -- the delivery id (X-Gridhub-Delivery), the same on every attempt
    task_id       text        NOT NULL,
    change_id     bigint,                          -- the changes row that caused it (null for a fallback step)
    event         text        NOT NULL CHECK (event IN ('task.opened', 'task.escalated', 'task.reminder', 'task.changed')),
    recipient     text,                            -- worker id; null for a group robot's message to its group
    mentions      text[]      NOT NULL DEFAULT '{}',  -- the people a group message concerns
    route         text        NOT NULL,            -- assignee | level1 | level2 | level3
    channel       text        NOT NULL,            -- the channel's name in the notify file
    channel_type  text        NOT NULL,
    severity      text        NOT NULL,
    drill         boolean     NOT NULL DEFAULT false,
    fallback      boolean     NOT NULL DEFAULT false,  -- sent only if the task is still not accepted at due_at
    state         text        NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts      integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL,
    due_at        timestamptz NOT NULL,            -- not before (fallback steps, quiet hours, storm holds, retries)
    expires_at    timestamptz NOT NULL,
    lease_until   timestamptz,                     -- while 'sending': a sender holds it; after, its outcome is unknown
    sent_at       timestamptz,
    finished_at   timestamptz,
    rolled_into   text,                            -- a storm roll-up: the delivery whose message carried this one
    answer        text,                            -- the provider's answer (or why skipped), trimmed
    payload       jsonb       NOT NULL             -- the task shape at the change, for the message
);
CREATE INDEX IF NOT EXISTS notify_deliveries_due_idx ON notify_deliveries (due_at) WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS notify_deliveries_task_idx ON notify_deliveries (task_id, created_at);
CREATE INDEX IF NOT EXISTS notify_deliveries_recipient_idx ON notify_deliveries (recipient, created_at DESC);
CREATE INDEX IF NOT EXISTS notify_deliveries_sent_idx ON notify_deliveries (channel, recipient, sent_at DESC)
    WHERE state = 'sent';

-- An action taken offline and replayed later keeps the person's own time in `at`; `received_at` is when the hub
-- got it (deadlines and KPIs use that). Null when the two are the same.
ALTER TABLE task_history ADD COLUMN IF NOT EXISTS received_at timestamptz;
