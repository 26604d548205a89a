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
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from _harness import (
    PREFIX,
    Load,
    PrivateHub,
    client,
    connect,
    listener,
    pct,
    publish_alarms,
    registry_yaml,
    stop_process,
    summary,
)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests/standins.py: the vendors' stand-ins (tests is a namespace package)

from gridhub.alerts.notify import channels as notify_channels  # noqa: E402
from gridhub.notifyfile import load as load_notify_file  # noqa: E402
from tests.standins import HttpSmsGateway, Received, WebhookReceiver, sample_message  # noqa: E402


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=6000.0, help="telemetry load, messages/s (QoS 1)")
    ap.add_argument("--alarms", type=int, default=100)
    ap.add_argument("--load-devices", type=int, default=500)
    ap.add_argument("--bare", type=int, default=100, help="direct webhook POSTs for the round-trip floor")
    ap.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the deliveries after the last alarm")
    args = ap.parse_args()

    hook_secret, sms_token = secrets.token_hex(16), secrets.token_hex(12)
    hook, sms = TimedWebhook(secret=hook_secret), TimedSms(token=sms_token)
    hub = PrivateHub("gridhub-bench-notify-")
    alerts: subprocess.Popen[bytes] | None = None
    sender: subprocess.Popen[bytes] | None = None
    load = Load(hub.url, args.rate, args.load_devices)
    listen: paho.Client | None = None
    pub: paho.Client | None = None
    result: dict[str, Any] = {}
    try:
        notify_file = hub.tmp / "notify.yaml"
        notify_file.write_text(
            "channels:\n"
            f"  hook: {{type: webhook, url: {json.dumps(hook.url)}, secret: {json.dumps(hook_secret)}}}\n"
            f"  sms: {{type: sms, provider: http, url: {json.dumps(sms.url)},"
            f" headers: {{Authorization: {json.dumps('Bearer ' + sms_token)}}}}}\n"
            "routes:\n"
            "  critical: {assignee: [hook, sms]}\n", encoding="utf-8")
        nf = load_notify_file(notify_file)  # the same models the processes read it with
        hub.prepare(registry_yaml(args.alarms, args.load_devices, phones=True), GRIDHUB_NOTIFY_FILE=str(notify_file))
        alerts = hub.spawn("alerts", "alerts")
        sender = hub.spawn("notify", "notify", "run")

        seen: dict[str, float] = {}
        lock = threading.Lock()

        def on_message(c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
            t = time.perf_counter()
            p = json.loads(msg.payload)
            if p.get("device_id"):
                with lock:
                    seen.setdefault(p["device_id"], t)

        listen = listener(hub.url, [f"{PREFIX}/workers/+/tasks"], on_message)
        hub.wait_for_alerts()  # and the sender listening
        for name, proc in (("alerts", alerts), ("notify run", sender)):
            if proc.poll() is not None:
                raise RuntimeError(f"gridhub {name} exited with {proc.returncode}: see {hub.tmp}")

        pub = connect(client(hub.url, "bench-alarms"), hub.url)
        load.start()

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

        sent_at, sent_wall = publish_alarms(pub, args.alarms)

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
        load.stop()

        # the SMS gateway's requests carry the delivery id: its row names the task, the task the device
        with psycopg.connect(hub.db_url) as conn:
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
        result["telemetry_load_msgs_per_s"] = {"target": args.rate, "achieved": load.achieved()}
    finally:
        load.close()
        for c in (pub, listen):
            if c is not None:
                c.loop_stop()
        codes = {"alerts": stop_process(alerts), "notify": stop_process(sender)}
        hook.close()
        sms.close()
        hub.close()
    result["exit_codes"] = codes
    result["alerts_log"] = str(hub.log("alerts"))  # per alarm: queue wait, transaction, publish after commit
    result["notify_log"] = str(hub.log("notify"))  # the sender: retries, failures
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
