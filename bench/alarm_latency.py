"""Alarm latency under load: prints JSON.

A private mosquitto and a fresh database; a `gridhub alerts` process; a telemetry load from another process at
`--rate` messages/s (default half the bare QoS 1 broker rate measured on this machine class, HOUSE.md); then
100 smoke alarms from 100 buildings, each timed from publish to the task notification on the worker's topic;
then the offline delay of a device with a 2 s heartbeat against 2 x heartbeat, and the last-will delay.

    .venv/bin/python bench/alarm_latency.py [--rate 6000] [--alarms 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
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
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.accounts import derived_password, mosquitto_hash
from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.db import migrate
from gridhub.mqtt import BrokerAddress
from gridhub.registry import import_registry, parse
from gridhub.services.mosquitto import start_private_mosquitto
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings

ADMIN_URL = os.environ.get("GRIDHUB_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
PREFIX = DEFAULT_TOPIC_PREFIX


def registry_yaml(buildings: int, load_devices: int) -> str:
    grids = []
    for g in range(10):
        bs = ", ".join(f"{{id: bb-{b}, name: {b}号楼}}" for b in range(buildings) if b % 10 == g)
        grids.append(f"              - id: bg-{g}\n                name: 网格{g}\n                buildings: [{bs}]")
    workers = "\n".join(f"  - {{id: bw-{g}, name: 张{g}, role: grid_worker, grids: [bg-{g}]}}" for g in range(10))
    devices = [f"  - {{id: bsa-{b}, kind: smoke_alarm, building: bb-{b}, floor: 1}}" for b in range(buildings)]
    devices += [f"  - {{id: bld-{i}, kind: sprinkler_pressure, building: bb-{i % buildings}, floor: 1}}"
                for i in range(load_devices)]
    devices += ["  - {id: bhb-1, kind: smoke_alarm, building: bb-0, floor: 2, heartbeat_s: 2}",
                "  - {id: bwill-1, kind: smoke_alarm, building: bb-1, floor: 2}"]
    return ("districts:\n  - id: bd\n    name: 测试区\n    streets:\n      - id: bs\n        name: 测试街道\n"
            "        communities:\n          - id: bc\n            name: 测试社区\n            grids:\n"
            + "\n".join(grids) + "\nworkers:\n" + workers + "\ndevices:\n" + "\n".join(devices) + "\n")


def client(url: str, cid: str, user: str | None = None, password: str | None = None) -> paho.Client:
    addr = BrokerAddress.parse(url)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv311)
    c.username_pw_set(user or addr.username, password or addr.password)
    return c


def load_publisher(url: str, rate: float, devices: int, stop: Any, sent: Any) -> None:
    """Telemetry from `devices` sprinkler gauges at `rate` messages/s, QoS 1, until `stop` is set."""
    addr = BrokerAddress.parse(url)
    c = client(url, f"bench-load-{os.getpid()}")
    c.max_inflight_messages_set(1000)
    c.connect(addr.host, addr.port)
    c.loop_start()
    n = 0
    start = time.perf_counter()
    while not stop.is_set():
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        dev = f"bld-{n % devices}"
        body = json.dumps({"ts": int(time.time() * 1000), "seq": n, "metrics": {"pressure_mpa": 0.3 + (n % 3) * 0.001}})
        c.publish(f"{PREFIX}/devices/{dev}/telemetry", body, qos=1)
        n += 1
    sent.value = n / (time.perf_counter() - start)
    c.disconnect()
    c.loop_stop()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=6000.0, help="telemetry load, messages/s (QoS 1)")
    ap.add_argument("--alarms", type=int, default=100)
    ap.add_argument("--load-devices", type=int, default=500)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gridhub-bench-"))
    hub_pw = secrets.token_urlsafe(16)
    mq = start_private_mosquitto(tmp, passwd_text=f"gridhub-hub:{mosquitto_hash(hub_pw)}\n",
                                 acl_text=acl_text(PREFIX, "gridhub-hub", []))
    url = f"mqtt://gridhub-hub:{hub_pw}@127.0.0.1:{mq.port}"
    dbname = f"gridhub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    proc: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {}
    try:
        migrate(db_url)
        settings = Settings(database_url=db_url, mqtt_url=url, data_dir=tmp, secret_key="bench-" + "k" * 40,
                            instance_id="bench")
        with psycopg.connect(db_url) as conn:
            import_registry(conn, parse(registry_yaml(args.alarms, args.load_devices)))
            accounts, workers, hub = build_accounts(conn, settings)
        mq.apply_accounts(passwd_text(accounts), acl_text(PREFIX, hub.username, workers))
        rules = tmp / "rules.yaml"
        rules.write_text("offline: {grace_margin_s: 1}\n")
        env = {**os.environ, "GRIDHUB_DATABASE_URL": db_url, "GRIDHUB_MQTT_URL": url, "GRIDHUB_DATA_DIR": str(tmp),
               "GRIDHUB_SECRET_KEY": settings.secret_key or "", "GRIDHUB_INSTANCE_ID": "bench",
               "GRIDHUB_RULES_FILE": str(rules)}
        proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "alerts"], env=env,
                                stdout=(tmp / "alerts.log").open("ab"),  # noqa: SIM115 - the child owns it
                                stderr=subprocess.STDOUT)

        seen: dict[str, float] = {}
        offline_at: dict[str, float] = {}
        lock = threading.Lock()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            t = time.perf_counter()
            p = json.loads(msg.payload)
            with lock:
                if msg.topic.endswith("/tasks") and p.get("device_id"):
                    seen.setdefault(p["device_id"], t)
                elif msg.topic.endswith("/alerts") and p.get("type") == "device_offline" and p.get("state") == "active":
                    offline_at.setdefault(p["device_id"], t)

        listener = client(url, "bench-listener")
        subscribed = threading.Event()
        listener.on_connect = lambda c, u, f, rc, p=None: c.subscribe([(f"{PREFIX}/workers/+/tasks", 1),
                                                                        (f"{PREFIX}/alerts", 1)])
        listener.on_subscribe = lambda c, u, mid, rcs, p=None: subscribed.set()
        listener.on_message = on_message
        addr = BrokerAddress.parse(url)
        listener.connect(addr.host, addr.port)
        listener.loop_start()
        subscribed.wait(10)
        with psycopg.connect(db_url, autocommit=True) as conn:
            end = time.monotonic() + 30
            while time.monotonic() < end and conn.execute(
                    "SELECT count(*) FROM alert_shards WHERE holder = 'gridhub-alerts-bench'").fetchone() != (64,):
                time.sleep(0.2)
        time.sleep(3)  # subscribed, backlog marker seen

        pub = client(url, "bench-alarms")
        pub.connect(addr.host, addr.port)
        pub.loop_start()
        stop, sent = mp.Event(), mp.Value("d", 0.0)
        loader = mp.Process(target=load_publisher, args=(url, args.rate, args.load_devices, stop, sent))
        loader.start()
        time.sleep(3)  # load running
        sent_at: dict[str, float] = {}
        for b in range(args.alarms):
            dev = f"bsa-{b}"
            body = json.dumps({"ts": int(time.time() * 1000), "seq": 1, "type": "alarm", "detail": {}})
            sent_at[dev] = time.perf_counter()
            pub.publish(f"{PREFIX}/devices/{dev}/event", body, qos=1)
            time.sleep(0.05)
        def notified() -> int:  # the alarms' devices only: other devices' tasks (bhb-1 offline) come too
            with lock:
                return sum(1 for d in sent_at if d in seen)

        end = time.monotonic() + 30
        while time.monotonic() < end and notified() < args.alarms:
            time.sleep(0.1)
        stop.set()
        loader.join(30)
        with lock:
            lat = [(seen[d] - sent_at[d]) * 1000 for d in sent_at if d in seen]
            missing = sorted(set(sent_at) - set(seen))
        result["alarm_to_worker_ms"] = {"alarms": args.alarms, "notified": len(lat),
                                        "p50": pct(lat, 0.5) if lat else None, "p99": pct(lat, 0.99) if lat else None,
                                        "max": round(max(lat), 1) if lat else None, "target_p99": 200}
        with psycopg.connect(db_url) as conn:
            row = conn.execute("SELECT count(*) FROM tasks WHERE type = 'fire_alarm'").fetchone()
        result["alarm_to_worker_ms"]["tasks_opened"] = row[0] if row else 0
        if missing:
            result["alarm_to_worker_ms"]["not_notified"] = missing
        result["telemetry_load_msgs_per_s"] = {"target": args.rate, "achieved": round(sent.value, 0)}

        # offline by heartbeat: a device with heartbeat_s = 2 says one thing and falls silent
        secret = settings.signing_key()
        hb = client(url, "bench-hb", "bhb-1", derived_password(secret, "device", "bhb-1"))
        hb.connect(addr.host, addr.port)
        hb.loop_start()
        info = hb.publish(f"{PREFIX}/devices/bhb-1/event",
                          json.dumps({"ts": int(time.time() * 1000), "seq": 1, "type": "heartbeat"}), qos=1)
        info.wait_for_publish(5)
        last = time.perf_counter()
        time.sleep(0.5)  # it spoke: an offline alert from before (never heard since start) clears
        with lock:
            offline_at.pop("bhb-1", None)
        hb.disconnect()
        hb.loop_stop()
        end = time.monotonic() + 30
        while time.monotonic() < end and "bhb-1" not in offline_at:
            time.sleep(0.05)
        if "bhb-1" in offline_at:
            d = offline_at["bhb-1"] - last
            result["offline_by_heartbeat_s"] = {"heartbeat_s": 2, "limit_2x": 4, "delay": round(d, 2),
                                                "over_2x": round(d - 4, 2), "target_over_2x_max": 5}
        # last will: the connection drops without DISCONNECT
        wc = client(url, "bench-will", "bwill-1", derived_password(secret, "device", "bwill-1"))
        wc.will_set(f"{PREFIX}/devices/bwill-1/status", "offline", qos=1, retain=True)
        wc.connect(addr.host, addr.port, keepalive=60)
        wc.loop_start()
        time.sleep(1)
        wc.loop_stop()
        sock = wc.socket()
        dropped = time.perf_counter()
        if sock is not None:
            sock.close()
        end = time.monotonic() + 30
        while time.monotonic() < end and "bwill-1" not in offline_at:
            time.sleep(0.02)
        if "bwill-1" in offline_at:
            result["last_will_s"] = {"delay": round(offline_at["bwill-1"] - dropped, 3), "target_max": 5}
        pub.loop_stop()
        listener.loop_stop()
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        mq.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    result["alerts_log"] = str(tmp / "alerts.log")  # per alarm: queue wait, transaction, publish after commit
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
