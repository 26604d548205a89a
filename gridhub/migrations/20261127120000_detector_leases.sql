-- Which `gridhub detect` instance runs each camera's detector (one place per camera, as HOUSE.md asks):
-- expiring leases, renewed by the holder; a lease that has expired may be taken by another instance.
CREATE TABLE IF NOT EXISTS detector_leases (
    camera_id  text PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
