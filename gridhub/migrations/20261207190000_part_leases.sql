-- Issue 15 (CONTRACT §8): partitions held by lease. Each part (ingest, alerts, detect) cuts its work into P
-- partitions; an instance holds a partition while its lease has not expired (the database's clock), renews it, and
-- releases it on a clean stop. `epoch` rises on every change of holder: a fencing token that a holder checks before
-- it acknowledges anything, so that one that stalled past its lease (SIGSTOP) and woke up acknowledges nothing more.
-- gridhub/leases.py is the only writer.
CREATE TABLE IF NOT EXISTS part_leases (
    part       text        NOT NULL,
    partition  integer     NOT NULL CHECK (partition >= 0),
    holder     text,
    expires_at timestamptz,
    epoch      bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (part, partition)
);

-- The instances of each part, by heartbeat: the live ones (seen within a lease) share the partitions fairly; each
-- says how many partitions it was started with, so that an instance started with another number is refused.
CREATE TABLE IF NOT EXISTS part_instances (
    part       text        NOT NULL,
    holder     text        NOT NULL,
    partitions integer     NOT NULL CHECK (partitions > 0),
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (part, holder)
);
