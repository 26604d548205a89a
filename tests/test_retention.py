"""Retention: readings and events older than their period are dropped (by chunk on TimescaleDB), newer kept."""

from __future__ import annotations

import psycopg

from gridhub.db import RETENTION_LOCK, migrate
from gridhub.housekeeping import retention_once
from gridhub.settings import Settings


def test_old_data_goes_recent_data_stays(make_database, tmp_path):
    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for age in ("401 days", "10 days", "1 hour"):
            conn.execute("INSERT INTO readings (ts, device_id, seq, metric, value)"
                         " VALUES (now() - %s::interval, 'sp-1', 1, 'pressure_mpa', 0.3)", (age,))
            conn.execute("INSERT INTO events (ts, device_id, seq, type) VALUES (now() - %s::interval, 'sa-1', 1, 'alarm')",
                         (age,))
        for age in ("31 days", "29 days"):
            conn.execute("INSERT INTO quarantine (received_at, topic, reason, detail, payload)"
                         " VALUES (now() - %s::interval, 't', 'schema', 'd', 'p')", (age,))
    s = Settings(database_url=url, data_dir=tmp_path, secret_key="k" * 40)
    out = retention_once(s)
    assert out is not None and out["quarantine"] == 1
    with psycopg.connect(url) as conn:
        readings = conn.execute("SELECT count(*), min(ts) > now() - interval '400 days' FROM readings").fetchone()
        events = conn.execute("SELECT count(*) FROM events").fetchone()
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()
    assert readings == (2, True)
    assert events == (2,)
    assert quarantined == (1,)


def test_a_second_process_skips_while_one_holds_the_lock(make_database, tmp_path):
    url = make_database()
    migrate(url)
    s = Settings(database_url=url, data_dir=tmp_path, secret_key="k" * 40)
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (RETENTION_LOCK,))
        assert retention_once(s) is None
        holder.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))
    assert retention_once(s) is not None
