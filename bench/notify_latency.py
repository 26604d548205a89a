"""Notification latency under load: prints JSON.

As bench/alarm_latency.py (a private mosquitto, a fresh database, a registry of `--alarms` buildings, the
`gridhub alerts` process, a telemetry load from another process at `--rate` messages/s QoS 1, then one smoke alarm
per building 50 ms apart), plus a notify file (CONTRACT §6) with a signed `webhook` channel and an `sms` channel
(`provider: http`) pointing at the local stand-ins of tests/standins.py, routed `critical: {assignee: [hook, sms]}`,
and a `gridhub notify run` process that sends the deliveries the alerts process plans.

Each alarm is timed from its publish to the first request for its task that a stand-in accepts (either channel;
the webhook body's `task.device_id`, the SMS gateway's delivery id mapped to its task's device through
`notify_deliveries`). Beside it, in the same run: the alarm to the MQTT task notification on the worker's topic
(the part before the sender), the bare round trip of one signed webhook POST through the same channel class (the
floor of one delivery), the delivery rows' states, and the telemetry load achieved. A benchmark measures; nothing
here asserts a time.

    .venv/bin/python bench/notify_latency.py [--rate 6000] [--alarms 100] [--bare 100]
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
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests/standins.py: the vendors' stand-ins (tests is a namespace package)

from gridhub.accounts import mosquitto_hash  # noqa: E402
from gridhub.alerts.notify import channels as notify_channels  # noqa: E402
from gridhub.broker import acl_text, build_accounts, passwd_text  # noqa: E402
from gridhub.db import migrate  # noqa: E402
from gridhub.mqtt import BrokerAddress  # noqa: E402
from gridhub.notifyfile import load as load_notify_file  # noqa: E402
from gridhub.registry import import_registry, parse  # noqa: E402
from gridhub.services.mosquitto import start_private_mosquitto  # noqa: E402
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings  # noqa: E402
from tests.standins import HttpSmsGateway, Received, WebhookReceiver, sample_message  # noqa: E402

ADMIN_URL = os.environ.get("GRIDHUB_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
PREFIX = DEFAULT_TOPIC_PREFIX


class TimedWebhook(WebhookReceiver):
    """The §6 webhook receiver, with the time (perf_counter, this process) each request arrived."""

    def handle(self, req: Received) -> tuple[int, Any]:
        t, wall = time.perf_counter(), time.time()
        answer = super().handle(req)  # raises Refused for a request it rejects: not recorded as received
        req.extra.update(t=t, wall=wall)
        return answer


class TimedSms(HttpSmsGateway):
    def handle(self, req: Received) -> tuple[int, Any]:
        t, wall = time.perf_counter(), time.time()
        answer = super().handle(req)
        req.extra.update(t=t, wall=wall)
        return answer


def registry_yaml(buildings: int, load_devices: int) -> str:
    """bench/alarm_latency.py's registry (10 grids, one worker each), the workers with phones for the SMS route."""
    grids = []
    for g in range(10):
        bs = ", ".join(f"{{id: bb-{b}, name: {b}号楼}}" for b in range(buildings) if b % 10 == g)
        grids.append(f"              - id: bg-{g}\n                name: 网格{g}\n                buildings: [{bs}]")
    workers = "\n".join(f"  - {{id: bw-{g}, name: 张{g}, role: grid_worker, grids: [bg-{g}], phone: '1380000{g:04d}'}}"
                        for g in range(10))
    devices = [f"  - {{id: bsa-{b}, kind: smoke_alarm, building: bb-{b}, floor: 1}}" for b in range(buildings)]
    devices += [f"  - {{id: bld-{i}, kind: sprinkler_pressure, building: bb-{i % buildings}, floor: 1}}"
                for i in range(load_devices)]
    return ("districts:\n  - id: bd\n    name: 测试区\n    streets:\n      - id: bs\n        name: 测试街道\n"
            "        communities:\n          - id: bc\n            name: 测试社区\n            grids:\n"
            + "\n".join(grids) + "\nworkers:\n" + workers + "\ndevices:\n" + "\n".join(devices) + "\n")


def client(url: str, cid: str) -> paho.Client:
    addr = BrokerAddress.parse(url)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv311)
    c.username_pw_set(addr.username, addr.password)
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


