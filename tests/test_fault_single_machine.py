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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from alerts_support import Device, add_devices
from faults import DbProxy, free_ports, health
from ingest_env import SECRET, Hub, make_hub, topic
from paho.mqtt.enums import CallbackAPIVersion
from polling import wait_for

from gridhub.accounts import derived_password
from gridhub.runtime import HEALTH_PARTS, health_port

STREAM = {"sa-0001": ("battery_pct", 80.0), "sa-0002": ("battery_pct", 85.0), "sa-0201": ("battery_pct", 90.0),
          "sp-0001": ("pressure_mpa", 0.40), "sp-0201": ("pressure_mpa", 0.45)}  # values no rule raises an alert on
RATE = 50.0  # readings/s of each device, evenly spaced: 250/s in all, the stream lasts through every fault (~30,000)
CHUNK = 100  # readings a device publishes before it waits for their PUBACKs
MAX_PER_DEVICE = 12_000  # a bound, should the scenario drag on: the stream is still running at every fault
CONFIRM_S = 15.0  # how long a device waits for a chunk's PUBACKs before it sends the rest again
STALL_S = 45.0  # how long the stored count may stand still before the test counts what is missing
BROKER_DOWN_S = 3.0
OUTAGE_S = 60.0
GRID = "g-xg-02"
# one smoke alarm per fire alarm incident, each in a building of its own (two in one building would be one incident)
ALARMS = {"start": "fs-sa-1", "after_ingest_kill": "fs-sa-2", "after_broker_restart": "fs-sa-3",
          "during_outage": "fs-sa-4", "before_alerts_kill": "fs-sa-5"}
PARTS = ("ingest", "alerts", "detect", "notify", "api")


class StreamDevice(threading.Thread):
    """One device publishing readings at QoS 1 at RATE until told to stop, like the firmware: a reading counts as
    published only once the broker has acknowledged it; what was not acknowledged (the connection dropped, the broker
    went away) is sent again after reconnecting. `confirmed` counts the distinct readings acknowledged."""

    def __init__(self, hub: Hub, device: str, stop: threading.Event, base_ms: int) -> None:
        super().__init__(name=f"device-{device}", daemon=True)
        self.device, self.stop, self.base_ms = device, stop, base_ms
        self.metric, self.value = STREAM[device]
        self.sent = 0  # readings (seq 0 .. sent - 1) the device has begun to publish
        self.confirmed = 0
        self.resent = 0
        self.error: BaseException | None = None
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device}-{uuid.uuid4().hex[:6]}",
                             protocol=paho.MQTTv311)
        client.username_pw_set(device, derived_password(SECRET, "device", device))
        client.max_inflight_messages_set(CHUNK)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 2)
        client.connect("127.0.0.1", hub.broker.port, keepalive=10)
        client.loop_start()
        self.client = client

    def _payload(self, seq: int) -> bytes:
        return orjson.dumps({"ts": self.base_ms + 2 * seq, "seq": seq,
                             "metrics": {self.metric: round(self.value + (seq % 5) / 100, 2)}})

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.sent < MAX_PER_DEVICE:
                began = time.monotonic()
                pending = list(range(self.sent, self.sent + CHUNK))
                self.sent += CHUNK
                paced = True  # the first round spread over the chunk's time (a fault finds some in flight, some
                while pending:  # not yet sent); what was not acknowledged is sent again at once
                    wait_for(self.client.is_connected, 120, f"{self.device} connected to the broker", interval=0.05)
                    if not paced:
                        self.resent += len(pending)
                    infos = []
                    for n, seq in enumerate(pending):
                        infos.append((seq, self.client.publish(topic(self.device), self._payload(seq), qos=1)))
                        if paced:
                            time.sleep(max(0.0, began + (n + 1) / RATE - time.monotonic()))
                    paced = False
                    deadline = time.monotonic() + CONFIRM_S
                    pending = [seq for seq, info in infos if not _acknowledged(info, deadline)]
                self.confirmed += CHUNK
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def _acknowledged(info: paho.MQTTMessageInfo, deadline: float) -> bool:
    """Whether the broker acknowledged the publish by `deadline` (False when paho could not send it: not connected,
    or the connection dropped under it)."""
    try:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def _one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def _distinct(conn: psycopg.Connection[Any]) -> int:
    return _one(conn, "SELECT count(DISTINCT (device_id, seq)) FROM readings")


