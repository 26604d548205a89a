"""API latency on a district-sized database: p50/p95 of GET /api/v1/summary and of one sprinkler's 7-day hourly
series, through the real HTTP app (uvicorn in a subprocess), printed as JSON.

The data: a fresh database with N devices (a tenth are sprinkler pressure sensors reporting every 5 minutes, the
rest report every 4 hours) over D days of readings, loaded with binary COPY; device state, latest readings, active
alerts and a few thousand tasks for the summary.

    python bench/api.py [--devices 10000] [--days 30] [--requests 300]

Needs PostgreSQL (TimescaleDB used where installed) at GRIDHUB_BENCH_ADMIN_URL
(default postgresql://postgres@127.0.0.1:55432/postgres); the database it makes is dropped at the end
unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

from gridhub.auth import set_password
from gridhub.db import features, migrate

ADMIN_URL = os.environ.get("GRIDHUB_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
SECRET = "bench-secret-" + "b" * 40
PASSWORD = "bench-password"


def progress(msg: str) -> None:
    print(f"[bench/api] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database() -> tuple[str, str]:
    name = f"gridhub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, ADMIN_URL.rpartition("/")[0] + "/" + name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_registry(conn: psycopg.Connection[Any], devices: int) -> list[str]:
    """10 streets × 10 communities × 5 grids, buildings of 10 devices each; returns the sprinkler ids."""
    buildings = math.ceil(devices / 10)
    conn.execute("INSERT INTO districts VALUES ('siming', '思明区')")
    conn.execute("INSERT INTO streets SELECT 'st-' || s, 'siming', '街道' || s FROM generate_series(1, 10) s")
    conn.execute("INSERT INTO communities SELECT 'c-' || s || '-' || c, 'st-' || s, '社区' || s || '-' || c"
                 " FROM generate_series(1, 10) s, generate_series(1, 10) c")
    conn.execute("INSERT INTO grids SELECT 'g-' || s || '-' || c || '-' || g, 'c-' || s || '-' || c, '网格' || g"
                 " FROM generate_series(1, 10) s, generate_series(1, 10) c, generate_series(1, 5) g")
    conn.execute("INSERT INTO buildings SELECT 'b-' || i, (SELECT id FROM grids ORDER BY id OFFSET (i %% 500) LIMIT 1),"
                 " i || '号楼', 12 FROM generate_series(0, %s - 1) i", (buildings,))
    conn.execute(
        "INSERT INTO devices (id, kind, building_id, floor, place) SELECT"
        " CASE WHEN i %% 10 = 0 THEN 'sp-' ELSE 'sa-' END || lpad(i::text, 6, '0'),"
        " CASE WHEN i %% 10 = 0 THEN 'sprinkler_pressure' ELSE 'smoke_alarm' END, 'b-' || (i / 10), 1 + i %% 12, NULL"
        " FROM generate_series(0, %s - 1) i", (devices,))
    conn.execute("INSERT INTO workers (id, name, role) VALUES ('b-001', '孙八', 'bureau')")
    conn.execute("INSERT INTO workers (id, name, role, street_id) VALUES ('s-001', '王五', 'street_officer', 'st-1')")
    return [r[0] for r in conn.execute("SELECT id FROM devices WHERE kind = 'sprinkler_pressure' ORDER BY id")]


def load_readings(conn: psycopg.Connection[Any], devices: list[tuple[str, str]], days: int, end: datetime) -> int:
    """Binary COPY, one day at a time (one hypertable chunk at a time)."""
    start = end - timedelta(days=days)
    rows = 0
    rng = random.Random(7)
    t0 = time.perf_counter()
    for day in range(days):
        day_start = start + timedelta(days=day)
        with conn.cursor() as cur, cur.copy(
                "COPY readings (ts, device_id, seq, metric, value) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["timestamptz", "text", "int8", "text", "float8"])
            for device_id, kind in devices:
                if kind == "sprinkler_pressure":
                    step, metric, base = 300, "pressure_mpa", 0.3
                else:
                    step, metric, base = 4 * 3600, "battery_pct", 90.0
                offset = rng.randrange(step)
                for k in range(offset, 86400, step):
                    ts = day_start + timedelta(seconds=k)
                    cp.write_row((ts, device_id, (day * 86400 + k) // step, metric, base + rng.random() * 0.05))
                    rows += 1
        conn.commit()
        progress(f"readings: day {day + 1}/{days}, {rows:,} rows, {rows / (time.perf_counter() - t0):,.0f} rows/s")
    return rows


def load_state(conn: psycopg.Connection[Any], tasks: int, alerts: int) -> None:
    """Device state and latest readings for every device, active alerts and tasks (a third of them open)."""
    conn.execute("INSERT INTO device_state (device_id, online, last_seen, latest, latest_ts, latest_until)"
                 " SELECT id, random() > 0.05, now(), jsonb_build_object(m, 0.3), jsonb_build_object(m, t), t"
                 " FROM (SELECT id, CASE kind WHEN 'sprinkler_pressure' THEN 'pressure_mpa' ELSE 'battery_pct' END AS m,"
                 " (extract(epoch FROM now()) * 1000)::bigint AS t FROM devices) d")
    conn.execute(
        "INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, state, first_seen, last_seen)"
        " SELECT 'al-' || i, d.id, d.building_id, b.grid_id, 'bench_' || i, (ARRAY['critical','high','normal','low'])[1 + i %% 4],"
        " CASE WHEN i %% 3 = 0 THEN 'active' ELSE 'cleared' END, now() - i * interval '1 minute', now()"
        " FROM generate_series(1, %s) i JOIN devices d ON d.id = (SELECT id FROM devices ORDER BY id OFFSET i LIMIT 1)"
        " JOIN buildings b ON b.id = d.building_id", (alerts,))
    conn.execute(
        "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, device_id, assignee, accept_due,"
        " resolve_due, opened_at, last_seen, incident_key, closed_at)"
        " SELECT 'tk-' || i, 'device_offline', (ARRAY['critical','high','normal','low'])[1 + i %% 4],"
        " (ARRAY['closed','closed','open','accepted','on_site','resolved'])[1 + i %% 6], g.id, NULL, NULL, 'b-001',"
        " now() + (i %% 7 - 3) * interval '1 hour', now() + (i %% 11 - 5) * interval '1 hour',"
        " now() - i * interval '5 minutes', now(), 'bench:' || i,"
        " CASE WHEN i %% 6 < 2 THEN now() END"
        " FROM generate_series(1, %s) i JOIN grids g ON g.id = (SELECT id FROM grids ORDER BY id OFFSET (i %% 500) LIMIT 1)",
        (tasks,))
    conn.commit()


def start_api(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = ("import uvicorn; from gridhub.api.app import create_app; from gridhub.settings import Settings; "
            f"uvicorn.run(create_app(Settings(database_url={url!r}, secret_key={SECRET!r}, mqtt_url=None)), "
            f"host='127.0.0.1', port={port}, log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(base + "/api/v1/me", timeout=2)
            return proc, base
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start") from None
            time.sleep(0.2)


def timed(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = client.get(path, params=params)
    ms = (time.perf_counter() - t0) * 1000
    r.raise_for_status()
    return ms, r.json()


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": round(statistics.median(ordered), 2),
            "p95": round(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)], 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    args = ap.parse_args(argv)

    name, url = create_database()
    proc: subprocess.Popen[bytes] | None = None
    try:
        progress(f"database {name}: migrating")
        migrate(url)
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        t0 = time.perf_counter()
        with psycopg.connect(url) as conn:
            feats = features(conn)
            sprinklers = load_registry(conn, args.devices)
            set_password(conn, "b-001", PASSWORD)
            conn.commit()
            kinds = [(r[0], r[1]) for r in conn.execute("SELECT id, kind FROM devices ORDER BY id")]
            rows = load_readings(conn, kinds, args.days, end)
            load_state(conn, tasks=3000, alerts=600)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        generation_s = time.perf_counter() - t0
        progress(f"loaded {rows:,} readings in {generation_s:.0f} s; starting the API")

        proc, base = start_api(url)
        with httpx.Client(base_url=base, timeout=30) as client:
            token = client.post("/api/v1/auth/token", data={"username": "b-001", "password": PASSWORD}).json()
            client.headers["Authorization"] = f"Bearer {token['access_token']}"
            rng = random.Random(11)
            series_end = datetime.now(UTC)
            series = {"metric": "pressure_mpa", "bucket": "1h", "start": (series_end - timedelta(days=7)).isoformat(),
                      "end": series_end.isoformat()}
            for _ in range(20):  # warm the pool and the caches
                timed(client, "/api/v1/summary")
                timed(client, f"/api/v1/devices/{rng.choice(sprinklers)}/readings", series)
            summary_ms: list[float] = []
            series_ms: list[float] = []
            points = 0
            for _ in range(args.requests):
                ms, body = timed(client, "/api/v1/summary")
                summary_ms.append(ms)
                ms, body = timed(client, f"/api/v1/devices/{rng.choice(sprinklers)}/readings", series)
                series_ms.append(ms)
                points = len(body["points"])
            grids = sum(len(c["grids"]) for s in timed(client, "/api/v1/summary")[1]["streets"] for c in s["communities"])
        result = {
            "devices": args.devices, "days": args.days, "readings": rows, "generation_s": round(generation_s, 1),
            "timescaledb": feats.timescaledb, "continuous_aggregates": feats.continuous_aggregates,
            "summary_grids": grids, "series_points": points,
            "summary_ms": stats(summary_ms), "device_7d_hourly_ms": stats(series_ms), "target_p95_ms": 50,
            "meets_target": stats(summary_ms)["p95"] <= 50 and stats(series_ms)["p95"] <= 50,
        }
        print(json.dumps(result, ensure_ascii=False))
        if args.keep:
            progress(f"kept {url}")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        if not args.keep:
            drop_database(name)


if __name__ == "__main__":
    sys.exit(main())