def summary(values: list[float], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(extra)
    out.update(n=len(values), p50=pct(values, 0.5) if values else None, p99=pct(values, 0.99) if values else None,
               max=round(max(values), 1) if values else None)
    return out


def stop_process(proc: subprocess.Popen[bytes] | None) -> int | None:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=6000.0, help="telemetry load, messages/s (QoS 1)")
    ap.add_argument("--alarms", type=int, default=100)
    ap.add_argument("--load-devices", type=int, default=500)
    ap.add_argument("--bare", type=int, default=100, help="direct webhook POSTs for the round-trip floor")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the deliveries after the last alarm")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gridhub-bench-notify-"))
    hub_pw = secrets.token_urlsafe(16)
    hook_secret, sms_token = secrets.token_hex(16), secrets.token_hex(12)
    hook, sms = TimedWebhook(secret=hook_secret), TimedSms(token=sms_token)
    mq = start_private_mosquitto(tmp, passwd_text=f"gridhub-hub:{mosquitto_hash(hub_pw)}\n",
                                 acl_text=acl_text(PREFIX, "gridhub-hub", []))
    url = f"mqtt://gridhub-hub:{hub_pw}@127.0.0.1:{mq.port}"
    dbname = f"gridhub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    db_url = ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    alerts: subprocess.Popen[bytes] | None = None
    sender: subprocess.Popen[bytes] | None = None
    loader: mp.Process | None = None
    stop = mp.Event()
    listener: paho.Client | None = None
    pub: paho.Client | None = None
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
        notify_file = tmp / "notify.yaml"
        notify_file.write_text(
            "channels:\n"
            f"  hook: {{type: webhook, url: {json.dumps(hook.url)}, secret: {json.dumps(hook_secret)}}}\n"
            f"  sms: {{type: sms, provider: http, url: {json.dumps(sms.url)},"
            f" headers: {{Authorization: {json.dumps('Bearer ' + sms_token)}}}}}\n"
            "routes:\n"
            "  critical: {assignee: [hook, sms]}\n", encoding="utf-8")
        nf = load_notify_file(notify_file)  # the same models the processes read it with
        env = {**os.environ, "GRIDHUB_DATABASE_URL": db_url, "GRIDHUB_MQTT_URL": url, "GRIDHUB_DATA_DIR": str(tmp),
               "GRIDHUB_SECRET_KEY": settings.secret_key or "", "GRIDHUB_INSTANCE_ID": "bench",
               "GRIDHUB_RULES_FILE": str(rules), "GRIDHUB_NOTIFY_FILE": str(notify_file)}
        alerts = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "alerts"], env=env,
                                  stdout=(tmp / "alerts.log").open("ab"),  # noqa: SIM115 - the child owns it
                                  stderr=subprocess.STDOUT)
        sender = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "notify", "run"], env=env,
                                  stdout=(tmp / "notify.log").open("ab"),  # noqa: SIM115 - the child owns it
                                  stderr=subprocess.STDOUT)

        seen: dict[str, float] = {}
        lock = threading.Lock()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            t = time.perf_counter()
            p = json.loads(msg.payload)
            if p.get("device_id"):
                with lock:
                    seen.setdefault(p["device_id"], t)

        listener = client(url, "bench-listener")
        subscribed = threading.Event()
        listener.on_connect = lambda c, u, f, rc, p=None: c.subscribe(f"{PREFIX}/workers/+/tasks", 1)
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
        time.sleep(3)  # subscribed, backlog marker seen; the sender listening
        for name, proc in (("alerts", alerts), ("notify run", sender)):
            if proc.poll() is not None:
                raise RuntimeError(f"gridhub {name} exited with {proc.returncode}: see {tmp}")

        pub = client(url, "bench-alarms")
        pub.connect(addr.host, addr.port)
        pub.loop_start()
        sent = mp.Value("d", 0.0)
        loader = mp.Process(target=load_publisher, args=(url, args.rate, args.load_devices, stop, sent))
        loader.start()
        time.sleep(3)  # load running

        # the floor: one signed webhook POST through the channel class the sender uses, under the same load
        channel = notify_channels.build("hook", nf.channels["hook"])
        bare: list[float] = []
        bare_failed = 0
        for _ in range(args.bare):
            t0 = time.perf_counter()
            answer = channel.send(sample_message())
            if answer.ok:
                bare.append((time.perf_counter() - t0) * 1000)
            else:
                bare_failed += 1
        time.sleep(0.5)

        sent_at: dict[str, float] = {}
        sent_wall: dict[str, float] = {}
        for b in range(args.alarms):
            dev = f"bsa-{b}"
            body = json.dumps({"ts": int(time.time() * 1000), "seq": 1, "type": "alarm", "detail": {}})
            sent_at[dev], sent_wall[dev] = time.perf_counter(), time.time()
            pub.publish(f"{PREFIX}/devices/{dev}/event", body, qos=1)
            time.sleep(0.05)

        def hook_first() -> dict[str, float]:
            first: dict[str, float] = {}
            for r in list(hook.received):  # a copy: the stand-in's threads append to it
                dev = (r.json or {}).get("task", {}).get("device_id")
                if dev in sent_at and "t" in r.extra:
                    first[dev] = min(first.get(dev, r.extra["t"]), r.extra["t"])
            return first

        end = time.monotonic() + args.wait
        while time.monotonic() < end and (len(hook_first()) < args.alarms or len(sms.received) < args.alarms):
            time.sleep(0.1)
        stop.set()
        loader.join(30)

        # the SMS gateway's requests carry the delivery id: its row names the task, the task the device
        with psycopg.connect(db_url) as conn:
            dev_of = dict(conn.execute(
                "SELECT d.id, t.device_id FROM notify_deliveries d JOIN tasks t ON t.id = d.task_id").fetchall())
            states = {s: n for s, n in conn.execute(
                "SELECT state, count(*) FROM notify_deliveries GROUP BY 1 ORDER BY 1").fetchall()}
            by_channel = [{"channel": c, "state": s, "rows": n} for c, s, n in conn.execute(
                "SELECT channel, state, count(*) FROM notify_deliveries GROUP BY 1, 2 ORDER BY 1, 2").fetchall()]
            tasks_opened = (conn.execute("SELECT count(*) FROM tasks WHERE type = 'fire_alarm'").fetchone() or (0,))[0]
            attempts = (conn.execute("SELECT coalesce(max(attempts), 0) FROM notify_deliveries").fetchone() or (0,))[0]
        sms_first: dict[str, float] = {}
        for r in list(sms.received):
            dev = dev_of.get(r.delivery_id or "")
            if dev in sent_at and "t" in r.extra:
                sms_first[dev] = min(sms_first.get(dev, r.extra["t"]), r.extra["t"])
        hooks = hook_first()
        first = {d: min(t for t in (hooks.get(d), sms_first.get(d)) if t is not None)
                 for d in sent_at if d in hooks or d in sms_first}
        with lock:
            topic = {d: seen[d] for d in sent_at if d in seen}

        def ms(times: dict[str, float]) -> list[float]:
            return [(times[d] - sent_at[d]) * 1000 for d in sent_at if d in times]

        delivered = ms(first)
        result["alarm_to_first_delivery_ms"] = {
            "alarms": args.alarms, "delivered": len(delivered),
            "p50": pct(delivered, 0.5) if delivered else None, "p99": pct(delivered, 0.99) if delivered else None,
            "max": round(max(delivered), 1) if delivered else None, "target_p99": 1000}
        missing = sorted(set(sent_at) - set(first))
        if missing:
            result["alarm_to_first_delivery_ms"]["not_delivered"] = missing
        result["alarm_to_delivery_by_channel_ms"] = {"hook (webhook)": summary(ms(hooks)),
                                                     "sms (http gateway)": summary(ms(sms_first))}
        result["alarm_to_worker_topic_ms"] = summary(ms(topic), alarms=args.alarms, tasks_opened=tasks_opened)
        result["worker_topic_to_first_delivery_ms"] = summary(
            [(first[d] - topic[d]) * 1000 for d in sent_at if d in first and d in topic])
        # the sender's part, split at the claim: the webhook body's `sent_at` is the time of the sender's round
        # that claimed the row (wall clocks of one machine)
        to_claim, claim_to_rx = [], []
        for r in list(hook.received):
            dev = (r.json or {}).get("task", {}).get("device_id")
            if dev in sent_wall and hooks.get(dev) == r.extra.get("t"):
                claimed = datetime.fromisoformat(r.json["sent_at"]).timestamp()
                to_claim.append((claimed - sent_wall[dev]) * 1000)
                claim_to_rx.append((r.extra["wall"] - claimed) * 1000)
        result["webhook_split_ms"] = {"alarm_to_sender_claim": summary(to_claim),
                                      "sender_claim_to_received": summary(claim_to_rx)}
        result["bare_webhook_roundtrip_ms"] = summary(bare, posts=args.bare, failed=bare_failed)
        result["deliveries"] = {"states": states, "by_channel": by_channel, "max_attempts": attempts,
                                "stand_in_rejected": {"hook": [r for r, _ in hook.rejected],
                                                      "sms": [r for r, _ in sms.rejected]}}
        result["telemetry_load_msgs_per_s"] = {"target": args.rate, "achieved": round(sent.value, 0)}
    finally:
        stop.set()
        if loader is not None and loader.is_alive():
            loader.join(10)
            if loader.is_alive():
                loader.kill()
        for c in (pub, listener):
            if c is not None:
                c.loop_stop()
        codes = {"alerts": stop_process(alerts), "notify": stop_process(sender)}
        hook.close()
        sms.close()
        mq.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    result["exit_codes"] = codes
    result["alerts_log"] = str(tmp / "alerts.log")  # per alarm: queue wait, transaction, publish after commit
    result["notify_log"] = str(tmp / "notify.log")  # the sender: retries, failures
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
