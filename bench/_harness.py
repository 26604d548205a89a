"""What the alarm benches share (bench/alarm_latency.py, bench/notify_latency.py): a private mosquitto and a fresh
database with the benches' registry, the `gridhub` processes started on them, MQTT clients, the telemetry load from
another process, and the percentiles.

Not a benchmark itself: `make bench` runs `bench/*.py` but for the files whose name starts with `_`. The benches run
as scripts (`python bench/x.py`), so this folder is on `sys.path` and they import it as `_harness`.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.accounts import mosquitto_hash
from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.db import migrate
from gridhub.mqtt import BrokerAddress
from gridhub.registry import import_registry, parse
from gridhub.services.mosquitto import start_private_mosquitto
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings

ADMIN_URL = os.environ.get("GRIDHUB_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
PREFIX = DEFAULT_TOPIC_PREFIX


def registry_yaml(buildings: int, load_devices: int, *, phones: bool = False, extra_devices: Iterable[str] = ()) -> str:
    """One smoke alarm `bsa-<b>` per building `bb-<b>` in 10 grids with one worker `bw-<g>` each (`phones`: with a
    phone, for an SMS route), `load_devices` sprinkler gauges `bld-<i>` for the load, and `extra_devices` (YAML
    flow mappings) after them."""
    grids = []
    for g in range(10):
        bs = ", ".join(f"{{id: bb-{b}, name: {b}号楼}}" for b in range(buildings) if b % 10 == g)
        grids.append(f"              - id: bg-{g}\n                name: 网格{g}\n                buildings: [{bs}]")
    phone = (lambda g: f", phone: '1380000{g:04d}'") if phones else (lambda g: "")
    workers = "\n".join(f"  - {{id: bw-{g}, name: 张{g}, role: grid_worker, grids: [bg-{g}]{phone(g)}}}"
                        for g in range(10))
    devices = [f"  - {{id: bsa-{b}, kind: smoke_alarm, building: bb-{b}, floor: 1}}" for b in range(buildings)]
    devices += [f"  - {{id: bld-{i}, kind: sprinkler_pressure, building: bb-{i % buildings}, floor: 1}}"
                for i in range(load_devices)]
    devices += [f"  - {d}" for d in extra_devices]
    return ("districts:\n  - id: bd\n    name: 测试区\n    streets:\n      - id: bs\n        name: 测试街道\n"
            "        communities:\n          - id: bc\n            name: 测试社区\n            grids:\n"
            + "\n".join(grids) + "\nworkers:\n" + workers + "\ndevices:\n" + "\n".join(devices) + "\n")


def client(url: str, cid: str, user: str | None = None, password: str | None = None) -> paho.Client:
    """A paho client for the broker at `url`, logged in as the URL's account unless `user`/`password` are given."""
    addr = BrokerAddress.parse(url)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv311)
    c.username_pw_set(user or addr.username, password or addr.password)
    return c


def connect(c: paho.Client, url: str, **kwargs: Any) -> paho.Client:
    """`c` connected to the broker at `url`, its network loop running."""
    addr = BrokerAddress.parse(url)
    c.connect(addr.host, addr.port, **kwargs)
    c.loop_start()
    return c


def listener(url: str, topics: list[str], on_message: Callable[[paho.Client, Any, paho.MQTTMessage], None]) -> paho.Client:
    """A client `bench-listener` subscribed (QoS 1) to `topics`, once the broker confirmed (at most 10 s)."""
    c = client(url, "bench-listener")
    subscribed = threading.Event()
    c.on_connect = lambda c, u, f, rc, p=None: c.subscribe([(t, 1) for t in topics])
    c.on_subscribe = lambda c, u, mid, rcs, p=None: subscribed.set()
    c.on_message = on_message
    connect(c, url)
    subscribed.wait(10)
    return c


def load_publisher(url: str, rate: float, devices: int, stop: Any, sent: Any) -> None:
    """Telemetry from `devices` sprinkler gauges at `rate` messages/s, QoS 1, until `stop` is set."""
    c = client(url, f"bench-load-{os.getpid()}")
    c.max_inflight_messages_set(1000)
    connect(c, url)
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


