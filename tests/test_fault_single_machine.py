"""The single-machine fault test of issue 15: `gridhub up` (every part) on a mosquitto of its own (persistence on) and
the real PostgreSQL behind a TCP proxy, a QoS 1 stream of readings from devices that resend what the broker has not
acknowledged running throughout, while in turn

1. the ingest part is killed with SIGKILL (its supervisor starts it again),
2. the broker is restarted gracefully,
3. the database is away for 60 s (the proxy cut),
4. the alerts part is killed with SIGKILL right after a fire alarm is published;

fire alarms are published at points along the way (one right after the ingest SIGKILL, one after the broker restart,
one during the outage, one right before the alerts SIGKILL). At the end: what the devices published is exactly what
is stored (every (device, seq) once), each alarm made exactly one task, and the supervisor restarted only the two
parts killed, once each (none during the outage)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alerts_support import Device, add_devices
from faults import (
    DbProxy,
    ResendingDevice,
    distinct,
    free_ports,
    health,
    join_devices,
    missing,
    one,
    private_hub,
    restart_broker,
    rows,
    wait_stored,
)
from ingest_env import SECRET, Hub
from polling import wait_for

from gridhub.runtime import HEALTH_PARTS, health_port

STREAM = {"sa-0001": ("battery_pct", 80.0), "sa-0002": ("battery_pct", 85.0), "sa-0201": ("battery_pct", 90.0),
          "sp-0001": ("pressure_mpa", 0.40), "sp-0201": ("pressure_mpa", 0.45)}  # values no rule raises an alert on
RATE = 50.0  # readings/s of each device, evenly spaced: 250/s in all, the stream lasts through every fault (~30,000)
CHUNK = 100  # readings a device publishes before it waits for their PUBACKs
MAX_PER_DEVICE = 12_000  # a bound, should the scenario drag on: the stream is still running at every fault
OUTAGE_S = 60.0
GRID = "g-xg-02"
# one smoke alarm per fire alarm incident, each in a building of its own (two in one building would be one incident)
ALARMS = {"start": "fs-sa-1", "after_ingest_kill": "fs-sa-2", "after_broker_restart": "fs-sa-3",
          "during_outage": "fs-sa-4", "before_alerts_kill": "fs-sa-5"}
PARTS = ("ingest", "alerts", "detect", "notify", "api")


def _values(value: float) -> Callable[[int], float]:
    return lambda seq: round(value + (seq % 5) / 100, 2)


def _fire_tasks(conn: psycopg.Connection[Any], device: str) -> int:
    return one(conn, "SELECT count(*) FROM tasks WHERE device_id = %s AND type = 'fire_alarm'", (device,))


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    with private_hub(make_database, tmp_path) as h:
        for n, device in enumerate(ALARMS.values(), start=1):
            add_devices(h.db_url, h.settings, h.broker, f"fsb-{n}", GRID, [(device, "smoke_alarm", None)])
        yield h


@pytest.fixture
def proxy(hub: Hub) -> Iterator[DbProxy]:
    p = DbProxy.of(hub.db_url)
    yield p
    p.cut()


class Up:
    """`gridhub up` with every part, its database behind the proxy; its log (the supervisor's and the parts') in
    one file."""

    def __init__(self, hub: Hub, proxy: DbProxy, tmp_path: Path) -> None:
        nfile = tmp_path / "notify.yaml"
        nfile.write_text("channels:\n  city: {type: webhook, url: \"http://127.0.0.1:9/hook\", secret: \"s3cret-hook\"}\n"
                         "routes:\n  critical: {assignee: [city]}\n  normal: {assignee: [city]}\n", encoding="utf-8")
        data = tmp_path / "up-data"
        data.mkdir()
        base = free_ports(len(HEALTH_PARTS))
        self.ports = {part: health_port(part, base=base, api_port=0) or 0 for part in HEALTH_PARTS}
        env = {**os.environ, "GRIDHUB_DATABASE_URL": proxy.url(hub.db_url), "GRIDHUB_MQTT_URL": hub.settings.mqtt_url or "",
               "GRIDHUB_SECRET_KEY": SECRET, "GRIDHUB_DATA_DIR": str(data), "GRIDHUB_INSTANCE_ID": "fault1",
               "GRIDHUB_NOTIFY_FILE": str(nfile), "GRIDHUB_HEALTH_PORT": str(base)}
        self.log = tmp_path / "up.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "up", "--parts", ",".join(PARTS),
                                          "--port", str(free_ports(1))], env=env, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pid(self, part: str, *, not_: int | None = None, timeout: float = 90) -> int:
        """The pid of the part once its health answers 200 (from a process other than `not_`)."""
        def ok() -> int | None:
            assert self.proc.poll() is None, f"gridhub up exited:\n{self.text()[-4000:]}"
            h = health(self.ports[part])
            return h[1]["pid"] if h is not None and h[0] == 200 and h[1].get("pid") != not_ else None
        return int(wait_for(ok, timeout, f"{part}'s health to answer 200" + (" from a new process" if not_ else ""),
                            interval=0.2))

    def ingest_connections(self) -> int:
        return self.text().count(" connected (MQTT")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def test_nothing_lost_nothing_doubled_through_the_faults_of_one_machine(hub: Hub, proxy: DbProxy,
                                                                        tmp_path: Path) -> None:
    up = Up(hub, proxy, tmp_path)
    stop = threading.Event()
    devices: list[ResendingDevice] = []
    phases: list[str] = []

    def published() -> int:
        return sum(d.confirmed for d in devices)

    def note(conn: psycopg.Connection[Any], what: str) -> None:
        phases.append(f"{what}: published {published()}, stored {distinct(conn)}")

    def streaming(what: str) -> None:
        for d in devices:
            assert d.is_alive() and d.error is None, f"{d.device} stopped before {what}: {d.error!r}"

    def alarm(conn: psycopg.Connection[Any], when: str) -> None:
        dev = Device(hub.settings, ALARMS[when])
        try:
            dev.event("alarm")
        finally:
            dev.close()
        note(conn, f"fire alarm {ALARMS[when]} ({when}) published")

    def task_of(conn: psycopg.Connection[Any], when: str, timeout: float = 120) -> None:
        wait_for(lambda: _fire_tasks(conn, ALARMS[when]) >= 1, timeout, f"the fire alarm {when} to become a task",
                 interval=0.3)

    def progress(conn: psycopg.Connection[Any], what: str, more: int = 1000, timeout: float = 180) -> None:
        """The stream flows again: `more` readings stored beyond what was stored now."""
        target = distinct(conn) + more
        wait_for(lambda: distinct(conn) >= target, timeout, f"{more} more readings stored {what}", interval=0.3)
        note(conn, f"stream flowing {what}")

    try:
        pids = {part: up.pid(part) for part in HEALTH_PARTS}
        wait_for(lambda: up.ingest_connections() >= 1, 60, "ingest connected to the broker")
        base_ms = int(time.time() * 1000) - 2 * MAX_PER_DEVICE - 60_000
        devices += [ResendingDevice(hub, d, metric, _values(value), base_ms, chunk=CHUNK, count=MAX_PER_DEVICE,
                                    rate=RATE, stop=stop) for d, (metric, value) in STREAM.items()]
        for d in devices:
            d.start()
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            probe = Device(hub.settings, ALARMS["start"])  # alerts' sessions are new: an alarm before they exist is
            try:  # no alarm of theirs, so heartbeats until alerts has evaluated one
                def heard() -> bool:
                    probe.event("heartbeat")
                    return one(conn, "SELECT count(*) FROM rule_events WHERE device_id = %s", (probe.id,)) > 0
                wait_for(heard, 60, "the alerts part to evaluate events", interval=0.5)
            finally:
                probe.close()
            alarm(conn, "start")
            task_of(conn, "start")
            progress(conn, "at the start", 3000)

            # 1. SIGKILL of ingest; its supervisor starts it again, which resumes the session
            streaming("the ingest SIGKILL")
            connections = up.ingest_connections()
            os.kill(pids["ingest"], signal.SIGKILL)
            note(conn, "ingest killed")
            alarm(conn, "after_ingest_kill")
            pids["ingest"] = up.pid("ingest", not_=pids["ingest"])
            wait_for(lambda: up.ingest_connections() > connections, 90, "the new ingest connected")
            task_of(conn, "after_ingest_kill")
            progress(conn, "after the ingest SIGKILL")

            # 2. a graceful broker restart (SIGTERM: mosquitto saves its persistence file), down for a moment
            streaming("the broker restart")
            connections = up.ingest_connections()
            restart_broker(hub, while_down=lambda: note(conn, "broker stopped"))
            wait_for(lambda: up.ingest_connections() > connections, 120, "ingest reconnected after the broker restart")
            note(conn, "broker back")
            alarm(conn, "after_broker_restart")
            task_of(conn, "after_broker_restart")
            progress(conn, "after the broker restart")

            # 3. the database away for 60 s: every part waits, none is restarted
            streaming("the database outage")
            for part in HEALTH_PARTS:
                assert up.pid(part) == pids[part], f"{part} was restarted before the outage"
            log_at_cut = len(up.text())
            proxy.cut()
            cut_at = time.monotonic()
            note(conn, "database cut")
            alarm(conn, "during_outage")
            while time.monotonic() - cut_at < OUTAGE_S:
                assert up.proc.poll() is None, f"gridhub up exited during the outage:\n{up.text()[-4000:]}"
                time.sleep(0.5)
            streaming("the end of the outage")
            note(conn, "database restored")
            proxy.restore()
            task_of(conn, "during_outage")
            for part in HEALTH_PARTS:
                assert up.pid(part) == pids[part], f"{part} was restarted during the outage"
            during = up.text()[log_at_cut:]
            assert "exited with" not in during, f"the supervisor restarted a part during the outage:\n{during[-4000:]}"
            progress(conn, "after the outage")

            # 4. SIGKILL of alerts right after a fire alarm: the alarm still makes one task, and only one
            streaming("the alerts SIGKILL")
            alarm(conn, "before_alerts_kill")
            os.kill(pids["alerts"], signal.SIGKILL)
            note(conn, "alerts killed")
            pids["alerts"] = up.pid("alerts", not_=pids["alerts"])
            task_of(conn, "before_alerts_kill")
            progress(conn, "after the alerts SIGKILL")

            streaming("the end")
            stop.set()
            join_devices(devices, 300)
            total = published()
            assert total == sum(d.sent for d in devices)
            stored = wait_stored(conn, total)
            note(conn, "the end")
            stored_rows = rows(conn)
            tasks = {device: _fire_tasks(conn, device) for device in ALARMS.values()}
            all_fire = one(conn, "SELECT count(*) FROM tasks WHERE type = 'fire_alarm'")
            resent = sum(d.resent for d in devices)
            summary = "\n".join([*phases, f"published {total}, stored {stored} (rows {stored_rows}, resent {resent}); "
                                 f"fire alarm tasks {tasks} ({all_fire} in all)"])
            print(summary)
            assert stored == total, (f"published {total}, stored {stored}; missing by device: "
                                     f"{missing(conn, devices)}\n{summary}")
            assert stored_rows == stored, (f"a reading was stored twice: {stored_rows} rows for {stored} readings\n"
                                           f"{summary}")
            assert tasks == dict.fromkeys(ALARMS.values(), 1), f"fire alarm tasks: {tasks}\n{summary}"
            assert all_fire == len(ALARMS)
        for part in HEALTH_PARTS:
            assert up.pid(part) == pids[part], f"{part} was restarted again"
        assert up.proc.poll() is None
    finally:
        stop.set()
        for d in devices:
            d.join(30)
        up.stop()
        print(up.text()[-8000:])
    log = up.text()
    restarts = {part: log.count(f"part {part} exited with") for part in PARTS}
    assert restarts == {"ingest": 1, "alerts": 1, "detect": 0, "notify": 0, "api": 0}, (
        f"the supervisor's restarts: {restarts} (one each for the two parts killed, nothing else)")
