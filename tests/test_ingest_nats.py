"""Ingest on a real 3-node NATS cluster (CONTRACT §8, issue 15 item 2): `GRIDHUB_BROKER=nats`, P partitions held by
lease (gridhub/leases.py LeaseKeeper), one persistent MQTT 3.1.1 session per held partition, named by the partition,
as the hub's subscribe-only user in the DEVICES account; devices publish QoS 1 and resend what was not PUBACKed
(tests/faults.py). The hub's URL names a port nobody listens on before the three nodes, so every connection first
has to go on to the next host.

- One instance holds every partition, stores each partition's readings under the device's own topic, and an
  unregistered device's reading reaches the quarantine as on mosquitto.
- Two `gridhub ingest` processes with P = 4 share the partitions 2 + 2; one is killed with SIGKILL mid-stream: the
  other takes its partitions over and resumes their sessions; published = stored, each reading once.
- A holder stopped with SIGSTOP past its lease, then resumed: it is told it lost its partitions, acknowledges
  nothing more and never connects again; the other keeps its connections; published = stored.

No timing assertions: waits are for states, with deadlines; takeover times are printed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from faults import STREAM_METRICS, ResendingDevice, distinct, published_is_stored, stop_ingest
from ingest_env import SECRET, start_ingest_process, topic, wait_until
from nats_support import NatsHub, nats_hub
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.accounts import derived_password
from gridhub.ingest.service import IngestService
from gridhub.services.nats import device_partition

P = 4
LEASE_S = "3"  # GRIDHUB_LEASE_S: a takeover within seconds (the default is 15)
TOTAL = 12_000
RATE_EACH = 60  # readings/s from each of the 5 devices: the stream lasts 40 s, so every fault finds it running
GHOST = "ghost-0001"  # a device the broker knows and the registry does not


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[NatsHub]:
    with nats_hub(make_database, tmp_path, P, extra_devices=(GHOST,), dead_first_host=True) as h:
        yield h


def _holders(conn: psycopg.Connection[Any]) -> dict[str, set[int]]:
    """Instance id -> the partitions of ingest it holds (unexpired leases)."""
    out: dict[str, set[int]] = {}
    for holder, partition in conn.execute(
            "SELECT split_part(holder, '/', 1), partition FROM part_leases WHERE part = 'ingest'"
            " AND expires_at > now()"):
        out.setdefault(holder, set()).add(int(partition))
    return out


def _epochs(conn: psycopg.Connection[Any]) -> dict[int, int]:
    return {int(p): int(e) for p, e in conn.execute("SELECT partition, epoch FROM part_leases WHERE part = 'ingest'")}


def _connections(log: Path) -> int:
    return log.read_text(errors="replace").count(" connected (MQTT")


def _publish(hub: NatsHub, device: str, password: str, body: dict[str, Any]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-{time.monotonic_ns()}",
                         protocol=paho.MQTTv311)
    client.username_pw_set(device, password)
    client.connect("127.0.0.1", hub.cluster.nodes[1].mqtt_port, keepalive=30)
    client.loop_start()
    try:
        info = client.publish(topic(device), orjson.dumps(body), qos=1)
        info.wait_for_publish(60)
        assert info.is_published(), f"{device}: no PUBACK"
    finally:
        client.disconnect()
        client.loop_stop()


def test_one_instance_holds_every_partition_and_quarantines_the_unknown(hub: NatsHub) -> None:
    svc = IngestService(hub.settings)
    svc.start()
    try:
        wait_until(svc.connected.is_set, 60, "ingest's four sessions connected")
        assert sorted(svc._sessions) == [0, 1, 2, 3]
        base = int(time.time() * 1000)
        assert {device_partition(d, P) for d in STREAM_METRICS} == set(range(P))
        for n, (device, metric) in enumerate(STREAM_METRICS.items()):
            _publish(hub, device, derived_password(SECRET, "device", device),
                     {"ts": base + n, "seq": 1, "metrics": {metric: 0.5}})
        _publish(hub, GHOST, "pw-" + GHOST, {"ts": base, "seq": 1, "metrics": {"battery_pct": 50}})
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            wait_until(lambda: distinct(conn) == len(STREAM_METRICS), 60, "a reading of each device (quarantined: "
                       f"{conn.execute('SELECT topic, reason, detail FROM quarantine').fetchall()}; stored "
                       f"{conn.execute('SELECT device_id, ts FROM readings').fetchall()})")
            stored = {r[0] for r in conn.execute("SELECT DISTINCT device_id FROM readings")}
            assert stored == set(STREAM_METRICS)
            wait_until(lambda: conn.execute("SELECT count(*) FROM quarantine").fetchone() == (1,), 60,
                       "the unregistered device's reading in the quarantine")
            row = conn.execute("SELECT topic, device_id, reason FROM quarantine").fetchone()
        assert row is not None
        # the device's own topic (CONTRACT §1), not the partition's subject it travelled on
        assert row[0] == topic(GHOST) and row[1] == GHOST and row[2] == "unregistered_device"
    finally:
        svc.stop()
    assert not svc.failed.is_set()


def _paced_stream(hub: NatsHub, total: int, base_ms: int, rate_each: float) -> list[ResendingDevice]:
    """`total` readings from the devices of tests/faults.py's STREAM_METRICS (one on each partition), each device
    paced at `rate_each` readings/s, so that a fault finds the stream running."""
    devices = [ResendingDevice(hub, device, metric, lambda seq: (seq % 90) / 100, base_ms,
                               chunk=200, count=total // len(STREAM_METRICS), rate=rate_each)
               for device, metric in STREAM_METRICS.items()]
    for dev in devices:
        dev.start()
    return devices


def _two_instances(hub: NatsHub, tmp_path: Path) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, Path]]:
    """`gridhub ingest` twice, A started first (it takes all four partitions) and then B: waits until they hold
    2 + 2, each connected under its partitions."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("nats-a", "nats-b")}
    for name in logs:
        procs[name] = start_ingest_process(hub, name, logs[name], GRIDHUB_LEASE_S=LEASE_S)
        if name == "nats-a":
            wait_until(lambda: _connections(logs["nats-a"]) >= P, 90, "A connected under the four partitions")
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        wait_until(lambda: {k: len(v) for k, v in _holders(conn).items()} == {"nats-a": 2, "nats-b": 2}, 90,
                   f"a 2 + 2 share (now {_holders(conn)})")
    wait_until(lambda: _connections(logs["nats-b"]) >= 2, 60, "B connected under its two partitions")
    return procs, logs


