"""What one partition costs on NATS (issue 15 item 2): readings/s that one `gridhub ingest` process stores from a 3-node
NATS JetStream cluster (Debian's nats-server, gridhub/services/nats.py) with P = 1, 2, 4, 8 partitions, each held
partition being one persistent MQTT session, that is one replicated (R3) JetStream consumer on the cluster.

For each P: a fresh database with `--devices` sprinkler gauges, a fresh cluster whose accounts map the devices onto
P partitions, one ingest process holding all P (GRIDHUB_BROKER=nats, a multi-host URL), and `--publishers`
processes publishing `--readings` QoS 1 readings as fast as the broker acknowledges them (each device on its own
connection, spread over the three nodes). Printed as JSON: per P, the publish rate (PUBACKed/s), the store rate
(readings stored / s from the first publish to the last reading stored), the consumers the cluster reports, and the
ingest process's CPU seconds. Everything it starts is stopped at the end.

    python bench/partitions.py [--partitions 1,2,4,8] [--readings 20000] [--devices 32] [--publishers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
from _harness import ADMIN_URL, registry_yaml
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.accounts import derived_password
from gridhub.db import migrate
from gridhub.registry import import_registry, parse
from gridhub.services.nats import NatsCluster, NatsUser, accounts_conf, free_layout, registry_users
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings

SECRET = "bench-partitions-" + "z" * 32
HUB_USER = "gridhub-hub"


def publish(port: int, devices: list[str], per_device: int, base_ms: int, result: Any) -> None:
    """One publisher process: each device its own MQTT 3.1.1 connection, QoS 1, up to 200 in flight each; returns
    (published, seconds) through `result`."""
    clients = []
    for d in devices:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{d}-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv311)
        c.username_pw_set(d, derived_password(SECRET, "device", d))
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        clients.append((d, c))
    began = time.monotonic()
    infos = []
    for seq in range(per_device):
        for d, c in clients:
            body = orjson.dumps({"ts": base_ms + seq * 10, "seq": seq, "metrics": {"pressure_mpa": 0.3}})
            while True:
                info = c.publish(f"{DEFAULT_TOPIC_PREFIX}/devices/{d}/telemetry", body, qos=1)
                if info.rc == paho.MQTT_ERR_SUCCESS:
                    break
                time.sleep(0.002)  # paho's in-flight window is full
            infos.append(info)
    for info in infos:
        info.wait_for_publish(120)
    published = sum(1 for i in infos if i.is_published())
    result.put((published, time.monotonic() - began))
    for _, c in clients:
        c.disconnect()
        c.loop_stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stored(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


def one_run(partitions: int, readings: int, n_devices: int, publishers: int) -> dict[str, Any]:
    db = f"gridhub_bench_p{partitions}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{db}"
    root = Path(tempfile.mkdtemp(prefix="gridhub-bench-nats-"))
    cluster = NatsCluster(root / "nats", free_layout())
    proc: subprocess.Popen[bytes] | None = None
    try:
        migrate(url)
        with psycopg.connect(url) as conn:
            import_registry(conn, parse(registry_yaml(10, n_devices)))
        password = uuid.uuid4().hex
        settings = Settings(database_url=url, mqtt_url=f"mqtt://{HUB_USER}:{password}@127.0.0.1:1", data_dir=root,
                            secret_key=SECRET, broker="nats", partitions=partitions)
        with psycopg.connect(url) as conn:
            hub, devices, _ = registry_users(conn, settings, partitions)
        cluster.write_config(accounts_conf(DEFAULT_TOPIC_PREFIX, partitions, hub, devices,
                                           NatsUser("sys", uuid.uuid4().hex)))
        cluster.start(timeout=120)
        mqtt_url = f"mqtt://{HUB_USER}:{password}@" + ",".join(f"127.0.0.1:{n.mqtt_port}" for n in cluster.nodes)
        env = {**os.environ, "GRIDHUB_DATABASE_URL": url, "GRIDHUB_MQTT_URL": mqtt_url, "GRIDHUB_SECRET_KEY": SECRET,
               "GRIDHUB_INSTANCE_ID": "bench", "GRIDHUB_DATA_DIR": str(root), "GRIDHUB_BROKER": "nats",
               "GRIDHUB_PARTITIONS": str(partitions), "GRIDHUB_BROKER_CHECK": "off"}
        log = root / "ingest.log"
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "ingest"], env=env, stdout=out, stderr=out)
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count(" connected (MQTT") < partitions:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"ingest did not connect its {partitions} sessions:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        ids = [f"bld-{i}" for i in range(n_devices)]
        per_device = readings // n_devices
        total = per_device * n_devices
        cpu0 = cpu_seconds(proc.pid)
        base_ms = int(time.time() * 1000) - 86_400_000
        results: Any = mp.Queue()
        began = time.monotonic()
        pubs = [mp.Process(target=publish, args=(cluster.nodes[k % 3].mqtt_port, ids[k::publishers], per_device,
                                                 base_ms, results)) for k in range(publishers)]
        for p in pubs:
            p.start()
        outcomes = [results.get(timeout=600) for _ in pubs]
        for p in pubs:
            p.join(30)
        published = sum(o[0] for o in outcomes)
        publish_s = max(o[1] for o in outcomes)
        last, last_change = stored(url), time.monotonic()
        while last < total and time.monotonic() - last_change < 60:
            time.sleep(0.2)
            now = stored(url)
            if now != last:
                last, last_change = now, time.monotonic()
        store_s = last_change - began
        cpu = cpu_seconds(proc.pid) - cpu0
        consumers = 0
        try:
            jsz = cluster.monitor(cluster.nodes[0], "/jsz?acc=DEVICES&consumers=true")
            consumers = int(jsz.get("consumers") or 0)
        except OSError:
            pass
        return {"partitions": partitions, "published": published, "stored": last, "publish_per_s": round(published / publish_s),
                "stored_per_s": round(last / store_s), "ingest_cpu_s": round(cpu, 1),
                "ingest_cpu_us_per_reading": round(cpu * 1e6 / max(1, last)), "devices_consumers": consumers}
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", default="1,2,4,8")
    ap.add_argument("--readings", type=int, default=20_000)
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--publishers", type=int, default=2)
    args = ap.parse_args()
    runs = [one_run(int(p), args.readings, args.devices, args.publishers) for p in args.partitions.split(",")]
    print(json.dumps({"bench": "partitions", "nats_nodes": 3, "replicas": 3, "cpus": os.cpu_count(),
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