class Load:
    """`load_publisher` in another process: `start` (then 3 s for it to run), `stop`, `achieved` messages/s."""

    def __init__(self, url: str, rate: float, devices: int) -> None:
        self.stop_event = mp.Event()
        self.sent = mp.Value("d", 0.0)
        self.process = mp.Process(target=load_publisher, args=(url, rate, devices, self.stop_event, self.sent))

    def start(self) -> None:
        self.process.start()
        time.sleep(3)  # load running

    def stop(self) -> None:
        self.stop_event.set()
        self.process.join(30)

    def close(self) -> None:
        """For a `finally`: stopped, killed if it does not stop."""
        self.stop_event.set()
        if self.process.is_alive():
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()

    def achieved(self) -> float:
        return round(self.sent.value, 0)


def publish_alarms(pub: paho.Client, count: int, *, first: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """One smoke alarm from each of `bsa-<first>` .. `bsa-<first+count-1>`, 50 ms apart: when each was published, by
    device (perf_counter, and wall clock)."""
    sent_at: dict[str, float] = {}
    sent_wall: dict[str, float] = {}
    for b in range(first, first + count):
        dev = f"bsa-{b}"
        body = json.dumps({"ts": int(time.time() * 1000), "seq": 1, "type": "alarm", "detail": {}})
        sent_at[dev], sent_wall[dev] = time.perf_counter(), time.time()
        pub.publish(f"{PREFIX}/devices/{dev}/event", body, qos=1)
        time.sleep(0.05)
    return sent_at, sent_wall


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 1)


def summary(values: list[float], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(extra)
    out.update(n=len(values), p50=pct(values, 0.5) if values else None, p99=pct(values, 0.99) if values else None,
               max=round(max(values), 1) if values else None)
    return out


def stop_process(proc: subprocess.Popen[bytes] | None) -> int | None:
    """SIGTERM, 20 s to exit, then killed; its exit code (None: never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class PrivateHub:
    """A private mosquitto (the hub's account only until `prepare`) and a fresh database in a new temporary folder
    `tmp`; `close` stops the broker and drops the database."""

    def __init__(self, tmp_prefix: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix))
        hub_pw = secrets.token_urlsafe(16)
        self.mq = start_private_mosquitto(self.tmp, passwd_text=f"gridhub-hub:{mosquitto_hash(hub_pw)}\n",
                                          acl_text=acl_text(PREFIX, "gridhub-hub", []))
        self.url = f"mqtt://gridhub-hub:{hub_pw}@127.0.0.1:{self.mq.port}"
        self.dbname = f"gridhub_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + self.dbname
        self.settings = Settings(database_url=self.db_url, mqtt_url=self.url, data_dir=self.tmp,
                                 secret_key="bench-" + "k" * 40, instance_id="bench")
        self.env: dict[str, str] = {}

    def prepare(self, registry: str, **env: str) -> None:
        """The schema, the registry and the broker's accounts for it, a rules file (offline grace margin 1 s), and
        `env`: the `gridhub` processes' environment, with the extra variables given."""
        migrate(self.db_url)
        with psycopg.connect(self.db_url) as conn:
            import_registry(conn, parse(registry))
            accounts, workers, hub = build_accounts(conn, self.settings)
        self.mq.apply_accounts(passwd_text(accounts), acl_text(PREFIX, hub.username, workers))
        rules = self.tmp / "rules.yaml"
        rules.write_text("offline: {grace_margin_s: 1}\n")
        self.env = {**os.environ, "GRIDHUB_DATABASE_URL": self.db_url, "GRIDHUB_MQTT_URL": self.url,
                    "GRIDHUB_DATA_DIR": str(self.tmp), "GRIDHUB_SECRET_KEY": self.settings.secret_key or "",
                    "GRIDHUB_INSTANCE_ID": "bench", "GRIDHUB_RULES_FILE": str(rules), **env}

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def spawn(self, log: str, *args: str) -> subprocess.Popen[bytes]:
        """`gridhub <args>` on this hub, its output in `<tmp>/<log>.log`."""
        return subprocess.Popen([sys.executable, "-m", "gridhub.cli", *args], env=self.env,
                                stdout=self.log(log).open("ab"),  # noqa: SIM115 - the child owns it
                                stderr=subprocess.STDOUT)

    def wait_for_alerts(self) -> None:
        """Until the alerts process holds its partition lease (at most 30 s), then 3 s: subscribed, backlog marker
        seen."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            end = time.monotonic() + 30
            while time.monotonic() < end and conn.execute(
                    "SELECT count(*) FROM part_leases WHERE part = 'alerts' AND holder LIKE 'bench/%'"
                    " AND expires_at > now()").fetchone() != (1,):
                time.sleep(0.2)
        time.sleep(3)

    def close(self) -> None:
        self.mq.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
