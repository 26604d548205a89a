"""The cluster broker against the single machine's, and the alarm latency with one NATS node down: prints JSON
(issue 15, "Show").

In one run, on one database server (the local PostgreSQL; the broker is what is compared):
  1. readings/s stored by `gridhub ingest` on a private mosquitto (the single machine) and by `gridhub ingest` with
     GRIDHUB_BROKER=nats on a 3-node NATS JetStream cluster (gridhub/services/nats.py NatsCluster, stream replicas
     3, GRIDHUB_PARTITIONS partitions), the same N QoS 1 readings from 2 publisher processes (bench/ingest.py
     `ingest_run`: timed until every reading is stored), alternating for --rounds;
  2. `gridhub alerts` on the cluster, and smoke alarms from --alarms buildings under a telemetry load, each timed
     from its publish to the grid worker's task notification (as bench/alarm_latency.py does): with every node up,
     then after SIGKILL of one node (--kill, default n3: neither the node the devices publish to nor the listener's).

The devices' side: the publishers log in to NATS as a load account in the DEVICES account that may publish any
device's partitioned subjects (the registry's devices keep their own accounts and permissions); they publish to
node n1. The hub's account there is `bench-hub` (the load account takes bench/ingest.py's fixed publisher user).

    .venv/bin/python bench/cluster.py [-n 60000] [--rounds 2] [--partitions 4] [--alarms 50] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from _harness import Load, client, connect, listener, publish_alarms, registry_yaml, stop_process, summary

import ingest as ingest_bench  # bench/ingest.py: the publishers and the ingest run
from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.db import migrate
from gridhub.registry import import_registry, parse
from gridhub.services.mosquitto import LocalMosquitto, start_private_mosquitto
from gridhub.services.nats import (
    MQTT_DELIVERY,
    PARTITION_LEVEL,
    NatsCluster,
    NatsUser,
    accounts_conf,
    find_nats_server,
    free_layout,
    registry_users,
    subject_prefix,
)
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings
from ingest import _cpu_s as cpu_s
from ingest import _machine_busy_s as machine_busy_s

ADMIN_URL = ingest_bench.ADMIN_URL
PREFIX = DEFAULT_TOPIC_PREFIX
HUB_USER = "bench-hub"
LOAD_USER = "gridhub-hub"  # what bench/ingest.py's publishers log in as
START_TIMEOUT_S = 120.0


def _missing() -> list[str]:
    """What this bench needs of the hub and the machine that is not there (ingest and alerts on NATS landed with
    GRIDHUB_BROKER=nats support in ingest/service.py and alerts/service.py)."""
    missing = []
    if find_nats_server() is None:
        missing.append("nats-server (make services-install)")
    root = Path(__file__).resolve().parent.parent
    for part in ("ingest", "alerts"):  # a part on NATS connects its sessions under the hub's tagged client ids
        if not any("session_client_id_on_nats" in f.read_text() for f in (root / part).glob("*.py")):
            missing.append(f"{part} on NATS (GRIDHUB_BROKER=nats support in {part}/)")
    return missing


def _registry(devices: int, alarms: int, load_devices: int) -> str:
    """bench/_harness.py's registry (smoke alarms bsa-<b> in their own buildings, two rounds' worth, sprinkler gauges bld-<i> for the
    telemetry load) with bench/ingest.py's smoke alarms sa-<i> for the throughput runs."""
    return registry_yaml(2 * alarms, load_devices, extra_devices=[
        f"{{id: sa-{i:05d}, kind: smoke_alarm, building: bb-{i % alarms}, floor: 1}}" for i in range(devices)])


