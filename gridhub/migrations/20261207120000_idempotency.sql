-- Idempotent writes for the worker page's offline queue (api/idempotency.py): the first answer to a person's
-- `Idempotency-Key` is kept, written in the same transaction as the action it answers, and a request repeating
-- the key gets that answer back without the action being taken again. Kept 7 days (gridhub/housekeeping.py).

CREATE TABLE IF NOT EXISTS idempotency_keys (
    worker_id   text        NOT NULL,
    key         text        NOT NULL,                -- the client's Idempotency-Key (1-128 of [A-Za-z0-9_:.-])
    method      text        NOT NULL,
    path        text        NOT NULL,
    fingerprint text        NOT NULL,                -- sha256 of method, path and body: a key reused for another
                                                     -- request is refused (422), not answered with the wrong answer
    status      integer     NOT NULL,
    response    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_idx ON idempotency_keys (created_at);
