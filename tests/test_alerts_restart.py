"""The alerts part as real `gridhub alerts` processes: SIGKILL and restart (the partition's persistent sessions,
taken again once the dead process's lease has expired), an escalation due while down, a restart after the hub was
down for minutes (grace while the backlog drains), two processes at once (one holds the partition, the other stands
by and receives nothing), and concurrent raises straight on the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alerts_support import Device, add_devices, now_ms
from polling import wait_for

from gridhub.alerts import changes, records
from gridhub.alerts.rules import load_rules
from gridhub.settings import Settings

GRID = "g-xg-02"
LEASE_S = "4"  # GRIDHUB_LEASE_S: a restarted process takes the partition over within seconds (the default is 15)


class AlertsProcess:
    """`python -m gridhub.cli alerts` with the session's database and broker."""

    def __init__(self, settings: Settings, instance: str, rules_file: Path, log: Path) -> None:
        self.env = {**os.environ, "GRIDHUB_DATABASE_URL": settings.database_url or "",
                    "GRIDHUB_MQTT_URL": settings.mqtt_url or "", "GRIDHUB_SECRET_KEY": settings.secret_key or "",
                    "GRIDHUB_DATA_DIR": str(settings.data_dir), "GRIDHUB_INSTANCE_ID": instance,
                    "GRIDHUB_RULES_FILE": str(rules_file), "GRIDHUB_LEASE_S": LEASE_S}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with Path(self.log).open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "alerts"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text("offline: {grace_margin_s: 2}\n")
    return path


@pytest.fixture(scope="module")
def fleet(db_url: str, settings: Settings, broker: Any) -> None:
    add_devices(db_url, settings, broker, "kb-1", GRID, [("k1-sa-1", "smoke_alarm", None), ("k1-sa-2", "smoke_alarm", None)])
    add_devices(db_url, settings, broker, "kb-2", GRID, [("k2-sa-1", "smoke_alarm", None)])
    add_devices(db_url, settings, broker, "kb-3", GRID, [(f"k3-sa-{i}", "smoke_alarm", 60) for i in range(1, 11)])
    add_devices(db_url, settings, broker, "kb-4", GRID, [("k4-sa-1", "smoke_alarm", None)])


@pytest.fixture
def procs(settings: Settings, rules_file: Path, tmp_path: Path, fleet: None) -> Iterator[list[AlertsProcess]]:
    made: list[AlertsProcess] = []
    yield made
    for p in made:
        p.stop()
    for p in made:
        if p.log.exists():
            print(p.log.read_text()[-3000:])


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def new_proc(procs: list[AlertsProcess], settings: Settings, rules_file: Path, tmp_path: Path, name: str) -> AlertsProcess:
    p = AlertsProcess(settings, name, rules_file, tmp_path / f"{name}.log")
    procs.append(p)
    p.start()
    return p


def heard(db: psycopg.Connection[Any], device: str) -> bool:
    return db.execute("SELECT 1 FROM rule_events WHERE device_id = %s", (device,)).fetchone() is not None


def subscribed(db: psycopg.Connection[Any], d: Device) -> None:
    """Heartbeats until the alerts process has evaluated one: its session exists from then on."""
    def probe() -> bool:
        d.event("heartbeat")
        return heard(db, d.id)
    wait_for(probe, 30, "the alerts process to subscribe", interval=0.3)


def fire_task(db: psycopg.Connection[Any], device: str) -> str | None:
    row = db.execute("SELECT task_id FROM alerts WHERE device_id = %s AND type = 'fire_alarm' AND task_id IS NOT NULL",
                     (device,)).fetchone()
    return row[0] if row else None


def test_alarm_before_sigkill_becomes_a_task_after_restart_and_escalation_due_while_down_fires(
        settings: Settings, rules_file: Path, tmp_path: Path, procs: list[AlertsProcess],
        db: psycopg.Connection[Any]) -> None:
    p = new_proc(procs, settings, rules_file, tmp_path, "rk")
    d1, d2 = Device(settings, "k1-sa-1"), Device(settings, "k2-sa-1")
    subscribed(db, d1)
    d1.event("alarm")
    p.kill(signal.SIGKILL)
    d2.event("alarm")  # while the hub is dead: queued in its persistent session
    p.start()
    t1 = wait_for(lambda: fire_task(db, "k1-sa-1"), 30, "the alarm sent just before SIGKILL to become a task")
    wait_for(lambda: fire_task(db, "k2-sa-1"), 30, "the alarm sent while dead to become a task")
    assert db.execute("SELECT count(*) FROM tasks WHERE device_id = 'k1-sa-1' AND type = 'fire_alarm'").fetchone() == (1,)

    # stop the hub; its escalation deadline passes while it is down; it fires on return
    p.kill(signal.SIGTERM)
    db.execute("UPDATE tasks SET accept_due = now() - interval '1 minute' WHERE id = %s", (t1,))
    db.execute("UPDATE timers SET due_at = now() - interval '1 minute' WHERE kind = 'escalate' AND key = %s", (t1,))
    assert db.execute("SELECT escalation_level FROM tasks WHERE id = %s", (t1,)).fetchone() == (0,)
    p.start()
    wait_for(lambda: db.execute("SELECT escalation_level FROM tasks WHERE id = %s", (t1,)).fetchone() == (1,), 30,
             "the escalation due while down")
    hist = [r[0] for r in db.execute("SELECT action FROM task_history WHERE task_id = %s ORDER BY id", (t1,))]
    assert hist.count("escalate") == 1
    d1.close()
    d2.close()