class Brokers:
    """One database, a private mosquitto and a 3-node NATS cluster with accounts from the registry."""

    def __init__(self, tmp: Path, partitions: int, window: int) -> None:
        self.tmp = tmp
        self.partitions = partitions
        self.window = window
        self.dbname = f"gridhub_bench_{uuid.uuid4().hex[:10]}"
        self.db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + self.dbname
        self.hub_password = secrets.token_urlsafe(18)
        self.load_password = secrets.token_urlsafe(18)
        self.mosquitto: LocalMosquitto | None = None
        self.nats: NatsCluster | None = None
        self.mosquitto_url = ""
        self.nats_url = ""

    def start(self, registry: str) -> None:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        migrate(self.db_url)
        with psycopg.connect(self.db_url) as conn:
            import_registry(conn, parse(registry))
        # the single machine
        self.mosquitto = start_private_mosquitto(self.tmp / "mosquitto", max_inflight_messages=self.window)
        self.mosquitto_url = f"mqtt://gridhub-hub:{self.mosquitto.hub_password()}@127.0.0.1:{self.mosquitto.port}"
        settings = Settings(database_url=self.db_url, mqtt_url=self.mosquitto_url, data_dir=self.tmp,
                            secret_key=ingest_bench.SECRET, instance_id="bench")
        with psycopg.connect(self.db_url) as conn:
            accounts, workers, hub = build_accounts(conn, settings)
        self.mosquitto.apply_accounts(passwd_text(accounts), acl_text(PREFIX, hub.username, workers))
        # the cluster
        self.nats = NatsCluster(self.tmp / "nats", free_layout())
        nats_settings = Settings(database_url=self.db_url, data_dir=self.tmp, secret_key=ingest_bench.SECRET,
                                 mqtt_url=f"mqtt://{HUB_USER}:{self.hub_password}@127.0.0.1:1", broker="nats",
                                 partitions=self.partitions)
        with psycopg.connect(self.db_url) as conn:
            hub_users, devices, _rows = registry_users(conn, nats_settings, self.partitions)
        s = subject_prefix(PREFIX)
        # any device's telemetry and events, mapped onto its partition, or not (nats-server 2.9.10 checks and stores
        # some QoS 1 publishes unmapped: gridhub/services/nats.py unmapped_filters)
        load = NatsUser(LOAD_USER, self.load_password, {
            "publish": {"allow": [f"{s}.{PARTITION_LEVEL}.*.devices.*.{kind}" for kind in ("telemetry", "event")]
                        + [f"{s}.devices.*.{kind}" for kind in ("telemetry", "event")]},
            "subscribe": {"allow": [MQTT_DELIVERY]}})
        self.nats.write_config(accounts_conf(PREFIX, self.partitions, hub_users, [*devices, load],
                                             NatsUser("sys", secrets.token_urlsafe(12))))
        self.nats.start(timeout=90)
        self.nats_url = f"mqtt://{HUB_USER}:{self.hub_password}@" + ",".join(
            f"127.0.0.1:{n.mqtt_port}" for n in self.nats.nodes)

    def nats_env(self) -> dict[str, str]:
        return {"GRIDHUB_BROKER": "nats", "GRIDHUB_PARTITIONS": str(self.partitions), "GRIDHUB_BROKER_CHECK": "off"}

    def node_pid(self, name: str) -> int:
        assert self.nats is not None
        pid = self.nats.pid(self.nats.node(name))
        if pid is None:
            raise RuntimeError(f"NATS node {name} is not running")
        return pid

    def close(self) -> None:
        if self.mosquitto is not None:
            self.mosquitto.stop()
        if self.nats is not None:
            self.nats.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


