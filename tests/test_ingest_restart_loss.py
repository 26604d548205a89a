"""Nothing lost, nothing doubled, across the faults of a running hub: a QoS 1 stream from devices that resend what
the broker has not acknowledged, while the broker is restarted gracefully (mosquitto with persistence) or ingest is
killed with SIGKILL and started again (mosquitto, and the embedded amqtt broker). What the devices published is
exactly what is stored: every (device, seq) once.

The broker restart is the case of issue 15: ingest's reconnect acknowledged, on the new connection, packet ids
received on the old one (ingest/README.md, "Acknowledgements belong to one connection")."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from faults import (
    STREAM_METRICS,
    distinct,
    private_hub,
    published_is_stored,
    restart_broker,
    stop_ingest,
    stream,
)
from ingest_env import Hub, start_ingest_process, wait_connected, wait_until

TOTAL = 30_000


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    with private_hub(make_database, tmp_path) as h:
        yield h


def _stream_through(hub: Hub, tmp_path: Path, fault: Callable[[subprocess.Popen[bytes], Path], subprocess.Popen[bytes]],
                    total: int = TOTAL) -> None:
    """Stream `total` readings from resending devices, apply `fault` once a fifth is stored (it returns the ingest
    process that runs afterwards), and check that every reading published is stored exactly once."""
    log = tmp_path / "ingest.log"
    proc = start_ingest_process(hub, "restart-loss", log)
    try:
        wait_connected(log)
        devices = stream(hub, total, int(time.time() * 1000) - 2 * (total // len(STREAM_METRICS)) - 60_000)
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            wait_until(lambda: distinct(conn) >= total // 5, 180, "a fifth of the stream stored")
            proc = fault(proc, log)
            assert distinct(conn) < total, "the stream ended before the fault: the test proved nothing"
            published_is_stored(conn, devices, total, [log])
        assert stop_ingest(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_nothing_lost_across_a_graceful_broker_restart(hub: Hub, tmp_path: Path) -> None:
    def broker_restart(proc: subprocess.Popen[bytes], log: Path) -> subprocess.Popen[bytes]:
        restart_broker(hub)  # SIGTERM: mosquitto writes its persistence file and exits
        wait_connected(log, times=2, timeout=120)
        return proc

    _stream_through(hub, tmp_path, broker_restart)


def test_nothing_lost_when_ingest_is_killed_and_restarted(hub: Hub, tmp_path: Path) -> None:
    def kill_ingest(proc: subprocess.Popen[bytes], log: Path) -> subprocess.Popen[bytes]:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        new = start_ingest_process(hub, "restart-loss", log)
        wait_connected(log, times=2, timeout=120)
        return new

    _stream_through(hub, tmp_path, kill_ingest)
