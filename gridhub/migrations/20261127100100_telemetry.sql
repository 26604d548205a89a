-- Readings, events, the latest state of every device, and the quarantine (CONTRACT §1).
-- seq is -1 when the device sent none, so that a message without seq still dedupes on (device, ts).
CREATE TABLE IF NOT EXISTS readings (
    ts          timestamptz      NOT NULL,
    device_id   text             NOT NULL,
    seq         bigint           NOT NULL DEFAULT -1,
    metric      text             NOT NULL,
    value       double precision,
    value_json  jsonb,
    received_at timestamptz      NOT NULL DEFAULT now(),
    UNIQUE (device_id, metric, ts, seq)
);
CREATE INDEX IF NOT EXISTS readings_device_metric_ts_idx ON readings (device_id, metric, ts DESC);

CREATE TABLE IF NOT EXISTS events (
    ts          timestamptz NOT NULL,
    device_id   text        NOT NULL,
    seq         bigint      NOT NULL DEFAULT -1,
    type        text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, ts, seq)
);
CREATE INDEX IF NOT EXISTS events_device_ts_idx ON events (device_id, ts DESC);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day',
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('events', 'ts', chunk_time_interval => interval '1 day',
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;

-- The newest value of every metric of every device: one row per (device, metric), moved only forward in ts.
CREATE TABLE IF NOT EXISTS latest_readings (
    device_id text        NOT NULL,
    metric    text        NOT NULL,
    ts        timestamptz NOT NULL,
    value     jsonb       NOT NULL,
    PRIMARY KEY (device_id, metric)
);

-- Liveness of every device.
CREATE TABLE IF NOT EXISTS device_state (
    device_id   text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    online      boolean     NOT NULL DEFAULT false,
    last_seen   timestamptz,
    status      text,
    status_at   timestamptz,
    last_seq    bigint,
    seq_gaps    bigint      NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS quarantine (
    id               bigserial PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    topic            text        NOT NULL,
    device_id        text,
    reason           text        NOT NULL CHECK (reason IN ('invalid_json', 'schema', 'out_of_range', 'unknown_event',
                                    'clock_skew', 'unregistered_device', 'oversize', 'bad_topic', 'bad_frame')),
    detail           text        NOT NULL,
    payload          text        NOT NULL,
    payload_encoding text        NOT NULL DEFAULT 'utf8' CHECK (payload_encoding IN ('utf8', 'base64')),
    payload_truncated boolean    NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS quarantine_received_idx ON quarantine (received_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS quarantine_reason_idx ON quarantine (reason, received_at DESC, id DESC);

-- Counters shared by every process (Prometheus /metrics reads them), updated in the same transaction as the
-- work they count, so that they agree with the data after a crash.
CREATE TABLE IF NOT EXISTS counters (
    name   text   NOT NULL,
    labels text   NOT NULL DEFAULT '',
    value  double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (name, labels)
);
