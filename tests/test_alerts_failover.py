"""The alerts part's partition held by lease on mosquitto (issue 15, CONTRACT §8): two `gridhub alerts` processes on a
database and a broker of the test's own, one holding partition 0 (the persistent sessions `gridhub-alerts-p0-events`
and `gridhub-alerts-p0-telemetry`), the other standing by and receiving nothing.

- The holder killed with SIGKILL as soon as the broker has acknowledged a fire alarm to the device (whether the
  holder had received it, evaluated it or acknowledged it is the race this test leaves open): the standby takes the
  partition once the lease has expired, resumes the dead holder's sessions, and the alarm gives exactly one task.
- The holder (both its processes) stopped with SIGSTOP past its lease, a fire alarm published meanwhile, then
  resumed: the standby has taken the partition and its sessions; the woken holder finds its lease lost, acknowledges
  nothing more and never connects under the sessions' client ids again (the broker's log says who did), while the
  new holder keeps working: the alarm of the stall gives one task, and an alarm published after SIGCONT its own."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alerts_processes import CONNECTED
from alerts_processes import Alerts as AlertsProcess
from alerts_support import Device
from ingest_env import Hub, make_hub
from polling import wait_for

LEASE_S = "4"  # GRIDHUB_LEASE_S: the standby takes over within seconds (the default is 15)
SESSIONS = ("gridhub-alerts-p0-events", "gridhub-alerts-p0-telemetry")


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    h = make_hub(make_database, tmp_path)
    yield h
    h.broker.stop()


class Alerts(AlertsProcess):
    def __init__(self, hub: Hub, name: str, tmp_path: Path) -> None:
        super().__init__(hub, name, tmp_path, LEASE_S)


def _holder(conn: psycopg.Connection[Any]) -> tuple[str | None, int]:
    """The live holder of alerts' partition 0 (its instance id) and the partition's epoch."""
    row = conn.execute("SELECT CASE WHEN expires_at > now() THEN split_part(holder, '/', 1) END, epoch"
                       " FROM part_leases WHERE part = 'alerts' AND partition = 0").fetchone()
    return (None, 0) if row is None else (row[0], int(row[1]))


def _session_connections(hub: Hub, client_id: str) -> int:
    """How many times a client connected to the broker under this client id (mosquitto's log)."""
    text = hub.broker.log_file.read_text(errors="replace")
    return len(re.findall(rf"New client connected from \S+ as {re.escape(client_id)} ", text))


def _fire_tasks(conn: psycopg.Connection[Any], device: str) -> int:
    row = conn.execute("SELECT count(*) FROM tasks WHERE device_id = %s AND type = 'fire_alarm'", (device,)).fetchone()
    return int(row[0]) if row else 0


def _holder_and_standby(hub: Hub, tmp_path: Path) -> tuple[Alerts, Alerts]:
    a = Alerts(hub, "fo-a", tmp_path)
    wait_for(lambda: a.text().count(CONNECTED) >= 2, 60, "the first instance to connect as both sessions")
    b = Alerts(hub, "fo-b", tmp_path)
    wait_for(lambda: "alerts standby" in b.text(), 60, "the second instance standing by")
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        assert _holder(conn)[0] == "fo-a"
    return a, b


def _drained(alerts: Alerts, times: int = 1) -> bool:
    return alerts.text().count("backlog drained") >= times


def test_the_standby_resumes_a_killed_holders_sessions_and_the_alarm_gives_one_task(hub: Hub, tmp_path: Path) -> None:
    a, b = _holder_and_standby(hub, tmp_path)
    dev = Device(hub.settings, "sa-0002")
    try:
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            _, epoch = _holder(conn)
            wait_for(lambda: _drained(a), 60, "the holder to take its backlog")
            dev.event("alarm")  # returns once the broker has acknowledged it to the device
            a.kill()  # at once: the holder may have received it, evaluated it, acknowledged it, or none of these
            assert CONNECTED not in b.text(), "the standby connected before the holder died"
            wait_for(lambda: b.text().count(CONNECTED) >= 2, 120, "the standby to take both sessions over")
            assert _holder(conn) == ("fo-b", epoch + 1)  # a new holder, a new epoch
            assert b.text().count("session resumed") == 2  # the dead holder's sessions, not new ones
            wait_for(lambda: _fire_tasks(conn, "sa-0002") >= 1, 60, "the alarm to become a task")
            wait_for(lambda: _drained(b), 60, "the new holder to take the sessions' backlog")
            assert _fire_tasks(conn, "sa-0002") == 1
        for session in SESSIONS:  # the holder, then its successor
            assert _session_connections(hub, session) == 2, session
        assert b.stop() == 0
    finally:
        dev.close()
        a.kill()
        b.kill()
        print(f"--- fo-a\n{a.text()[-3000:]}\n--- fo-b\n{b.text()[-3000:]}")


def test_a_holder_stopped_past_its_lease_acknowledges_nothing_and_does_not_take_the_sessions_back(
        hub: Hub, tmp_path: Path) -> None:
    a, b = _holder_and_standby(hub, tmp_path)
    stalled, after = Device(hub.settings, "sa-0002"), Device(hub.settings, "sa-0201")
    try:
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            _, epoch = _holder(conn)
            wait_for(lambda: _drained(a), 60, "the holder to take its backlog")
            a.signal_group(signal.SIGSTOP)  # a stall: both processes keep their connections but do nothing
            stalled.event("alarm")  # delivered to the stalled holder's connection, never acknowledged by it
            wait_for(lambda: b.text().count(CONNECTED) >= 2, 120, "the standby to take both sessions over")
            assert _holder(conn) == ("fo-b", epoch + 1)
            a.signal_group(signal.SIGCONT)
            wait_for(lambda: "lost partition 0" in a.text(), 60, "the woken holder to find its lease lost")
            wait_for(lambda: _fire_tasks(conn, "sa-0002") >= 1, 60, "the alarm of the stall to become a task")

            after.event("alarm")  # the new holder keeps working
            wait_for(lambda: _fire_tasks(conn, "sa-0201") >= 1, 60, "the alarm after SIGCONT to become a task")
            wait_for(lambda: _drained(b), 60, "the new holder to take the sessions' backlog")
            assert _fire_tasks(conn, "sa-0002") == 1 and _fire_tasks(conn, "sa-0201") == 1
            assert a.proc.poll() is None and _holder(conn)[0] == "fo-b"
        # nobody fought for the client ids: the old holder never connected under them again, the new one once each
        for session in SESSIONS:
            assert _session_connections(hub, session) == 2, session
        assert a.text().count(CONNECTED) == 2, "the woken holder connected again"
        assert b.text().count(CONNECTED) == 2 and "connection lost" not in b.text()
        assert "acknowledging nothing more" in a.text()
        assert a.stop() == 0 and b.stop() == 0
    finally:
        stalled.close()
        after.close()
        a.kill()
        b.kill()
        print(f"--- fo-a\n{a.text()[-4000:]}\n--- fo-b\n{b.text()[-3000:]}")
