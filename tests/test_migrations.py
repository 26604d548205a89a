"""Migrations: idempotent, safe to run from several processes at once, TimescaleDB used where present."""

from __future__ import annotations

import subprocess
import sys

import psycopg

from gridhub.db import features, migrate, migration_files


def test_migrations_apply_twice_without_harm(make_database):
    url = make_database()
    first = migrate(url)
    assert first == [v for v, _ in migration_files()]
    assert migrate(url) == []
    with psycopg.connect(url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        views = {r[0] for r in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert {"devices", "readings", "events", "device_state", "quarantine", "workers"} <= tables
    assert "latest_readings" in views  # the latest values live in device_state; the old shape stays readable


def test_latest_values_move_into_device_state(make_database):
    """A database from before the latest values moved into device_state keeps them, readable as before."""
    from gridhub.db import _ensure_timescaledb

    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        _ensure_timescaledb(conn)
        conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL"
                     " DEFAULT now())")
        for version, sql in migration_files():
            if version < "20261127170000":
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    with psycopg.connect(url) as conn:
        # the rows an import made then, written as that schema had them (today's importer writes today's columns
        # and audit rows, which this old schema does not have)
        conn.execute("INSERT INTO districts (id, name) VALUES ('siming', '思明区')")
        conn.execute("INSERT INTO streets (id, district_id, name) VALUES ('xiagang', 'siming', '厦港街道')")
        conn.execute("INSERT INTO communities (id, street_id, name) VALUES ('shapowei', 'xiagang', '沙坡尾社区')")
        conn.execute("INSERT INTO grids (id, community_id, name) VALUES ('g-xg-01', 'shapowei', '一网格')")
        conn.execute("INSERT INTO buildings (id, grid_id, name, floors) VALUES ('b-12', 'g-xg-01', '12号楼', 7)")
        for dev in ("sa-0001", "sa-0002"):
            conn.execute("INSERT INTO devices (id, kind, building_id, floor) VALUES (%s, 'smoke_alarm', 'b-12', 3)",
                         (dev,))
            conn.execute("INSERT INTO device_state (device_id) VALUES (%s)", (dev,))
        conn.execute("DELETE FROM device_state WHERE device_id = 'sa-0002'")
        conn.execute("INSERT INTO latest_readings (device_id, metric, ts, value) VALUES"
                     " ('sa-0001', 'battery_pct', '2026-11-01 08:00:00.123+00', '87'),"
                     " ('sa-0001', 'smoke', '2026-11-01 09:00:00+00', 'false'),"
                     " ('sa-0002', 'battery_pct', '2026-11-02 08:00:00+00', '55')")
    assert "20261127170000_latest_in_device_state" in migrate(url)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT device_id, latest, latest_until FROM device_state WHERE latest <> '{}'"
                            " ORDER BY device_id").fetchall()
        assert [(d, v) for d, v, _ in rows] == [("sa-0001", {"battery_pct": 87, "smoke": False}),
                                                 ("sa-0002", {"battery_pct": 55})]
        assert rows[0][2] == 1_793_523_600_000  # 2026-11-01 09:00 UTC, the newer of the two
        view = conn.execute("SELECT metric, ts, value FROM latest_readings WHERE device_id = 'sa-0001'"
                            " ORDER BY metric").fetchall()
        assert [(m, t.isoformat(), v) for m, t, v in view] == [
            ("battery_pct", "2026-11-01T08:00:00.123000+00:00", 87), ("smoke", "2026-11-01T09:00:00+00:00", False)]


def test_concurrent_migrations_do_not_conflict(make_database):
    url = make_database()
    code = "import sys; from gridhub.db import migrate; print(len(migrate(sys.argv[1])))"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    applied = sorted(int(out.strip()) for out, _ in results)
    assert applied == [0, 0, 0, len(migration_files())]  # exactly one process did the work
    with psycopg.connect(url) as conn:
        n = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert n is not None and n[0] == len(migration_files())


def test_readings_and_events_are_hypertables_when_timescaledb_is_installed(db_url):
    with psycopg.connect(db_url) as conn:
        feats = features(conn)
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        if available is None:
            # plain PostgreSQL: the same tables, without hypertables
            assert not feats.timescaledb
            return
        assert feats.timescaledb, "timescaledb is installed on the server but was not enabled"
        hyper = {r[0] for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {"readings", "events"} <= hyper
        interval = conn.execute(
            "SELECT time_interval FROM timescaledb_information.dimensions WHERE hypertable_name = 'readings'"
        ).fetchone()
        assert interval is not None and interval[0].days == 1


def test_duplicate_reading_is_refused_by_the_unique_key(db_url):
    with psycopg.connect(db_url) as conn:
        for _ in range(2):
            conn.execute(
                "INSERT INTO readings (ts, device_id, seq, metric, value) VALUES"
                " ('2026-11-01T00:00:00Z', 'sp-0001', -1, 'pressure_mpa', 0.3) ON CONFLICT DO NOTHING"
            )
        n = conn.execute("SELECT count(*) FROM readings WHERE device_id = 'sp-0001' AND ts = '2026-11-01T00:00:00Z'"
                         ).fetchone()
        conn.rollback()
    assert n is not None and n[0] == 1
