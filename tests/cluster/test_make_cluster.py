"""`gridhub cluster start` / `stop` (what `make cluster` and `make cluster-stop` run), in a directory of its own on
free ports: 3 NATS nodes, 3 etcd members, 2 PostgreSQL nodes under Patroni and 2 instances of each part all answer;
a device's reading published over MQTT to a NATS node is stored; `stop` then ends every process the cluster started
(and what those started) and nothing else: a bystander mosquitto, and the services of `make services` when they run,
keep running.

Not part of `make test` (pyproject's addopts ignore tests/cluster): `make cluster-test` runs it. No timing
assertions: each wait has a deadline for a state; the times are printed."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest
from faults import free_ports
from polling import wait_for

from gridhub.services.cluster import HubCluster, _start_time
from gridhub.services.mosquitto import start_private_mosquitto
from gridhub.services.nats import find_nats_server
from gridhub.services.patroni import find_program
from gridhub.services.process import SERVICE_ROOT_WHEN_ROOT, make_service_tmpdir, read_pid

START_TIMEOUT_S = 900  # the whole start on a loaded 2-core machine; a liveness bound
DEVICE = "sa-0001"  # a smoke alarm of the demo district


def cluster_cli(root: Path, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridhub.cli", "cluster", *args, "--dir", str(root)],
                          capture_output=True, text=True, timeout=timeout, check=False)


def processes() -> dict[int, tuple[int, int, int, str]]:
    """Every live process: pid -> (parent pid, session id, start time, command line)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X"):
            out[int(entry.name)] = (int(fields[1]), int(fields[3]), int(fields[19]), cmdline)
    return out


def started_by(cluster: HubCluster) -> dict[int, int]:
    """pid -> start time of every process in the sessions the cluster's pid files name (each was started with a
    session of its own), and of their descendants: the parts and their children, the NATS nodes, etcd, Patroni and
    its postgres (whose backends each take a session of their own)."""
    leaders = [pid for p in cluster.layout.parts if (pid := cluster.part_pid(p)) is not None]
    leaders += [pid for n in cluster.layout.nats if (pid := cluster.nats.pid(n)) is not None]
    leaders += [pid for m in cluster.layout.patroni.etcd if (pid := cluster.patroni.etcd_pid(m)) is not None]
    leaders += [pid for n in cluster.layout.patroni.nodes if (pid := cluster.patroni.patroni_pid(n)) is not None]
    every = processes()
    found = {pid for pid, (_, sid, _, _) in every.items() if sid in leaders}
    # Patroni's postgres leaves Patroni's session (its parent is then init): found by its postmaster.pid
    found |= {pid for n in cluster.layout.patroni.nodes if (pid := cluster.patroni.postmaster_pid(n)) in every}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in every.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid: every[pid][2] for pid in found}


def make_services_processes(root: Path) -> dict[int, int]:
    """The PostgreSQL and mosquitto of `make services` (under the services root, outside this test's directory),
    pid -> start time; empty when they do not run."""
    out = {}
    for pid, (_, _, started, cmdline) in processes().items():
        if (str(SERVICE_ROOT_WHEN_ROOT) in cmdline and str(root) not in cmdline
                and ("mosquitto" in cmdline or "postgres" in cmdline) and "/tmp/" not in cmdline):
            out[pid] = started
    return out


@pytest.fixture()
def root() -> Iterator[Path]:
    for program in ("etcd", "patroni"):
        assert find_program(program) is not None, f"{program} is not installed: run make cluster-test"
    assert find_nats_server() is not None, "nats-server is not installed: run make cluster-test"
    path = make_service_tmpdir("gridhub-cluster-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def publish_reading(port: int, user: str, password: str, seq: int) -> None:
    """One QoS 1 reading over MQTT 3.1.1 (as on NATS), waiting for its PUBACK."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv311)
    client.username_pw_set(user, password)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        payload = json.dumps({"ts": int(time.time() * 1000), "seq": seq, "metrics": {"battery_pct": 87}})
        info = client.publish(f"gridhub/v1/devices/{user}/telemetry", payload, qos=1)
        info.wait_for_publish(60)
        assert info.is_published(), f"no PUBACK from 127.0.0.1:{port} within 60 s"
    finally:
        client.disconnect()
        client.loop_stop()


def test_cluster_starts_serves_and_stops_exactly_what_it_started(root: Path) -> None:
    bystander = start_private_mosquitto(root / "bystander")
    bystander_pid = read_pid(bystander.pid_file)
    assert bystander_pid is not None and bystander.is_running()
    others = {bystander_pid: _start_time(bystander_pid), **make_services_processes(root)}
    print(f"\nbystanders (must survive): {sorted(others)}")
    started: dict[int, int] = {}
    t0 = time.monotonic()
    try:
        proc = cluster_cli(root, "start", "--free-ports", "--part-port-base", str(free_ports(10)), "--json",
                           "--timeout", "300")
        print(proc.stderr[-3000:])
        cluster = HubCluster(root)
        started = started_by(cluster)
        print(f"cluster start: exit {proc.returncode} after {time.monotonic() - t0:.1f} s; {len(started)} processes")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        info = json.loads(proc.stdout)
        assert info["problems"] == []

        # every service answers. A node's /healthz may say "not current" for a while after the parts' first
        # connections made the MQTT streams (docs/scaling.md): a deadline for the state, not a timing assertion
        for node in cluster.layout.nats:
            wait_for(lambda node=node: cluster.nats.healthy(node), timeout=180, what=f"NATS {node.name} /healthz",
                     interval=0.5)
        assert cluster.patroni.leader() is not None, cluster.patroni.members()
        for p in cluster.layout.parts:
            health = cluster.part_health(p)
            assert health is not None and health[0] == 200, (p.name, health)
        assert info["board"] and info["logins"]

        # a device's reading over MQTT to the last NATS node is stored
        with (cluster.nats.root / "device-credentials.csv").open() as fh:
            creds = {row["id"]: row for row in csv.DictReader(fh)}
        seq = uuid.uuid4().int % 1_000_000_000
        node = cluster.layout.nats[-1]
        t1 = time.monotonic()
        publish_reading(node.mqtt_port, creds[DEVICE]["username"], creds[DEVICE]["password"], seq)
        with psycopg.connect(cluster.database_url(), autocommit=True) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM readings WHERE device_id = %s AND seq = %s",
                                          (DEVICE, seq)).fetchone()[0] == 1,  # type: ignore[index]
                     timeout=120, what=f"{DEVICE}'s reading seq {seq} stored", interval=0.2)
        print(f"reading stored {time.monotonic() - t1:.2f} s after its publish to {node.name}")
    finally:
        started.update(started_by(HubCluster(root)) if (root / "layout.json").exists() else {})
        t2 = time.monotonic()
        stop = cluster_cli(root, "stop", timeout=300)
        print(f"cluster stop: exit {stop.returncode} after {time.monotonic() - t2:.1f} s")
        left = {pid for pid, st in started.items() if _start_time(pid) == st}
        survivors = {pid for pid, st in others.items() if _start_time(pid) == st}
        print(f"after stop: {len(started)} started, still running {sorted(left)}; bystanders alive "
              f"{sorted(survivors)} of {sorted(others)}")
        bystander.stop()
    assert stop.returncode == 0, stop.stderr
    assert started, "the cluster started no process"
    assert not left, f"still running after stop: {sorted(left)}"
    assert survivors == set(others), f"stop touched what it had not started: {sorted(set(others) - survivors)}"
