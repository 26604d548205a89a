"""Nothing lost, nothing doubled, across the faults of a running hub: a QoS 1 stream from devices that resend what
the broker has not acknowledged, while the broker is restarted gracefully (mosquitto with persistence) or ingest is
killed with SIGKILL and started again (mosquitto, and the embedded amqtt broker). What the devices published is
exactly what is stored: every (device, seq) once.

The broker restart is the case of issue 15: ingest's reconnect acknowledged, on the new connection, packet ids
received on the old one (ingest/README.md, "Acknowledgements belong to one connection")."""

from __future__ import annotations

import signal
import subprocess
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
from ingest_env import SECRET, Hub, make_hub, start_ingest_process, topic, wait_connected, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.accounts import derived_password

DEVICES = ["sa-0001", "sa-0002", "sa-0201", "sp-0001", "sp-0201"]
METRIC = {"sa-0001": "battery_pct", "sa-0002": "battery_pct", "sa-0201": "temperature_c",
          "sp-0001": "pressure_mpa", "sp-0201": "pressure_mpa"}
TOTAL = 30_000
CHUNK = 500  # messages a device publishes before it waits for their PUBACKs
BROKER_DOWN_S = 3.0  # a restart that takes a moment: the devices' and ingest's reconnect attempts fail meanwhile
STALL_S = 45.0  # how long the stored count may stand still before the test counts what is missing
CONFIRM_S = 15.0  # how long a device waits for a chunk's PUBACKs before it sends the rest again


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    h = make_hub(make_database, tmp_path)
    yield h
    h.broker.stop()


class ResendingDevice(threading.Thread):
    """One device publishing `count` readings at QoS 1 on its own account, like the firmware: a reading counts as
    sent only once the broker has acknowledged it; what was not acknowledged (the connection dropped, the broker
    went away) is sent again after reconnecting. `confirmed` counts the distinct readings acknowledged."""

    def __init__(self, hub: Hub, device: str, count: int, base_ms: int) -> None:
        super().__init__(name=f"device-{device}", daemon=True)
        self.device, self.count, self.base_ms = device, count, base_ms
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
        return orjson.dumps({"ts": self.base_ms + 2 * seq, "seq": seq, "metrics": {METRIC[self.device]: (seq % 90) / 100}})

    def run(self) -> None:
        try:
            for start in range(0, self.count, CHUNK):
                pending = list(range(start, min(start + CHUNK, self.count)))
                first = True
                while pending:
                    wait_until(self.client.is_connected, 120, f"{self.device} connected to the broker")
                    if not first:
                        self.resent += len(pending)
                    first = False
                    infos = [(seq, self.client.publish(topic(self.device), self._payload(seq), qos=1))
                             for seq in pending]
                    deadline = time.monotonic() + CONFIRM_S
                    left = []
                    for seq, info in infos:
                        if not _acknowledged(info, deadline):
                            left.append(seq)
                    self.confirmed += len(pending) - len(left)
                    pending = left
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


def _distinct(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(DISTINCT (device_id, seq)) FROM readings").fetchone()
    assert row is not None
    return int(row[0])


def _rows(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert row is not None
    return int(row[0])


def _wait_stored(conn: psycopg.Connection[Any], total: int) -> int:
    """The distinct readings stored once all `total` are, or once none has been added for STALL_S."""
    stored, since = _distinct(conn), time.monotonic()
    while stored < total and time.monotonic() - since < STALL_S:
        time.sleep(0.5)
        now = _distinct(conn)
        if now != stored:
            stored, since = now, time.monotonic()
    return stored


def _missing(conn: psycopg.Connection[Any], per_device: int) -> dict[str, list[int]]:
    """The sequence numbers not stored, by device (the first 20 of each)."""
    out: dict[str, list[int]] = {}
    for device in DEVICES:
        rows = conn.execute("SELECT s FROM generate_series(0, %s - 1) s WHERE NOT EXISTS (SELECT 1 FROM readings "
                            "WHERE device_id = %s AND seq = s) ORDER BY s LIMIT 20", (per_device, device)).fetchall()
        if rows:
            out[device] = [int(r[0]) for r in rows]
    return out


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"ingest (pid {proc.pid}) did not stop within {timeout:.0f} s") from None


def _stream_through(hub: Hub, tmp_path: Path, fault: Callable[[subprocess.Popen[bytes], Path], subprocess.Popen[bytes]],
                    total: int = TOTAL) -> None:
    """Stream `total` readings from resending devices, apply `fault` once a fifth is stored (it returns the ingest
    process that runs afterwards), and check that every reading published is stored exactly once."""
    per_device = total // len(DEVICES)
    log = tmp_path / "ingest.log"
    proc = start_ingest_process(hub, "restart-loss", log)
    try:
        wait_connected(log)
        base = int(time.time() * 1000) - 2 * per_device - 60_000
        devices = [ResendingDevice(hub, d, per_device, base) for d in DEVICES]
        for dev in devices:
            dev.start()
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            wait_until(lambda: _distinct(conn) >= total // 5, 180, "a fifth of the stream stored")
            proc = fault(proc, log)
            assert _distinct(conn) < total, "the stream ended before the fault: the test proved nothing"
            for dev in devices:
                dev.join(600)
                assert not dev.is_alive(), f"{dev.device} still publishing after 600 s"
                assert dev.error is None, f"{dev.device}: {dev.error!r}"
            published = sum(dev.confirmed for dev in devices)
            assert published == total
            stored = _wait_stored(conn, total)
            resent = sum(dev.resent for dev in devices)
            assert stored == published, (f"published {published}, stored {stored} (resent {resent}); missing by "
                                         f"device: {_missing(conn, per_device)}; ingest log:\n"
                                         f"{log.read_text(errors='replace')[-3000:]}")
            assert _rows(conn) == stored, "a reading was stored twice"
        assert _stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_nothing_lost_across_a_graceful_broker_restart(hub: Hub, tmp_path: Path) -> None:
    def restart_broker(proc: subprocess.Popen[bytes], log: Path) -> subprocess.Popen[bytes]:
        hub.broker.stop()  # SIGTERM: mosquitto writes its persistence file and exits
        time.sleep(BROKER_DOWN_S)
        hub.broker.ensure_started()
        wait_connected(log, times=2, timeout=120)
        return proc

    _stream_through(hub, tmp_path, restart_broker)


def test_nothing_lost_when_ingest_is_killed_and_restarted(hub: Hub, tmp_path: Path) -> None:
    def kill_ingest(proc: subprocess.Popen[bytes], log: Path) -> subprocess.Popen[bytes]:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        new = start_ingest_process(hub, "restart-loss", log)
        wait_connected(log, times=2, timeout=120)
        return new

    _stream_through(hub, tmp_path, kill_ingest)
