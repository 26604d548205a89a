"""`gridhub ingest` as real processes: nothing lost when one is killed with SIGKILL in the middle of a
50,000-message QoS 1 stream and restarted, and the latest state right under two ingest processes sharing the
load."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from ingest_env import Hub, Publisher, make_hub, start_ingest_process, topic, wait_connected, wait_until

DEVICES = ["sa-0001", "sa-0002", "sa-0201", "sp-0001", "sp-0201"]
METRIC = {"sa-0001": "battery_pct", "sa-0002": "battery_pct", "sa-0201": "temperature_c",
          "sp-0001": "pressure_mpa", "sp-0201": "pressure_mpa"}


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    h = make_hub(make_database, tmp_path)
    yield h
    h.broker.stop()


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"ingest (pid {proc.pid}) did not stop within {timeout:.0f} s of signal {sig}") from None


def _stored(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM readings").fetchone()
    assert row is not None
    return int(row[0])


def test_nothing_lost_when_ingest_is_killed_mid_stream(hub: Hub, tmp_path: Path) -> None:
    total = 50_000
    per_device = total // len(DEVICES)
    log = tmp_path / "ingest.log"
    proc = start_ingest_process(hub, "nothing-lost", log)
    try:
        wait_connected(log)
        base = int(time.time() * 1000) - 2 * total
        published = dict.fromkeys(DEVICES, 0)
        errors: list[BaseException] = []

        def publish(device: str) -> None:
            try:
                pub = Publisher(hub, device)
                for start in range(0, per_device, 1000):
                    published[device] += pub.send([
                        (topic(device), orjson.dumps({"ts": base + 2 * i, "seq": i,
                                                      "metrics": {METRIC[device]: (i % 90) / 100}}))
                        for i in range(start, start + 1000)])
                pub.close()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=publish, args=(d,)) for d in DEVICES]
        for t in threads:
            t.start()
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            wait_until(lambda: _stored(conn) >= total // 5, 120, "a fifth of the stream stored")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            stored_at_kill = _stored(conn)
            for t in threads:
                t.join(300)
            assert not errors, errors
            assert sum(published.values()) == total
            assert stored_at_kill < total, "the stream ended before the kill: the test proved nothing"
            assert _stored(conn) == stored_at_kill  # nobody else consumed meanwhile: the session kept the rest
            proc = start_ingest_process(hub, "nothing-lost", log)
            wait_connected(log, times=2)
            assert "session resumed" in log.read_text()
            wait_until(lambda: _stored(conn) >= total, 300, f"all {total} readings stored")
            assert _stored(conn) == total
            assert conn.execute("SELECT count(DISTINCT (device_id, seq)) FROM readings").fetchone() == (total,)
            per: dict[str, int] = dict(conn.execute("SELECT device_id, count(*) FROM readings GROUP BY 1").fetchall())
            assert per == {d: per_device for d in DEVICES}
        assert _stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_latest_is_newest_under_two_ingest_processes(hub: Hub, tmp_path: Path) -> None:
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_ingest_process(hub, f"latest-{n}", lg, GRIDHUB_INGEST_SHARED="1")
             for n, lg in zip("ab", logs, strict=True)]
    try:
        for lg in logs:
            wait_connected(lg)
        rng = random.Random(20261127)
        base = int(time.time() * 1000) - 3_600_000
        per_device = 800
        newest: dict[str, int] = {}
        streams: dict[str, list[tuple[str, bytes]]] = {}
        for d in DEVICES:
            order = list(range(per_device))
            rng.shuffle(order)
            assert order[-1] != per_device - 1  # the last to arrive is not the newest
            newest[d] = per_device - 1
            streams[d] = [(topic(d), orjson.dumps({"ts": base + k * 1000, "seq": k,
                                                   "metrics": {METRIC[d]: k / 1000, "fw_build": k}}))
                          for k in order]

        def publish(device: str) -> None:
            pub = Publisher(hub, device)
            # the same stream twice, as a device re-sending after a reconnect would
            pub.send(streams[device])
            pub.send(streams[device][: per_device // 2])
            pub.close()

        threads = [threading.Thread(target=publish, args=(d,)) for d in DEVICES]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            expected_rows = 2 * per_device * len(DEVICES)
            wait_until(lambda: _stored(conn) >= expected_rows, 180, "every reading stored")
            received = 1.5 * per_device * len(DEVICES)
            wait_until(lambda: (conn.execute("SELECT value FROM counters WHERE name = "
                                             "'gridhub_messages_received_total'").fetchone() or (0,))[0] >= received,
                       120, "every message counted")
            assert _stored(conn) == expected_rows
            latest = {(r[0], r[1]): (r[2], r[3]) for r in conn.execute(
                "SELECT device_id, metric, (extract(epoch FROM ts) * 1000)::int8, value FROM latest_readings")}
            for d in DEVICES:
                k = newest[d]
                assert latest[(d, METRIC[d])] == (base + k * 1000, k / 1000)
                assert latest[(d, "fw_build")] == (base + k * 1000, k)
            dups = conn.execute("SELECT value FROM counters WHERE name = 'gridhub_duplicates_total'").fetchone()
            assert dups == (per_device // 2 * len(DEVICES),)
        for p in procs:
            assert _stop(p) == 0
        shares = []
        for lg in logs:
            m = re.search(r"ingest stopped: (\d+) messages", lg.read_text())
            assert m, f"no clean stop in {lg}"
            shares.append(int(m.group(1)))
        assert all(n > 0 for n in shares), f"the shared subscription did not split the load: {shares}"
        assert sum(shares) == received
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