def throughput(b: Brokers, devices: list[str], n: int, rounds: int, window: int) -> dict[str, Any]:
    """Ingest alone on each broker, alternating; the summary is the round of median ratio."""
    assert b.mosquitto is not None and b.nats is not None
    mosquitto_pid = int(b.mosquitto.pid_file.read_text().split()[0])
    n1 = b.nats.nodes[0]
    base_ms = int(time.time() * 1000) - 40 * n * rounds
    out: list[dict[str, Any]] = []
    for k in range(rounds):
        one: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 2)}
        start_ms = base_ms + k * 40 * n
        order = ("single", "cluster") if k % 2 == 0 else ("cluster", "single")
        for side in order:
            tmp = b.tmp / f"{side}-{k}"
            tmp.mkdir()
            if side == "single":
                one["single_machine"] = ingest_bench.ingest_run(
                    b.db_url, b.mosquitto.port, b.mosquitto.hub_password(), b.mosquitto_url, devices, n, start_ms,
                    tmp, {"GRIDHUB_INGEST_WINDOW": str(window)}, mosquitto_pid)
            else:
                pids = [b.node_pid(node.name) for node in b.nats.nodes]
                cpu0 = sum(cpu_s(p) for p in pids)
                one["cluster"] = ingest_bench.ingest_run(
                    b.db_url, n1.mqtt_port, b.load_password, b.nats_url, devices, n, start_ms + 20 * n, tmp,
                    b.nats_env(), pids[0])
                # the three nodes together (ingest_run meters the one the publishers talk to)
                one["cluster"]["nats_cpu_us_per_msg"] = round(1e6 * (sum(cpu_s(p) for p in pids) - cpu0) / n, 1)
        one["ratio"] = round(one["cluster"]["readings_per_s"] / one["single_machine"]["readings_per_s"], 3)
        out.append(one)
        print(json.dumps({"round": k + 1, "order": "-".join(order), "load_average": one["load_average"],
                          "single_readings_per_s": one["single_machine"]["readings_per_s"],
                          "cluster_readings_per_s": one["cluster"]["readings_per_s"], "ratio": one["ratio"]}),
              file=sys.stderr)
    by_ratio = sorted(out, key=lambda r: r["ratio"])
    mid = by_ratio[len(by_ratio) // 2]
    return {"single_machine_readings_per_s": mid["single_machine"]["readings_per_s"],
            "cluster_readings_per_s": mid["cluster"]["readings_per_s"], "ratio": mid["ratio"],
            "ratio_spread": [by_ratio[0]["ratio"], by_ratio[-1]["ratio"]],
            "rounds": [{"load_average": r["load_average"], "ratio": r["ratio"],
                        "single_readings_per_s": r["single_machine"]["readings_per_s"],
                        "cluster_readings_per_s": r["cluster"]["readings_per_s"],
                        "single_cpu_us": r["single_machine"]["cpu_us_per_msg"],
                        "cluster_cpu_us": {k: v for k, v in r["cluster"]["cpu_us_per_msg"].items()
                                           if k != "mosquitto"} | {"nats_n1": r["cluster"]["cpu_us_per_msg"]["mosquitto"],
                                                                   "nats_3_nodes": r["cluster"]["nats_cpu_us_per_msg"]}}
                       for r in out]}


def _wait_alerts(b: Brokers, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the alerts instance holds every partition and both its lanes have connected."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with psycopg.connect(b.db_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM part_leases WHERE part = 'alerts' AND holder LIKE 'bench/%'"
                               " AND expires_at > now()").fetchone()
            lines = log.read_text(errors="replace").splitlines()
            connected = [line for line in lines if " connected (MQTT" in line]
            if row == (b.partitions,) and any("-events" in line for line in connected) \
                    and any("-telemetry" in line for line in connected):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"gridhub alerts on NATS exited ({proc.returncode}) before it held its "
                                   f"{b.partitions} partitions:\n" + "\n".join(lines[-40:]))
            if time.monotonic() > deadline:
                raise RuntimeError(f"gridhub alerts on NATS did not hold its {b.partitions} partitions with both lanes "
                                   f"connected within {START_TIMEOUT_S:.0f} s:\n" + "\n".join(lines[-40:]))
            time.sleep(0.3)
    time.sleep(5)  # every partition's sessions connected, backlog markers seen


def alarm_round(b: Brokers, alarms: int, first: int, seen: dict[str, float], lock: threading.Lock, rate: float,
                load_devices: int, label: str) -> dict[str, Any]:
    """One smoke alarm from each of bsa-<first> .. bsa-<first+alarms-1> under the telemetry load, timed to the
    notification."""
    assert b.nats is not None
    node_url = f"mqtt://{LOAD_USER}:{b.load_password}@127.0.0.1:{b.nats.nodes[0].mqtt_port}"
    with lock:
        seen.clear()
    load = Load(node_url, rate, load_devices)
    pub = connect(client(node_url, f"bench-alarms-{label}"), node_url)
    pids = [p for p in (b.nats.pid(node) for node in b.nats.nodes) if p is not None]
    try:
        load.start()
        busy0, nats0, t0 = machine_busy_s(), sum(cpu_s(p) for p in pids), time.perf_counter()
        sent_at, _ = publish_alarms(pub, alarms, first=first)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            with lock:
                if all(d in seen for d in sent_at):
                    break
            time.sleep(0.1)
        busy, nats_cpu, elapsed = machine_busy_s() - busy0, sum(cpu_s(p) for p in pids) - nats0, time.perf_counter() - t0
        load.stop()
    finally:
        load.close()
        pub.disconnect()
        pub.loop_stop()
    with lock:
        lat = [(seen[d] - sent_at[d]) * 1000 for d in sent_at if d in seen]
        missing = sorted(set(sent_at) - set(seen))
    out = summary(lat, alarms=alarms, notified=len(lat), telemetry_load_msgs_per_s=load.achieved(),
                  first_alarm_at=min(sent_at.values()),
                  # how busy the machine was meanwhile (every process on it, other work included), and the NATS nodes
                  machine_busy_cores=round(busy / elapsed, 2), nats_nodes_cores=round(nats_cpu / elapsed, 2))
    if missing:
        out["not_notified"] = missing
    return out


