"""The hub's own parts on PostgreSQL under Patroni (issue 15 item 4): `gridhub ingest` and `gridhub alerts` as
processes on the cluster's multi-host URL (`target_session_attrs=read-write`, the database migrated through it), a
private mosquitto, and a paced QoS 1 stream from devices that resend what the broker has not acknowledged, while in
turn

1. the primary's postgres is killed with SIGKILL (Patroni promotes the synchronous standby at once), and
2. the whole primary node is killed (Patroni and postgres: the leader key expires after its ttl),

with a fire alarm published right after each kill, while the database is away. At the end: what the devices
published is exactly what is stored, every (device, seq) once (a batch whose COMMIT lost its connection was retried
on the new primary and acknowledged only then); each fire alarm made exactly one task; both parts kept their pids
(they waited for the database instead of exiting). The failover times, the longest time nothing was stored and the
alarms' time to a task are printed, never asserted."""

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

import psycopg
import pytest
from alerts_support import Device, add_devices
from faults import (
    ResendingDevice,
    distinct,
    free_ports,
    health,
    join_devices,
    missing,
    one,
    private_hub,
    rows,
    wait_stored,
)
from ingest_env import Hub, start_ingest_process
from polling import wait_for

from gridhub.services.patroni import PatroniCluster, PgNode

DATABASE = "gridhub_hub"
STREAM = {"sa-0001": ("battery_pct", 80.0), "sa-0002": ("battery_pct", 85.0), "sa-0201": ("battery_pct", 90.0),
          "sp-0001": ("pressure_mpa", 0.40), "sp-0201": ("pressure_mpa", 0.45)}  # values no rule raises an alert on
RATE = 30.0  # readings/s of each device: 150/s in all, running through both failovers
CHUNK = 100  # readings a device publishes before it waits for their PUBACKs
MAX_PER_DEVICE = 30_000  # a bound, should the scenario drag on
GRID = "g-xg-02"
# one smoke alarm per fire incident, each in a building of its own
ALARMS = {"start": "pf-sa-1", "postgres_killed": "pf-sa-2", "node_killed": "pf-sa-3"}


def _values(value: float) -> Callable[[int], float]:
    return lambda seq: round(value + (seq % 5) / 100, 2)


def _fire_tasks(conn: psycopg.Connection[Any], device: str) -> int:
    return one(conn, "SELECT count(*) FROM tasks WHERE device_id = %s AND type = 'fire_alarm'", (device,))


class Part:
    """`python -m gridhub.cli <part>` on the hub's (multi-host) URL, in a process group of its own, its health on
    `port`, its output in `<part>.log`."""

    def __init__(self, hub: Hub, part: str, tmp_path: Path, port: int) -> None:
        self.part, self.port = part, port
        self.log = tmp_path / f"{part}.log"
        if part == "ingest":
            self.proc = start_ingest_process(hub, f"pf-{part}", self.log, GRIDHUB_HEALTH_PORT=str(port))
        else:
            env = {**hub.env(f"pf-{part}"), "GRIDHUB_HEALTH_PORT": str(port)}
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", part], env=env, stdout=out,
                                             stderr=subprocess.STDOUT, cwd=str(hub.settings.data_dir),
                                             start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> None:
        code = self.proc.poll()
        assert code is None, f"{self.part} (pid {self.proc.pid}) exited with {code}:\n{self.text()[-4000:]}"

    def healthy(self) -> bool:
        self.alive()
        h = health(self.port)
        return h is not None and h[0] == 200 and h[1].get("pid") == self.proc.pid

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                if self.part == "ingest":
                    self.proc.kill()
                else:  # and the telemetry process with it
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


