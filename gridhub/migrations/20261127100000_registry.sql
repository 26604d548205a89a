-- The registry of places, people and devices (CONTRACT §2).
CREATE TABLE IF NOT EXISTS districts (
    id   text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE IF NOT EXISTS streets (
    id          text PRIMARY KEY,
    district_id text NOT NULL REFERENCES districts (id),
    name        text NOT NULL
);

CREATE TABLE IF NOT EXISTS communities (
    id        text PRIMARY KEY,
    street_id text NOT NULL REFERENCES streets (id),
    name      text NOT NULL
);

CREATE TABLE IF NOT EXISTS grids (
    id           text PRIMARY KEY,
    community_id text NOT NULL REFERENCES communities (id),
    name         text NOT NULL
);

CREATE TABLE IF NOT EXISTS buildings (
    id      text PRIMARY KEY,
    grid_id text NOT NULL REFERENCES grids (id),
    name    text NOT NULL,
    floors  integer CHECK (floors IS NULL OR floors > 0)
);
CREATE INDEX IF NOT EXISTS buildings_grid_idx ON buildings (grid_id);

CREATE TABLE IF NOT EXISTS workers (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    phone         text,
    role          text NOT NULL CHECK (role IN ('grid_worker', 'grid_head', 'street_officer', 'bureau', 'admin')),
    street_id     text REFERENCES streets (id),
    password_hash text,
    password_set_at timestamptz,
    active        boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS worker_grids (
    worker_id text NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    grid_id   text NOT NULL REFERENCES grids (id),
    PRIMARY KEY (worker_id, grid_id)
);
CREATE INDEX IF NOT EXISTS worker_grids_grid_idx ON worker_grids (grid_id);

CREATE TABLE IF NOT EXISTS devices (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    kind        text NOT NULL CHECK (kind IN ('smoke_alarm', 'stairwell_light', 'sprinkler_pressure', 'camera')),
    building_id text NOT NULL REFERENCES buildings (id),
    floor       integer,
    place       text,
    heartbeat_s integer CHECK (heartbeat_s IS NULL OR heartbeat_s > 0),
    camera      jsonb,
    retired     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS devices_building_idx ON devices (building_id);
CREATE INDEX IF NOT EXISTS devices_kind_idx ON devices (kind);