def latency(b: Brokers, alarms: int, rate: float, load_devices: int, kill: str) -> dict[str, Any]:
    """Alerts on the cluster: the alarm latency with every node up, then with node `kill` SIGKILLed."""
    assert b.nats is not None
    log = b.tmp / "alerts.log"
    env = {**os.environ, "GRIDHUB_DATABASE_URL": b.db_url, "GRIDHUB_MQTT_URL": b.nats_url,
           "GRIDHUB_SECRET_KEY": ingest_bench.SECRET, "GRIDHUB_INSTANCE_ID": "bench",
           "GRIDHUB_DATA_DIR": str(b.tmp), **b.nats_env()}
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "alerts"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT)
    seen: dict[str, float] = {}
    lock = threading.Lock()

    def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        t = time.perf_counter()
        p = json.loads(msg.payload)
        if p.get("device_id"):
            with lock:
                seen.setdefault(p["device_id"], t)

    listen_url = f"mqtt://{HUB_USER}:{b.hub_password}@127.0.0.1:{b.nats.nodes[1].mqtt_port}"
    listen: paho.Client | None = None
    out: dict[str, Any] = {}
    try:
        _wait_alerts(b, proc, log)
        listen = listener(listen_url, [f"{PREFIX}/workers/+/tasks"], on_message)
        out["all_nodes_up_ms"] = alarm_round(b, alarms, 0, seen, lock, rate, load_devices, "up")
        pid = b.node_pid(kill)
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        time.sleep(5)  # the nodes left elect leaders for what the dead one led; the hub's sessions move
        # other buildings than the first round's: each alarm opens a task of its own
        out["one_node_down_ms"] = alarm_round(b, alarms, alarms, seen, lock, rate, load_devices, "down")
        out["one_node_down_ms"]["killed"] = kill
        out["one_node_down_ms"]["alarms_started_s_after_kill"] = round(
            out["one_node_down_ms"]["first_alarm_at"] - killed, 1)
        for r in ("all_nodes_up_ms", "one_node_down_ms"):
            out[r].pop("first_alarm_at")
        out["target_p99_ms"] = 200
        with psycopg.connect(b.db_url) as conn:
            row = conn.execute("SELECT count(*) FROM tasks WHERE type = 'fire_alarm'").fetchone()
        out["fire_alarm_tasks"] = row[0] if row else 0
    finally:
        if listen is not None:
            listen.disconnect()
            listen.loop_stop()
        stop_process(proc)
    out["alerts_log"] = str(log)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=60_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2, help="alternate single machine and cluster this many times")
    ap.add_argument("--partitions", type=int, default=4, help="GRIDHUB_PARTITIONS on the cluster")
    ap.add_argument("--window", type=int, default=4000, help="mosquitto's max_inflight_messages")
    ap.add_argument("--publisher", choices=["raw", "paho"], default="raw")
    ap.add_argument("--alarms", type=int, default=50)
    ap.add_argument("--rate", type=float, default=1000.0, help="telemetry load during the alarms, messages/s")
    ap.add_argument("--load-devices", type=int, default=200)
    ap.add_argument("--kill", default="n3", help="the NATS node to SIGKILL before the second alarm round")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    missing = _missing()
    if missing:
        print(json.dumps({"error": "bench/cluster.py cannot run: missing " + "; ".join(missing)}), file=sys.stderr)
        return 2
    ingest_bench.PUBLISHER = args.publisher
    n = args.messages - args.messages % 2
    tmp = Path(tempfile.mkdtemp(prefix="gridhub-bench-cluster-"))
    b = Brokers(tmp, args.partitions, args.window)
    result: dict[str, Any] = {}
    try:
        b.start(_registry(args.devices, args.alarms, args.load_devices))
        devices = [f"sa-{i:05d}" for i in range(args.devices)]
        if not args.skip_throughput:
            result["readings_stored"] = throughput(b, devices, n, args.rounds, args.window)
        failed = False
        try:
            result["alarm_to_worker"] = latency(b, args.alarms, args.rate, args.load_devices, args.kill)
        except RuntimeError as exc:  # the throughput figures are still printed
            result["alarm_to_worker"] = {"error": str(exc)}
            failed = True
        result["config"] = {"messages": n, "devices": args.devices, "partitions": args.partitions,
                            "nats_replicas": 3, "publishers": 2, "publisher": args.publisher,
                            "publishing_to": "n1", "qos": 1, "cpus": os.cpu_count(),
                            "database": "one local PostgreSQL for both (not Patroni)"}
        print(json.dumps(result, indent=2))
        return 1 if failed else 0
    finally:
        b.close()
        shutil.rmtree(tmp / "nats", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