class Stored:
    """Samples the number of readings stored (on whichever node is primary, through the multi-host URL) every
    0.25 s on a thread of its own, to print how long nothing was stored around each failover."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="stored-sampler", daemon=True)
        self.thread.start()

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.wait(0.25):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, autocommit=True)
                self.samples.append((time.monotonic(), one(conn, "SELECT count(*) FROM readings")))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def first_growth_after(self, since: float) -> float | None:
        """When the count first grew after `since` (the primary killed): ingest storing again."""
        at_kill = max((n for t, n in self.samples if t <= since), default=0)
        return next((t for t, n in self.samples if t > since and n > at_kill), None)

    def longest_still(self, since: float) -> float:
        """The longest time after `since` in which the stored count did not grow."""
        grew = [t for (t, n), (_, before) in zip(self.samples[1:], self.samples, strict=False) if n > before]
        times = [since] + [t for t in grew if t > since]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


@pytest.fixture
def hub(cluster: PatroniCluster, tmp_path: Path) -> Iterator[Hub]:
    """The hub's database on the cluster, created and migrated through the multi-host URL (make_hub migrates and
    imports the registry with it), its private mosquitto, and one smoke alarm per fire alarm in a building of its
    own."""

    name = f"{DATABASE}_{uuid.uuid4().hex[:8]}"

    def make_database() -> str:
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return cluster.url(name)

    with private_hub(make_database, tmp_path) as h:
        assert h.db_url == cluster.url(name) and "target_session_attrs=read-write" in h.db_url
        for n, device in enumerate(ALARMS.values(), start=1):
            add_devices(h.db_url, h.settings, h.broker, f"pfb-{n}", GRID, [(device, "smoke_alarm", None)])
        yield h


def _failover(cluster: PatroniCluster, what: str, kill: Callable[[PgNode], None], published: Callable[[], None],
              parts: list[Part]) -> tuple[PgNode, PgNode, float, float]:
    """Kill the primary with `kill`, call `published` (a fire alarm while the database is away), wait for another
    node to lead (REST) and to answer /primary; (old, new, time of the kill, seconds to the new leader)."""
    old = cluster.primary()
    assert old is not None and cluster.leader() == old.name, f"no primary before {what}: {cluster.members()}"
    killed = time.monotonic()
    kill(old)
    published()

    def new_leader() -> str | None:
        for p in parts:
            p.alive()
        leader = cluster.leader()
        return leader if leader is not None and leader != old.name else None

    leader = wait_for(new_leader, 180, f"a new leader after {what}", interval=0.1)
    promoted = time.monotonic() - killed
    new = cluster.node(str(leader))
    wait_for(lambda: cluster.primary() == new, 60, f"{new.name} to answer /primary", interval=0.2)
    return old, new, killed, promoted


def test_ingest_and_alerts_through_patroni_failovers(cluster: PatroniCluster, hub: Hub, tmp_path: Path) -> None:
    url = hub.db_url
    base = free_ports(2)
    ingest = Part(hub, "ingest", tmp_path, base)
    alerts = Part(hub, "alerts", tmp_path, base + 1)
    parts = [ingest, alerts]
    stop = threading.Event()
    devices: list[ResendingDevice] = []
    lines: list[str] = []
    sampler = Stored(url)
    alarm_at: dict[str, float] = {}
    task_after: dict[str, float] = {}

    def published() -> int:
        return sum(d.confirmed for d in devices)

    def streaming(what: str) -> None:
        for d in devices:
            assert d.is_alive() and d.error is None, f"{d.device} stopped before {what}: {d.error!r}"
        for p in parts:
            p.alive()

    def alarm(when: str) -> None:
        dev = Device(hub.settings, ALARMS[when])
        try:
            dev.event("alarm")
        finally:
            dev.close()
        alarm_at[when] = time.monotonic()

    def task_of(when: str, timeout: float = 180) -> None:
        def made() -> bool:
            for p in parts:
                p.alive()
            try:
                with psycopg.connect(url, autocommit=True) as c:
                    return _fire_tasks(c, ALARMS[when]) >= 1
            except psycopg.OperationalError:
                return False
        wait_for(made, timeout, f"the fire alarm {when} to become a task", interval=0.3)
        task_after[when] = time.monotonic() - alarm_at[when]

    def stored_now() -> int:
        """Distinct readings stored, asked of the primary through the multi-host URL (a new connection each time:
        right after a promotion the URL may find no node that takes writes yet)."""
        with psycopg.connect(url, autocommit=True) as c:
            return distinct(c)

    def progress(what: str, more: int = 1000, timeout: float = 240) -> None:
        target = wait_for(stored_now, 120, "the primary to answer", interval=0.5, ignore=(psycopg.OperationalError,))
        target += more

        def grew() -> bool:
            for p in parts:
                p.alive()
            return stored_now() >= target
        wait_for(grew, timeout, f"{more} more readings stored {what}", interval=0.5, ignore=(psycopg.OperationalError,))
        lines.append(f"stream flowing {what}: published {published()}, stored {stored_now()}")

    try:
        wait_for(ingest.healthy, 90, "ingest's health to answer 200", interval=0.3)
        wait_for(alerts.healthy, 90, "alerts' health to answer 200", interval=0.3)
        wait_for(lambda: ingest.text().count(" connected (MQTT") >= 1, 90, "ingest connected to the broker")
        pids = {p.part: p.proc.pid for p in parts}
        with psycopg.connect(url, autocommit=True) as conn:
            probe = Device(hub.settings, ALARMS["start"])  # alerts' sessions are new: heartbeats until it evaluates one
            try:
                def heard() -> bool:
                    alerts.alive()
                    probe.event("heartbeat")
                    return one(conn, "SELECT count(*) FROM rule_events WHERE device_id = %s", (probe.id,)) > 0
                wait_for(heard, 90, "the alerts part to evaluate events", interval=0.5)
            finally:
                probe.close()
        base_ms = int(time.time() * 1000) - 2 * MAX_PER_DEVICE - 60_000
        devices += [ResendingDevice(hub, d, metric, _values(value), base_ms, chunk=CHUNK, count=MAX_PER_DEVICE,
                                    rate=RATE, stop=stop) for d, (metric, value) in STREAM.items()]
        for d in devices:
            d.start()
        alarm("start")
        task_of("start")
        progress("at the start", 2000)

        # 1. SIGKILL of the primary's postgres: Patroni (primary_start_timeout 0) promotes the synchronous standby
        streaming("the postgres SIGKILL")

        def kill_postgres(node: PgNode) -> None:
            pid = cluster.postmaster_pid(node)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

        old, new, killed, promoted = _failover(cluster, "the postgres SIGKILL", kill_postgres,
                                               lambda: alarm("postgres_killed"), parts)
        progress("after the postgres SIGKILL")
        task_of("postgres_killed")
        back = sampler.first_growth_after(killed)
        lines.append(f"postgres SIGKILLed on {old.name}: {new.name} leads {promoted:.1f} s after; readings stored "
                     f"again {(back - killed) if back else float('nan'):.1f} s after; nothing stored for at most "
                     f"{sampler.longest_still(killed):.1f} s; the alarm's task {task_after['postgres_killed']:.1f} s "
                     "after its PUBACK")
        started = time.monotonic()
        cluster.wait_ready(240)  # the old primary back as the synchronous standby (pg_rewind)
        lines.append(f"{old.name} back as the standby {time.monotonic() - started:.1f} s later")

        # 2. SIGKILL of the whole primary node: nobody releases the leader key, the standby takes over after its ttl
        streaming("the node SIGKILL")

        def kill_node(node: PgNode) -> None:
            patroni, postgres = cluster.patroni_pid(node), cluster.postmaster_pid(node)
            assert patroni is not None and postgres is not None
            os.kill(patroni, signal.SIGKILL)
            os.kill(postgres, signal.SIGKILL)

        old, new, killed, promoted = _failover(cluster, "the node SIGKILL", kill_node, lambda: alarm("node_killed"),
                                               parts)
        progress("after the node SIGKILL")
        task_of("node_killed")
        back = sampler.first_growth_after(killed)
        lines.append(f"node {old.name} SIGKILLed (Patroni and postgres): {new.name} leads {promoted:.1f} s after; "
                     f"readings stored again {(back - killed) if back else float('nan'):.1f} s after; nothing stored "
                     f"for at most {sampler.longest_still(killed):.1f} s; the alarm's task "
                     f"{task_after['node_killed']:.1f} s after its PUBACK")
        cluster.start_patroni(old)
        started = time.monotonic()
        cluster.wait_ready(240)
        lines.append(f"{old.name} restarted, back as the standby {time.monotonic() - started:.1f} s later")

        streaming("the end")
        stop.set()
        join_devices(devices, 300)
        total = published()
        assert total == sum(d.sent for d in devices)
        with psycopg.connect(url, autocommit=True) as conn:
            stored = wait_stored(conn, total)
            stored_rows = rows(conn)
            tasks = {device: _fire_tasks(conn, device) for device in ALARMS.values()}
            all_fire = one(conn, "SELECT count(*) FROM tasks WHERE type = 'fire_alarm'")
            resent = sum(d.resent for d in devices)
            duplicates = one(conn, "SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'gridhub_duplicates_total'")
            lines.append(f"published {total}, stored {stored} (rows {stored_rows}, resent by the devices {resent}, "
                         f"duplicates dropped by the store {duplicates}); fire alarm tasks {tasks} ({all_fire} in all)")
            lines.append(f"ingest waited for the database {ingest.text().count('waiting for the database')} times, "
                         f"alerts {alerts.text().count('waiting for the database')} times; ingest lost its lease "
                         f"{ingest.text().count(' lost partition ')} times, alerts "
                         f"{alerts.text().count('lost partition')}; ingest retried "
                         f"{ingest.text().count('was already stored')} batches whose COMMIT had gone through unanswered"
                         f" and held back the PUBACKs of {ingest.text().count('not acknowledging')}"
                         " batches for want of a lease confirmation")
            summary = "\n".join(lines)
            print("\n" + summary)
            assert stored == total, (f"published {total}, stored {stored}; missing by device: "
                                     f"{missing(conn, devices)}\n{summary}")
            assert stored_rows == stored, f"a reading was stored twice: {stored_rows} rows for {stored}\n{summary}"
            assert tasks == dict.fromkeys(ALARMS.values(), 1), f"fire alarm tasks: {tasks}\n{summary}"
            assert all_fire == len(ALARMS)
        for p in parts:
            p.alive()
            assert p.proc.pid == pids[p.part]
            wait_for(p.healthy, 60, f"{p.part}'s health to answer 200 again", interval=0.5)
    finally:
        stop.set()
        for d in devices:
            d.join(30)
        sampler.stop.set()
        sampler.thread.join(10)
        codes = {p.part: p.stop() for p in parts}
        for p in parts:
            print(f"--- {p.part} (exit {codes[p.part]})\n{p.text()[-3000:]}")


def _kill_postgres(cluster: PatroniCluster) -> Callable[[PgNode], None]:
    def kill(node: PgNode) -> None:
        pid = cluster.postmaster_pid(node)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    return kill


def test_the_api_answers_after_a_failover(cluster: PatroniCluster, hub: Hub) -> None:
    """The API on the multi-host URL: requests before a SIGKILL of the primary's postgres are answered; once another
    node leads and takes writes, every request is answered again, none with a 500 from a pooled connection the
    failover closed (without the pools' check=, the first two after the failover answered 500)."""
    from fastapi.testclient import TestClient

    from gridhub.api.app import create_app
    from gridhub.auth import set_password

    with psycopg.connect(hub.db_url) as conn:
        set_password(conn, "w-001", "pw-w-001-secret")
    with TestClient(create_app(hub.settings), raise_server_exceptions=False) as client:
        login = client.post("/api/v1/auth/token", data={"username": "w-001", "password": "pw-w-001-secret"})
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        for _ in range(25):  # enough at once that the pool holds several connections
            assert client.get("/api/v1/devices", headers=auth).status_code == 200
        cluster.wait_ready(240)
        old, new, _, promoted = _failover(cluster, "the postgres SIGKILL", _kill_postgres(cluster), lambda: None, [])

        def writable() -> bool:
            with psycopg.connect(hub.db_url, autocommit=True) as c:
                return c.info.port == new.pg_port
        wait_for(writable, 60, f"{new.name} to take connections", interval=0.2, ignore=(psycopg.OperationalError,))
        codes = [client.get("/api/v1/devices", headers=auth).status_code for _ in range(25)]
        print(f"\napi: {old.name} -> {new.name} in {promoted:.1f} s; the 25 requests after it answered {codes}")
        assert set(codes) == {200}, f"answers after the failover: {codes}"
    cluster.wait_ready(240)
