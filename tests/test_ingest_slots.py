"""Ingest's leased slot on mosquitto (issue 15, CONTRACT §8): two `gridhub ingest` processes, one holding partition 0
(the persistent session `gridhub-ingest-p0`) and one standing by, under a QoS 1 stream from devices that resend
what the broker has not acknowledged.

- The holder killed with SIGKILL mid-stream: the standby takes the partition once the lease has expired, resumes the
  dead holder's session (what it had received but not acknowledged is redelivered, what queued meanwhile follows),
  and what the devices published is exactly what is stored.
- The holder stopped with SIGSTOP past its lease, then resumed: it acknowledges nothing more and never connects
  under the partition's client id again (the broker's log says who did), while the new holder keeps its
  connection and keeps storing; published = stored."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from faults import ResendingDevice, distinct, private_hub, published_is_stored, stop_ingest, stream
from ingest_env import Hub, start_ingest_process, wait_connected, wait_until

TOTAL = 20_000
LEASE_S = "3"  # GRIDHUB_LEASE_S: a standby takes over within a few seconds (the default is 15)
SLOT = "gridhub-ingest-p0"


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    with private_hub(make_database, tmp_path) as h:
        yield h


def _holder(conn: psycopg.Connection[Any]) -> tuple[str | None, int]:
    """The live holder of ingest's partition 0 (its instance id) and the partition's epoch."""
    row = conn.execute("SELECT CASE WHEN expires_at > now() THEN split_part(holder, '/', 1) END, epoch"
                       " FROM part_leases WHERE part = 'ingest' AND partition = 0").fetchone()
    return (None, 0) if row is None else (row[0], int(row[1]))


def _slot_connections(hub: Hub) -> int:
    """How many times a client connected to the broker under the slot's client id (mosquitto's log)."""
    text = hub.broker.log_file.read_text(errors="replace")
    return len(re.findall(rf"New client connected from \S+ as {re.escape(SLOT)} ", text))


def _holder_and_standby(hub: Hub, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, subprocess.Popen[bytes],
                                                             Path]:
    logs = tmp_path / "a.log", tmp_path / "b.log"
    a = start_ingest_process(hub, "slot-a", logs[0], GRIDHUB_LEASE_S=LEASE_S)
    wait_connected(logs[0])
    b = start_ingest_process(hub, "slot-b", logs[1], GRIDHUB_LEASE_S=LEASE_S)
    wait_until(lambda: "standby" in logs[1].read_text(errors="replace"), 60, "the second instance standing by")
    return a, logs[0], b, logs[1]


def _stream(hub: Hub) -> list[ResendingDevice]:
    return stream(hub, TOTAL, int(time.time() * 1000) - 2 * TOTAL - 60_000)


def test_the_standby_resumes_a_killed_holders_session(hub: Hub, tmp_path: Path) -> None:
    a, a_log, b, b_log = _holder_and_standby(hub, tmp_path)
    try:
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            holder, epoch = _holder(conn)
            assert holder == "slot-a" and "standby" not in a_log.read_text()
            devices = _stream(hub)
            wait_until(lambda: distinct(conn) >= TOTAL // 5, 180, "a fifth of the stream stored")
            a.send_signal(signal.SIGKILL)
            a.wait(30)
            assert distinct(conn) < TOTAL, "the stream ended before the kill: the test proved nothing"
            wait_connected(b_log, timeout=120)  # once the dead holder's lease has expired
            assert "session resumed" in b_log.read_text()
            assert _holder(conn) == ("slot-b", epoch + 1)  # a new holder, a new epoch
            published_is_stored(conn, devices, TOTAL, [a_log, b_log])
        assert _slot_connections(hub) == 2  # the holder, then its successor
        assert stop_ingest(b) == 0
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()


def test_a_holder_stopped_past_its_lease_does_not_take_the_slot_back(hub: Hub, tmp_path: Path) -> None:
    a, a_log, b, b_log = _holder_and_standby(hub, tmp_path)
    try:
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            holder, epoch = _holder(conn)
            assert holder == "slot-a"
            devices = _stream(hub)
            wait_until(lambda: distinct(conn) >= TOTAL // 5, 180, "a fifth of the stream stored")
            a.send_signal(signal.SIGSTOP)  # a stall: the process holds its connection but does nothing
            wait_connected(b_log, timeout=120)  # the standby took over the expired lease and the session
            assert _holder(conn) == ("slot-b", epoch + 1)
            assert distinct(conn) < TOTAL, "the stream ended before the stall: the test proved nothing"
            a.send_signal(signal.SIGCONT)
            wait_until(lambda: "lost partition 0" in a_log.read_text(errors="replace"), 60,
                       "the woken holder to find its lease lost")
            at_wake = distinct(conn)
            # the new holder keeps consuming: the stream goes on being stored after the old holder woke up
            wait_until(lambda: distinct(conn) >= min(TOTAL, at_wake + 1000), 120, "storing to go on after SIGCONT")
            published_is_stored(conn, devices, TOTAL, [a_log, b_log])
            assert a.poll() is None and _holder(conn)[0] == "slot-b"
        # nobody fought for the client id: the old holder never connected as the slot again, the new one once
        assert _slot_connections(hub) == 2
        assert b_log.read_text().count(" connected (MQTT") == 1 and "connection lost" not in b_log.read_text()
        assert a_log.read_text().count(" connected (MQTT") == 1
        assert stop_ingest(a) == 0 and stop_ingest(b) == 0
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
