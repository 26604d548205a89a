"""Ingest throughput against the bare broker, printed as JSON.

Starts a private mosquitto and a fresh database on the local PostgreSQL (GRIDHUB_TEST_ADMIN_URL), imports a
generated registry of --devices smoke alarms, then runs the same N QoS 1 readings from 2 publisher processes
twice: once to one plain paho subscriber that only counts (the bare relay), once to `gridhub ingest` (a
subprocess), timing until every reading is durably stored. Usage: python bench/ingest.py [-n 200000]

The publishers write pre-encoded MQTT packets on plain sockets (--publisher raw, a few microseconds of CPU a
message) so that on a small machine the cores go to the broker and the consumer being compared; with paho-mqtt
publishers (--publisher paho) the load generator itself took about two thirds of the machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.db import migrate
from gridhub.registry import import_registry, parse
from gridhub.services.mosquitto import start_private_mosquitto
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings

ADMIN_URL = os.environ.get("GRIDHUB_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
SECRET = "bench-secret-" + "z" * 40
PREFIX = DEFAULT_TOPIC_PREFIX
CHUNK = 20_000


def registry(devices: int) -> dict[str, Any]:
    return {
        "districts": [{"id": "bench", "name": "基准区", "streets": [{"id": "bench-st", "name": "基准街道", "communities": [
            {"id": "bench-c", "name": "基准社区", "grids": [{"id": "g-bench", "name": "一网格", "buildings": [
                {"id": "b-bench", "name": "1号楼", "floors": 30}]}]}]}]}],
        "workers": [{"id": "w-bench", "name": "张三", "role": "grid_worker", "grids": ["g-bench"]}],
        "devices": [{"id": f"sa-{i:05d}", "kind": "smoke_alarm", "building": "b-bench", "floor": 1 + i % 30}
                    for i in range(devices)],
    }


PUBLISHER = "raw"  # --publisher
PUBLISHER_WINDOW = 100  # --publisher-window


def readings(worker: int, devices: list[str], count: int, base_ms: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(count):
        d = devices[i % len(devices)]
        body = {"ts": base_ms + i, "seq": i // len(devices), "metrics": {"battery_pct": 80 + i % 20,
                                                                       "temperature_c": 21.5}}
        out.append((f"{PREFIX}/devices/{d}/telemetry", orjson.dumps(body)))
    return out


def publisher(port: int, hub_password: str, worker: int, devices: list[str], count: int, base_ms: int,
              ready: Any, go: Any, out: Any) -> None:
    """One connection publishing `count` readings round-robin over `devices` at QoS 1, until all are acknowledged."""
    if PUBLISHER == "paho":
        paho_publisher(port, hub_password, worker, devices, count, base_ms, ready, go, out)
    else:
        raw_publisher(port, hub_password, worker, devices, count, base_ms, ready, go, out)


def _mqtt_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def _mqtt_packet(first: int, body: bytes) -> bytes:
    """A packet with its remaining length (MQTT's variable-length integer)."""
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def raw_publisher(port: int, hub_password: str, worker: int, devices: list[str], count: int, base_ms: int,
                  ready: Any, go: Any, out: Any) -> None:
    """The load generator: MQTT 3.1.1 over a plain socket, PUBLISH packets encoded beforehand and written in
    blocks, at most PUBLISHER_WINDOW unacknowledged, done when every PUBACK (checked by packet id, in order) has
    come back. It costs a few microseconds a message where paho's publisher costs around a hundred, so that the
    benchmark measures the broker and its consumer rather than the load generator sharing their cores."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client_id = f"bench-pub-{worker}-{uuid.uuid4().hex[:4]}"
    connect = (_mqtt_string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _mqtt_string(client_id)
               + _mqtt_string("gridhub-hub") + _mqtt_string(hub_password))
    sock.sendall(_mqtt_packet(0x10, connect))
    connack = b""
    while len(connack) < 4:
        chunk = sock.recv(4 - len(connack))
        if not chunk:
            raise RuntimeError("the broker closed the connection instead of answering CONNECT")
        connack += chunk
    if connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"the broker refused the publisher: CONNACK {connack.hex()}")
    packets = []
    ids = []
    for i, (topic, payload) in enumerate(readings(worker, devices, count, base_ms)):
        mid = i % 65535 + 1
        ids.append(mid)
        packets.append(_mqtt_packet(0x32, _mqtt_string(topic) + struct.pack("!H", mid) + payload))
    ready.set()
    go.wait()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    sent = acked = 0
    pending = b""
    while acked < count:
        if sent < count and sent - acked < PUBLISHER_WINDOW:
            upto = min(count, acked + PUBLISHER_WINDOW)
            sock.sendall(b"".join(packets[sent:upto]))
            sent = upto
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"the broker closed the connection after {acked} of {count} PUBACKs")
        pending += data
        whole = len(pending) - len(pending) % 4
        for pos in range(0, whole, 4):
            kind, length, mid = struct.unpack_from("!BBH", pending, pos)
            if kind != 0x40 or length != 2 or mid != ids[acked]:
                raise RuntimeError(f"expected PUBACK {ids[acked]}, got {pending[pos:pos + 4].hex()}")
            acked += 1
        pending = pending[whole:]
    out.put((worker, time.perf_counter() - t0, time.process_time() - cpu0))
    sock.sendall(b"\xe0\x00")
    sock.close()


def paho_publisher(port: int, hub_password: str, worker: int, devices: list[str], count: int, base_ms: int,
                   ready: Any, go: Any, out: Any) -> None:
    """The same with paho-mqtt (--publisher paho): about a hundred microseconds of CPU a message."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{worker}-{uuid.uuid4().hex[:4]}",
                    protocol=paho.MQTTv311)
    c.username_pw_set("gridhub-hub", hub_password)
    c.max_inflight_messages_set(PUBLISHER_WINDOW)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    payloads = readings(worker, devices, count, base_ms)
    ready.set()
    go.wait()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for start in range(0, len(payloads), CHUNK):  # paho has 65535 message ids for what is unacknowledged
        infos = [c.publish(t, p, qos=1) for t, p in payloads[start:start + CHUNK]]
        for info in infos:
            info.wait_for_publish(600)
    out.put((worker, time.perf_counter() - t0, time.process_time() - cpu0))
    c.disconnect()
    c.loop_stop()


