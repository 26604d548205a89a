"""The parts ride out a database outage (issue 15): `gridhub up` with ingest, alerts, detect and notify, their
database behind a TCP proxy this test cuts for about 20 s (a proxy of the real PostgreSQL, not a stand-in for it).
Every part stays up (same pid, the supervisor restarts nothing), its own health endpoint answers 503 "waiting for
database" meanwhile, says it once in the log and once that it is back; a reading published during the outage is
stored exactly once afterwards (ingest), a fire alarm published during the outage becomes exactly one task
afterwards, and a frame sent to the detector during the outage is judged afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import psycopg
import pytest
from alerts_support import Device, add_devices
from faults import DbProxy, free_ports, health
from polling import wait_for

from gridhub.mqtt import make_client
from gridhub.runtime import health_port
from gridhub.settings import Settings

GRID = "g-xg-02"
PARTS = ("ingest", "alerts", "detect", "notify")  # health ports: base + 0..3 (gridhub.runtime.health_port)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:  # noqa: S310 - local
        return str(r.read().decode())


@pytest.fixture
def proxy(db_url: str) -> Iterator[DbProxy]:
    target = urlsplit(db_url)
    p = DbProxy((target.hostname or "127.0.0.1", target.port or 5432))
    yield p
    p.cut()


@pytest.fixture
def fleet(db_url: str, settings: Settings, broker: Any) -> None:
    add_devices(db_url, settings, broker, "wb-1", GRID, [("wd-sa-1", "smoke_alarm", None)])


def test_parts_under_gridhub_up_wait_through_a_database_outage(
        db_url: str, settings: Settings, broker: Any, proxy: DbProxy, fleet: None, tmp_path: Path) -> None:
    with psycopg.connect(db_url, autocommit=True) as db:
        # earlier tests' instances are gone: their alerts lease is free for this one at once
        db.execute("UPDATE part_leases SET holder = NULL, expires_at = NULL WHERE part = 'alerts'")
        db.execute("DELETE FROM part_instances WHERE part = 'alerts'")
    nfile = tmp_path / "notify.yaml"
    nfile.write_text("channels:\n  city: {type: webhook, url: \"http://127.0.0.1:9/hook\", secret: \"s3cret-hook\"}\n"
                     "routes:\n  critical: {assignee: [city]}\n  normal: {assignee: [city]}\n", encoding="utf-8")
    base = free_ports(4)
    ports = {part: health_port(part, base=base, api_port=0) for part in PARTS}
    env = {**os.environ, "GRIDHUB_DATABASE_URL": proxy.url(db_url), "GRIDHUB_MQTT_URL": settings.mqtt_url or "",
           "GRIDHUB_SECRET_KEY": settings.secret_key or "", "GRIDHUB_DATA_DIR": str(tmp_path),
           "GRIDHUB_INSTANCE_ID": "waitdb", "GRIDHUB_NOTIFY_FILE": str(nfile), "GRIDHUB_HEALTH_PORT": str(base)}
    log_path = tmp_path / "up.log"
    with log_path.open("ab") as out:
        up = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "up", "--parts", ",".join(PARTS),
                               "--port", str(free_ports(1))], env=env, stdout=out, stderr=subprocess.STDOUT)
    frames = make_client(settings.mqtt_url or "", "waitdb-test-frames", protocol=paho.MQTTv311)
    dev: Device | None = None
    try:
        pids = {}
        for part, port in ports.items():
            ok = wait_for(lambda port=port: (h := health(port)) is not None and h[0] == 200 and h, 60,
                          f"{part}'s health endpoint to answer 200")
            pids[part] = ok[1]["pid"]
        with psycopg.connect(db_url, autocommit=True) as db:
            dev = Device(settings, "wd-sa-1")

            def heard() -> bool:
                assert dev is not None
                dev.event("heartbeat")
                return db.execute("SELECT 1 FROM rule_events WHERE device_id = 'wd-sa-1'").fetchone() is not None

            wait_for(heard, 60, "the alerts part to evaluate the device's events", interval=0.5)
            wait_for(lambda: db.execute("SELECT 1 FROM events WHERE device_id = 'wd-sa-1' AND type = 'heartbeat'")
                     .fetchone() is not None, 60, "ingest to store the device's events")

            proxy.cut()
            outage = time.monotonic()
            dev.event("alarm")  # the broker holds it: the alerts part cannot store what it causes
            reading_ts = int(time.time() * 1000)
            dev.reading(reading_ts, battery_pct=77)  # the broker holds it too: ingest cannot store it
            reading_seq = dev.seq
            addr = urlsplit(settings.mqtt_url or "")
            frames.connect(addr.hostname or "127.0.0.1", addr.port or 1883)
            frames.loop_start()
            info = frames.publish(f"{settings.topic_prefix}/devices/wd-cam-9/frame", b"not a camera of ours", qos=1)
            info.wait_for_publish(10)
            for part, port in ports.items():
                h = wait_for(lambda port=port: (r := health(port)) is not None and r[0] == 503 and r, 60,
                             f"{part}'s health to say it waits for the database")
                body = h[1]
                assert body["status"] == "waiting" and body["waiting_for"] == "database" and body["since"]
                assert body["pid"] == pids[part]
                text = json.dumps(body)
                assert "postgresql" not in text and str(proxy.port) not in text and "password" not in text
                assert f'gridhub_part_waiting{{dependency="database",part="{part}"}} 1.0' in metrics(port)
            assert fire_tasks(db) == 0
            while time.monotonic() - outage < 20:  # the outage lasts about 20 s: long enough for many retries
                time.sleep(0.5)
                assert up.poll() is None
            proxy.restore()

            wait_for(lambda: fire_tasks(db) == 1, 60, "the alarm published during the outage to become a task")
            wait_for(lambda: stored_reading(db, reading_ts, reading_seq) == 1, 60,
                     "ingest to store the reading published during the outage")
            wait_for(lambda: db.execute("SELECT count(*) FROM quarantine WHERE device_id = 'wd-cam-9'"
                                        " AND reason = 'unregistered_device'").fetchone() == (1,), 60,
                     "the frame sent during the outage to be judged (quarantined: not a registered camera)")
            for part, port in ports.items():
                h = wait_for(lambda port=port: (r := health(port)) is not None and r[0] == 200 and r, 60,
                             f"{part}'s health to be well again")
                assert h[1]["pid"] == pids[part], f"{part} was restarted"
                assert f'gridhub_part_waiting{{dependency="database",part="{part}"}} 0.0' in metrics(port)
            time.sleep(2)
            assert fire_tasks(db) == 1
            assert stored_reading(db, reading_ts, reading_seq) == 1
            assert db.execute("SELECT count(*) FROM events WHERE device_id = 'wd-sa-1' AND type = 'alarm'"
                              " AND seq = %s", (reading_seq - 1,)).fetchone() == (1,)
        assert up.poll() is None
    finally:
        frames.loop_stop()
        frames.disconnect()
        if dev is not None:
            dev.close()
        up.terminate()
        up.wait(30)
        print(log_path.read_text()[-6000:])
    log = log_path.read_text()
    assert "exited with" not in log and "restarting" not in log  # the supervisor restarted nothing
    for part in PARTS:
        assert log.count(f"{part}: waiting for the database") == 1, part
        assert log.count(f"{part}: the database is back after") == 1, part


def stored_reading(db: psycopg.Connection[Any], ts_ms: int, seq: int) -> int:
    """How many rows the reading (device wd-sa-1, battery_pct, at `ts_ms` with `seq`) has in `readings`."""
    row = db.execute("SELECT count(*) FROM readings WHERE device_id = 'wd-sa-1' AND metric = 'battery_pct'"
                     " AND seq = %s AND ts = 'epoch'::timestamptz + %s * interval '1 millisecond'", (seq, ts_ms)).fetchone()
    return int(row[0]) if row else 0


def fire_tasks(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM tasks WHERE device_id = 'wd-sa-1' AND type = 'fire_alarm'").fetchone()
    return int(row[0]) if row else 0


def test_a_part_started_while_the_database_is_away_waits_for_it(
        db_url: str, settings: Settings, broker: Any, proxy: DbProxy, tmp_path: Path) -> None:
    """`gridhub alerts` started (or restarted by its supervisor) during an outage waits at start-up instead of
    exiting in a loop, then runs once the database answers."""
    proxy.cut()
    port = free_ports(1)
    env = {**os.environ, "GRIDHUB_DATABASE_URL": proxy.url(db_url), "GRIDHUB_MQTT_URL": settings.mqtt_url or "",
           "GRIDHUB_SECRET_KEY": settings.secret_key or "", "GRIDHUB_DATA_DIR": str(tmp_path),
           "GRIDHUB_INSTANCE_ID": "waitdb-start", "GRIDHUB_HEALTH_PORT": str(port)}
    log_path = tmp_path / "alerts.log"
    with log_path.open("ab") as out:
        part = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "alerts"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "waiting for the database" in log_path.read_text(), 60, "the part to say it waits")
        deadline = time.monotonic() + 8  # several back-off rounds: still the same process, still waiting
        while time.monotonic() < deadline:
            assert part.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)
        proxy.restore()
        wait_for(lambda: (h := health(port)) is not None and h[0] == 200, 90, "the part to start once it can")
        assert part.poll() is None
    finally:
        part.terminate()
        part.wait(30)
    assert "database is back" in log_path.read_text()