def test_restart_after_minutes_down_does_not_mark_every_device_offline(
        settings: Settings, rules_file: Path, tmp_path: Path, procs: list[AlertsProcess],
        db: psycopg.Connection[Any]) -> None:
    p = new_proc(procs, settings, rules_file, tmp_path, "rg")
    devs = [Device(settings, f"k3-sa-{i}", will=False) for i in range(1, 11)]
    subscribed(db, devs[0])
    for d in devs:
        d.event("heartbeat")
    wait_for(lambda: all(heard(db, d.id) for d in devs), 30, "every device heard")
    wait_for(lambda: db.execute("SELECT count(*) FROM timers WHERE kind = 'offline' AND key LIKE 'k3-sa-%%'"
                                " AND due_at > now()").fetchone() == (10,), 30, "offline deadlines set")
    p.kill(signal.SIGTERM)
    # ten minutes down: every deadline passed while the hub was away ...
    db.execute("UPDATE timers SET due_at = now() - interval '8 minutes' WHERE kind = 'offline' AND key LIKE 'k3-sa-%%'")
    # ... but eight of the devices kept talking; the broker queued it for the hub's session
    for d in devs[:8]:
        d.reading(now_ms(), battery_pct=80)
    p.start()
    wait_for(lambda: db.execute("SELECT count(*) FROM alerts WHERE type = 'device_offline' AND state = 'active'"
                                " AND device_id IN ('k3-sa-9', 'k3-sa-10')").fetchone() == (2,), 60,
             "the two silent devices offline after the grace period")
    offline = db.execute("SELECT device_id FROM alerts WHERE type = 'device_offline' AND device_id LIKE 'k3-sa-%%'").fetchall()
    assert sorted(r[0] for r in offline) == ["k3-sa-10", "k3-sa-9"]
    for d in devs:
        d.close()


def test_two_processes_and_a_hundred_concurrent_duplicate_alarms(
        settings: Settings, rules_file: Path, tmp_path: Path, procs: list[AlertsProcess],
        db: psycopg.Connection[Any]) -> None:
    a = new_proc(procs, settings, rules_file, tmp_path, "r2a")
    b = new_proc(procs, settings, rules_file, tmp_path, "r2b")
    probe = Device(settings, "k1-sa-2")
    subscribed(db, probe)
    wait_for(lambda: db.execute("SELECT count(*) FROM part_instances WHERE part = 'alerts' AND holder LIKE 'r2%%'"
                                " AND seen_at > now() - make_interval(secs => %s)", (float(LEASE_S),)).fetchone()
             == (2,), 30, "both alive")
    senders = [Device(settings, "k4-sa-1", will=False) for _ in range(5)]
    base = now_ms()

    def burst(d: Device) -> None:
        for n in range(20):  # 5 connections x 20 = 100 alarms: the same 20 events, five times each
            d.send("event", {"ts": base + n, "seq": n, "type": "alarm", "detail": {}})

    threads = [threading.Thread(target=burst, args=(d,)) for d in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: (db.execute("SELECT max(count) FROM alerts WHERE device_id = 'k4-sa-1' AND type = 'fire_alarm'"
                                 ).fetchone() or (0,))[0] == 20, 30, "20 distinct alarms counted")
    assert db.execute("SELECT count(*) FROM alerts WHERE device_id = 'k4-sa-1' AND type = 'fire_alarm'").fetchone() == (1,)
    assert db.execute("SELECT count(*) FROM tasks WHERE device_id = 'k4-sa-1' AND type = 'fire_alarm'").fetchone() == (1,)
    # one holds the partition and consumes its sessions; the other stands by and has received nothing
    holder = db.execute("SELECT split_part(holder, '/', 1) FROM part_leases WHERE part = 'alerts' AND partition = 0"
                        " AND expires_at > now()").fetchone()
    assert holder is not None and holder[0] in ("r2a", "r2b")
    standby = b if holder[0] == "r2a" else a
    wait_for(lambda: "alerts standby" in standby.log.read_text(errors="replace"), 30, "the other to stand by")
    assert " connected (MQTT" not in standby.log.read_text(errors="replace")
    for d in [probe, *senders]:
        d.close()


def test_concurrent_raises_on_the_database_make_one_alert_and_one_task(db_url: str, fleet: None) -> None:
    rules = load_rules()
    now = datetime.now(UTC)
    errors: list[BaseException] = []
    barrier = threading.Barrier(12)

    def raise_one() -> None:
        try:
            with psycopg.connect(db_url) as conn:
                p = records.place_of(conn, "k1-sa-2")
                assert p is not None
                barrier.wait()
                with changes.UnitOfWork(conn) as uow:
                    records.raise_alert(uow, p, "tamper", now, now, rules)
                conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=raise_one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*), max(count) FROM alerts WHERE device_id = 'k1-sa-2' AND type = 'tamper'"
                            ).fetchone() == (1, 12)
        assert conn.execute("SELECT count(*) FROM tasks WHERE incident_key = 'tamper:k1-sa-2'").fetchone() == (1,)