def _fire_tasks(conn: psycopg.Connection[Any], device: str) -> int:
    return _one(conn, "SELECT count(*) FROM tasks WHERE device_id = %s AND type = 'fire_alarm'", (device,))


def _missing(conn: psycopg.Connection[Any], devices: list[StreamDevice]) -> dict[str, str]:
    """The sequence numbers not stored, by device, as ranges (the first 20 ranges of each)."""
    out: dict[str, str] = {}
    for dev in devices:
        rows = conn.execute(
            "SELECT min(s), max(s) FROM (SELECT s, s - row_number() OVER (ORDER BY s) AS grp FROM generate_series(0, "
            "%s - 1) s WHERE NOT EXISTS (SELECT 1 FROM readings WHERE device_id = %s AND seq = s)) m "
            "GROUP BY grp ORDER BY 1 LIMIT 20", (dev.sent, dev.device)).fetchall()
        if rows:
            out[dev.device] = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in rows)
    return out


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    h = make_hub(make_database, tmp_path)
    for n, device in enumerate(ALARMS.values(), start=1):
        add_devices(h.db_url, h.settings, h.broker, f"fsb-{n}", GRID, [(device, "smoke_alarm", None)])
    yield h
    h.broker.stop()


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
    devices: list[StreamDevice] = []
    phases: list[str] = []

    def published() -> int:
        return sum(d.confirmed for d in devices)

    def note(conn: psycopg.Connection[Any], what: str) -> None:
        phases.append(f"{what}: published {published()}, stored {_distinct(conn)}")

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
        target = _distinct(conn) + more
        wait_for(lambda: _distinct(conn) >= target, timeout, f"{more} more readings stored {what}", interval=0.3)
        note(conn, f"stream flowing {what}")

    try:
        pids = {part: up.pid(part) for part in HEALTH_PARTS}
        wait_for(lambda: up.ingest_connections() >= 1, 60, "ingest connected to the broker")
        base_ms = int(time.time() * 1000) - 2 * MAX_PER_DEVICE - 60_000
        devices += [StreamDevice(hub, d, stop, base_ms) for d in STREAM]
        for d in devices:
            d.start()
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            probe = Device(hub.settings, ALARMS["start"])  # alerts' sessions are new: an alarm before they exist is
            try:  # no alarm of theirs, so heartbeats until alerts has evaluated one
                def heard() -> bool:
                    probe.event("heartbeat")
                    return _one(conn, "SELECT count(*) FROM rule_events WHERE device_id = %s", (probe.id,)) > 0
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
            hub.broker.stop()
            note(conn, "broker stopped")
            time.sleep(BROKER_DOWN_S)
            hub.broker.ensure_started()
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
            for d in devices:
                d.join(300)
                assert not d.is_alive(), f"{d.device} still publishing 300 s after the end"
                assert d.error is None, f"{d.device}: {d.error!r}"
            total = published()
            assert total == sum(d.sent for d in devices)
            stored, since = _distinct(conn), time.monotonic()
            while stored < total and time.monotonic() - since < STALL_S:
                time.sleep(0.5)
                if (now := _distinct(conn)) != stored:
                    stored, since = now, time.monotonic()
            note(conn, "the end")
            rows = _one(conn, "SELECT count(*) FROM readings")
            tasks = {device: _fire_tasks(conn, device) for device in ALARMS.values()}
            all_fire = _one(conn, "SELECT count(*) FROM tasks WHERE type = 'fire_alarm'")
            resent = sum(d.resent for d in devices)
            summary = "\n".join([*phases, f"published {total}, stored {stored} (rows {rows}, resent {resent}); "
                                 f"fire alarm tasks {tasks} ({all_fire} in all)"])
            print(summary)
            assert stored == total, (f"published {total}, stored {stored}; missing by device: "
                                     f"{_missing(conn, devices)}\n{summary}")
            assert rows == stored, f"a reading was stored twice: {rows} rows for {stored} readings\n{summary}"
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
