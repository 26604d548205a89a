-- issue 14: GET /api/v1/alerts?start=&end= bounds first_seen while the list is ordered by last_seen, so no index
-- served the range: a day 300 days back among 1M alerts scanned alerts_last_seen_idx down to it (189 ms); with this
-- index the planner reads the day's rows and sorts the page (0.7 ms). Tasks need none: tasks_opened_idx is the
-- list's own order and holds opened_at.
CREATE INDEX IF NOT EXISTS alerts_first_seen_idx ON alerts (first_seen);
