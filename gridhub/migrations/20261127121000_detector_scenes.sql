-- The clear scene each camera's detector has learned (its lighting states at working size), so that
-- a restarted `gridhub detect` goes on from it instead of learning again from whatever is in view.
-- `fingerprint` names the ROI and sizes it was learned for; a different one is not used.
CREATE TABLE IF NOT EXISTS detector_scenes (
    camera_id   text PRIMARY KEY,
    fingerprint text        NOT NULL,
    data        bytea       NOT NULL,
    saved_at    timestamptz NOT NULL DEFAULT now()
);