def _resumed(log: Path, partitions: set[int]) -> set[int]:
    """The partitions whose session the instance resumed (connected, and the broker had its session)."""
    text = log.read_text(errors="replace")
    return {k for k in partitions if re.search(rf"gridhub-ingest-p{k}-[0-9a-f]+ connected \([^)]*session resumed",
                                               text)}


def test_two_instances_share_and_one_killed_is_taken_over(hub: NatsHub, tmp_path: Path) -> None:
    """P = 4 between two processes: 2 + 2. SIGKILL of one mid-stream: the other takes its partitions once the leases
    expired, resumes their sessions (what the dead one had received but not acknowledged comes again), and what the
    devices published is exactly what is stored, each reading once."""
    procs, logs = _two_instances(hub, tmp_path)
    base_ms = int(time.time() * 1000) - 3_600_000
    try:
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            shares = _holders(conn)
            devices = _paced_stream(hub, TOTAL, base_ms, rate_each=RATE_EACH)
            wait_until(lambda: distinct(conn) >= TOTAL // 3, 300, "a third of the stream stored")
            epochs = _epochs(conn)
            procs["nats-a"].send_signal(signal.SIGKILL)
            procs["nats-a"].wait(30)
            killed = time.monotonic()
            wait_until(lambda: _holders(conn).get("nats-b") == set(range(P)), 120, "B to take A's partitions")
            taken_s = time.monotonic() - killed
            wait_until(lambda: _resumed(logs["nats-b"], shares["nats-a"]) == shares["nats-a"], 120,
                       "B resuming A's sessions")
            resumed_s = time.monotonic() - killed
            assert all(_epochs(conn)[k] > epochs[k] for k in shares["nats-a"])  # new holder, new fencing token
            published_is_stored(conn, devices, TOTAL, list(logs.values()))
            print(json.dumps({"partitions": P, "lease_s": float(LEASE_S), "a_held": sorted(shares["nats-a"]),
                              "taken_over_after_s": round(taken_s, 1), "sessions_resumed_after_s": round(resumed_s, 1),
                              "resent": sum(d.resent for d in devices), "stored": distinct(conn)}))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_ingest(proc)


def test_a_holder_stopped_past_its_lease_acknowledges_nothing_more(hub: NatsHub, tmp_path: Path) -> None:
    """SIGSTOP of one of two holders past its lease: the other takes its partitions and resumes their sessions;
    resumed (SIGCONT), the stalled one is told it lost them, acknowledges nothing more and never connects again
    under the leases it lost (the new holder's connections are never knocked off), only under new leases once the
    share is fair again; published = stored, each reading once."""
    procs, logs = _two_instances(hub, tmp_path)
    base_ms = int(time.time() * 1000) - 7_200_000
    a = procs["nats-a"]
    try:
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            shares = _holders(conn)
            devices = _paced_stream(hub, TOTAL, base_ms, rate_each=RATE_EACH)
            wait_until(lambda: distinct(conn) >= TOTAL // 4, 300, "a quarter of the stream stored")
            a.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            wait_until(lambda: _holders(conn).get("nats-b") == set(range(P)), 120, "B to take A's partitions")
            wait_until(lambda: _resumed(logs["nats-b"], shares["nats-a"]) == shares["nats-a"], 120,
                       "B resuming A's sessions")
            epochs_taken = {k: e for k, e in _epochs(conn).items() if k in shares["nats-a"]}
            a_lines = len(logs["nats-a"].read_text(errors="replace").splitlines())
            before = distinct(conn)
            wait_until(lambda: distinct(conn) >= min(before + 500, TOTAL), 120, "B storing the stream")
            a.send_signal(signal.SIGCONT)
            stalled_s = time.monotonic() - stopped
            wait_until(lambda: logs["nats-a"].read_text(errors="replace").count(" lost partition ") >= 2, 120,
                       "A told it lost its two partitions")
            published_is_stored(conn, devices, TOTAL, list(logs.values()))
            # A never connected again under the leases it lost (only under new ones, once the share is fair again:
            # B gives two partitions back), and B's connections were never knocked off by A
            a_after = logs["nats-a"].read_text(errors="replace").splitlines()[a_lines:]
            a_epochs = [int(m.group(1)) for line in a_after if (m := re.search(r" connected \(.*epoch (\d+)", line))]
            assert all(e > max(epochs_taken.values()) for e in a_epochs), (a_epochs, epochs_taken)
            assert "broker connection lost" not in logs["nats-b"].read_text(errors="replace")
            assert a.poll() is None  # A lives on
            print(json.dumps({"stalled_s": round(stalled_s, 1), "a_held": sorted(shares["nats-a"]),
                              "resent": sum(d.resent for d in devices), "stored": distinct(conn)}))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_ingest(proc)


def test_a_node_killed_under_ingest_its_sessions_resume_on_the_next(hub: NatsHub, tmp_path: Path) -> None:
    """SIGKILL of the NATS node ingest's sessions are connected to (the first live host of its multi-host URL),
    devices publishing to another node: each session connects to the next node of the URL and resumes there
    (session present), and what the devices published is exactly what is stored."""
    first = hub.cluster.nodes[0]
    hub.broker.port = hub.cluster.nodes[2].mqtt_port  # the devices stay on a node that lives
    log = tmp_path / "ingest.log"
    proc = start_ingest_process(hub, "nats-one", log, GRIDHUB_LEASE_S=LEASE_S)
    try:
        wait_until(lambda: _connections(log) >= P, 90, "ingest connected under the four partitions")
        on_first = set(re.findall(rf"partition (\d+) \(epoch \d+\), broker 127\.0\.0\.1:{first.mqtt_port}\)",
                                  log.read_text(errors="replace")))
        assert on_first == {str(k) for k in range(P)}  # every partition's session on the URL's first node
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            devices = _paced_stream(hub, TOTAL, int(time.time() * 1000) - 10_800_000, rate_each=RATE_EACH)
            wait_until(lambda: distinct(conn) >= TOTAL // 4, 300, "a quarter of the stream stored")
            hub.cluster.signal_node(first, signal.SIGKILL)
            killed = time.monotonic()
            wait_until(lambda: _connections(log) >= 2 * P, 180, "every session connected again")
            again_s = time.monotonic() - killed
            text = log.read_text(errors="replace")
            after = text[text.index("broker connection lost"):]
            assert f"broker 127.0.0.1:{first.mqtt_port})" not in after  # the next node, not the dead one
            assert after.count("session resumed") >= P
            published_is_stored(conn, devices, TOTAL, [log])
            print(json.dumps({"killed": first.name, "sessions_back_after_s": round(again_s, 1),
                              "resent": sum(d.resent for d in devices), "stored": distinct(conn)}))
    finally:
        if proc.poll() is None:
            stop_ingest(proc)
        hub.cluster.start_node(first)