def run_publishers(port: int, hub_password: str, devices: list[str], n: int, base_ms: int,
                   on_go: Any = None) -> tuple[float, float]:
    """Start 2 publisher processes, release them together; (seconds until both had every PUBACK, their CPU
    seconds)."""
    ctx = mp.get_context("fork")
    ready = [ctx.Event(), ctx.Event()]
    go = ctx.Event()
    out = ctx.Queue()
    halves = [devices[0::2], devices[1::2]]
    procs = [ctx.Process(target=publisher, args=(port, hub_password, w, halves[w], n // 2, base_ms + w * 10 * n, ready[w], go, out))
             for w in range(2)]
    for p in procs:
        p.start()
    for r in ready:
        r.wait(300)
    if on_go:
        on_go()
    go.set()
    times: list[float] = []
    cpu: list[float] = []
    while len(times) < len(procs):
        try:
            _w, seconds, cpu_s = out.get(timeout=1)
            times.append(seconds)
            cpu.append(cpu_s)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a publisher process failed (exit {dead[0].exitcode})") from None
    for p in procs:
        p.join(60)
    return max(times), sum(cpu)


def bare_relay(port: int, hub_password: str, devices: list[str], n: int, base_ms: int, broker_pid: int) -> dict[str, Any]:
    """One plain paho subscriber (QoS 1, automatic acks) that only counts."""
    got = [0]
    done = threading.Event()
    t: dict[str, float] = {}
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-relay", protocol=paho.MQTTv311)
    sub.username_pw_set("gridhub-hub", hub_password)
    subscribed = threading.Event()

    def on_message(c: paho.Client, u: Any, m: paho.MQTTMessage) -> None:
        got[0] += 1
        if got[0] == 1:
            t["first"] = time.perf_counter()
        if got[0] >= n:
            t["last"] = time.perf_counter()
            done.set()

    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/devices/+/telemetry", qos=1)
    sub.connect("127.0.0.1", port, keepalive=60)
    sub.loop_start()
    subscribed.wait(30)

    meter: dict[str, tuple[float, float, float]] = {}

    def go() -> None:
        t["start"] = time.perf_counter()
        meter["start"] = _cpu_s(broker_pid), _cpu_s(os.getpid()), _machine_busy_s()

    pub_s, pub_cpu = run_publishers(port, hub_password, devices, n, base_ms, go)
    if not done.wait(600):
        raise RuntimeError(f"the relay subscriber got {got[0]} of {n}")
    broker_cpu, sub_cpu, busy = (b - a for a, b in zip(meter["start"], (_cpu_s(broker_pid), _cpu_s(os.getpid()),
                                                                         _machine_busy_s()), strict=True))
    sub.disconnect()
    sub.loop_stop()
    elapsed = t["last"] - t["start"]
    us = 1e6 / n
    return {"messages": n, "seconds": round(elapsed, 3), "msg_per_s": round(n / elapsed), "publish_s": round(pub_s, 3),
            "cpu_us_per_msg": {"publishers": round(us * pub_cpu, 1), "mosquitto": round(us * broker_cpu, 1),
                               "subscriber": round(us * sub_cpu, 1), "machine": round(us * busy, 1)},
            "machine_busy_cores": round(busy / elapsed, 2)}


def ingest_run(url: str, port: int, hub_password: str, mqtt_url: str, devices: list[str], n: int, base_ms: int, tmp: Path,
               extra_env: dict[str, str], broker_pid: int) -> dict[str, Any]:
    env = {**os.environ, "GRIDHUB_DATABASE_URL": url, "GRIDHUB_MQTT_URL": mqtt_url, "GRIDHUB_SECRET_KEY": SECRET,
           "GRIDHUB_INSTANCE_ID": "bench", "GRIDHUB_DATA_DIR": str(tmp), **extra_env}
    log = tmp / "ingest.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "ingest"], env=env, stdout=fh, stderr=fh)
    try:
        deadline = time.monotonic() + 60
        while " connected (MQTT" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"ingest did not connect:\n{log.read_text()}")
            time.sleep(0.05)
        t: dict[str, float] = {}
        expected = 2 * n  # two metrics a reading message
        with psycopg.connect(url, autocommit=True) as conn:
            before = _counter(conn, "gridhub_readings_stored_total")
            batch0 = (_counter(conn, "gridhub_ingest_batches_total"), _counter(conn, "gridhub_ingest_batch_messages_total"),
                      _counter(conn, "gridhub_ingest_write_seconds_total"))

            def go() -> None:
                t["start"] = time.perf_counter()

            backends = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'gridhub-ingest'").fetchall()]
            background = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'").fetchall()]
            switches0 = _context_switches(proc.pid)
            cpu0 = (_cpu_s(proc.pid), sum(_cpu_s(b) for b in backends), _cpu_s(broker_pid), _machine_busy_s(),
                    sum(_cpu_s(b) for b in background))
            if os.environ.get("BENCH_PROFILE"):
                subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o", os.environ["BENCH_PROFILE"],
                                  "-f", "raw", "-d", "12", "-p", str(proc.pid), "--threads",
                                  *os.environ.get("BENCH_PROFILE_ARGS", "").split()], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            pub_s, pub_cpu = run_publishers(port, hub_password, devices, n, base_ms, go)
            while _counter(conn, "gridhub_readings_stored_total") - before < expected:
                if proc.poll() is not None:
                    raise RuntimeError(f"ingest exited:\n{log.read_text()[-3000:]}")
                time.sleep(0.02)
            elapsed = time.perf_counter() - t["start"]
            backends = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'gridhub-ingest'").fetchall()]
            switches = _context_switches(proc.pid) - switches0
            cpu = (_cpu_s(proc.pid) - cpu0[0], sum(_cpu_s(b) for b in backends) - cpu0[1],
                   _cpu_s(broker_pid) - cpu0[2], _machine_busy_s() - cpu0[3],
                   sum(_cpu_s(b) for b in background) - cpu0[4])
            stored = int(_counter(conn, "gridhub_readings_stored_total") - before)
            batches = _counter(conn, "gridhub_ingest_batches_total") - batch0[0]
            batch_msgs = _counter(conn, "gridhub_ingest_batch_messages_total") - batch0[1]
            write_s = _counter(conn, "gridhub_ingest_write_seconds_total") - batch0[2]
        return {"messages": n, "readings_stored": stored, "seconds": round(elapsed, 3),
                "msg_per_s": round(n / elapsed), "readings_per_s": round(stored / elapsed),
                "publish_s": round(pub_s, 3), "mean_batch": round(batch_msgs / max(batches, 1)),
                "mean_batch_write_ms": round(1000 * write_s / max(batches, 1), 1),
                "cpu_us_per_msg": {"publishers": round(1e6 * pub_cpu / n, 1), "mosquitto": round(1e6 * cpu[2] / n, 1),
                                   "ingest": round(1e6 * cpu[0] / n, 1), "postgres": round(1e6 * cpu[1] / n, 1),
                                   "postgres_background": round(1e6 * cpu[4] / n, 1),
                                   "machine": round(1e6 * cpu[3] / n, 1)},
                "machine_busy_cores": round(cpu[3] / elapsed, 2),
                "ingest_context_switches_per_msg": round(switches / n, 3)}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _context_switches(pid: int) -> int:
    """Context switches of every thread of a process so far (each is a wake-up: fewer means more work each)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every process, other work included), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _counter(conn: psycopg.Connection[Any], name: str) -> float:
    row = conn.execute("SELECT coalesce(sum(value), 0) FROM counters WHERE name = %s", (name,)).fetchone()
    return float(row[0]) if row else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=None, help="GRIDHUB_INGEST_BATCH for the ingest run")
    ap.add_argument("--linger-ms", type=float, default=None)
    ap.add_argument("--window", type=int, default=4000, help="the broker's max_inflight_messages")
    ap.add_argument("--order", choices=["relay-first", "ingest-first"], default="relay-first")
    ap.add_argument("--only", choices=["relay", "ingest"], default=None, help="run one side alone")
    ap.add_argument("--rounds", type=int, default=1, help="alternate relay and ingest this many times (other load "
                    "on the machine drifts); the summary is the round of median ratio")
    ap.add_argument("--publisher", choices=["raw", "paho"], default="raw",
                    help="the load generator: raw MQTT writes (default) or paho-mqtt clients")
    ap.add_argument("--publisher-window", type=int, default=100, help="unacknowledged messages a publisher allows")
    args = ap.parse_args()
    global PUBLISHER, PUBLISHER_WINDOW
    PUBLISHER, PUBLISHER_WINDOW = args.publisher, args.publisher_window
    n = args.messages - args.messages % 2
    tmp = Path(tempfile.mkdtemp(prefix="gridhub-bench-"))
    name = f"gridhub_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    broker = relay_broker = None
    try:
        migrate(url)
        with psycopg.connect(url) as conn:
            import_registry(conn, parse(yaml.safe_dump(registry(args.devices), allow_unicode=True)))
        broker = start_private_mosquitto(tmp, max_inflight_messages=args.window)
        mqtt_url = f"mqtt://gridhub-hub:{broker.hub_password()}@127.0.0.1:{broker.port}"
        settings = Settings(database_url=url, mqtt_url=mqtt_url, data_dir=tmp, secret_key=SECRET, instance_id="bench")
        with psycopg.connect(url) as conn:
            accounts, workers, hub = build_accounts(conn, settings)
        broker.apply_accounts(passwd_text(accounts), acl_text(PREFIX, hub.username, workers))
        time.sleep(0.5)
        broker_pid = int(broker.pid_file.read_text().split()[0])
        # the relay on a broker of its own: ingest's persistent session would queue the relay's messages on the
        # shared one and the next ingest round would store them too (rounds >= 2 inflated)
        (tmp / "relay").mkdir(exist_ok=True)
        relay_broker = start_private_mosquitto(tmp / "relay", max_inflight_messages=args.window)
        relay_broker.apply_accounts(passwd_text(accounts), acl_text(PREFIX, hub.username, workers))  # the same
        # accounts, so the hub's password from `settings` (the first broker's) is the relay broker's too
        time.sleep(0.5)
        relay_pid = int(relay_broker.pid_file.read_text().split()[0])
        devices = [f"sa-{i:05d}" for i in range(args.devices)]
        base_ms = int(time.time() * 1000) - 40 * n * args.rounds
        extra = {"GRIDHUB_INGEST_WINDOW": str(args.window)}
        if args.batch:
            extra["GRIDHUB_INGEST_BATCH"] = str(args.batch)
        if args.linger_ms is not None:
            extra["GRIDHUB_INGEST_LINGER_MS"] = str(args.linger_ms)
        runs = ["relay", "ingest"] if args.order == "relay-first" else ["ingest", "relay"]
        if args.only:
            runs = [args.only]
        rounds: list[dict[str, Any]] = []
        for k in range(args.rounds):
            one: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 2)}
            start_ms = base_ms + k * 40 * n
            for r in runs:
                if r == "relay":
                    one["bare_relay"] = bare_relay(relay_broker.port, broker.hub_password(), devices, n, start_ms,
                                                   relay_pid)
                else:
                    one["ingest"] = ingest_run(url, broker.port, broker.hub_password(), mqtt_url, devices, n,
                                               start_ms + 20 * n, tmp, extra, broker_pid)
            if len(runs) == 2:
                one["ratio"] = round(one["ingest"]["msg_per_s"] / one["bare_relay"]["msg_per_s"], 3)
                relay_cpu, ingest_cpu = one["bare_relay"]["cpu_us_per_msg"], one["ingest"]["cpu_us_per_msg"]
                # the ratio on a machine with nothing else to do: both runs use every core, so throughput is
                # inversely proportional to the CPU time a message costs the processes taking part
                one["cpu_ratio"] = round(sum(v for key, v in relay_cpu.items() if key != "machine")
                                         / sum(v for key, v in ingest_cpu.items() if key != "machine"), 3)
            rounds.append(one)
            print(json.dumps({"round": k + 1, **{key: one.get(key) for key in ("load_average", "ratio", "cpu_ratio")}}),
                  file=sys.stderr)
        rounds_by_ratio = sorted(rounds, key=lambda x: x.get("ratio", 0))
        results: dict[str, Any] = dict(rounds_by_ratio[len(rounds) // 2])
        if args.rounds > 1:
            results["rounds"] = [{key: one.get(key) for key in ("load_average", "ratio", "cpu_ratio")}
                                 | {"relay_msg_per_s": one.get("bare_relay", {}).get("msg_per_s"),
                                    "ingest_msg_per_s": one.get("ingest", {}).get("msg_per_s"),
                                    "relay_cpu_us": one.get("bare_relay", {}).get("cpu_us_per_msg"),
                                    "ingest_cpu_us": one.get("ingest", {}).get("cpu_us_per_msg")} for one in rounds]
        results["target"] = 0.8
        results["config"] = {"publishers": 2, "publisher": args.publisher, "publisher_window": args.publisher_window,
                             "devices": args.devices, "qos": 1, "broker_max_inflight": args.window,
                             "cpus": os.cpu_count(), **extra}
        print(json.dumps(results, indent=2))
        return 0
    finally:
        if relay_broker is not None:
            relay_broker.stop()
        if broker is not None:
            broker.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
