"""Issue 15: is a partition's consumer at-least-once across a handover on a NATS JetStream cluster?

A partition's consumer is handed over N times between two holders (A stops cleanly, then B starts on another node)
while QoS 1 MQTT 3.1.1 publishers (paho, one connection a device, sequence numbers in the payload, resending what
was not PUBACKed) publish device telemetry that the DEVICES account maps onto P partitions. Two variants, each on a
fresh 3-node cluster (gridhub/services/nats.py, accounts from `accounts_conf`, free ports, removed at the end):

  mqtt_session   the hub's way today: one persistent MQTT session a partition (fixed client id, clean_session False,
                 the hub's `status_reader` user in DEVICES, subscribed to the partition's telemetry, event and
                 status as ingest is), recording each message, acknowledging in batches (--ack-interval).
  jetstream_pull one JetStream durable pull consumer a partition (nats-py) on the DEVICES account's `$MQTT_msgs`
                 stream (the stream a device's PUBACK waits for), filtered to `$MQTT.msgs.<prefix>.part.<k>.>`,
                 explicit acks after recording, fetched in batches of 100; the stream leader node is killed with
                 SIGKILL halfway (--no-kill: not).
  jetstream_sourced  the same consumers on a limits-retention R3 stream that sources `$MQTT_msgs` (`SOURCED`).

Besides the handed-over consumers, `--steady` (default mqtt) runs a second consumer a partition on the same subjects
that is never handed over, as alerts' sessions sit beside ingest's in the hub: a persistent MQTT session, a durable
pull consumer, or none. Published = (device, seq) pairs PUBACKed; received = distinct pairs recorded; lost =
published - received (after nothing new arrived for --settle s; the gateway's ack_wait is 5 s). Partition 0's
holder also reads the devices' unmapped subjects, as the hub does: nats-server 2.9.10 stores some QoS 1 publishes
unmapped (seen: a few in every run). JSON on stdout, progress on stderr.

Measured here (nats-server 2.9.10, 2 cores shared, 16 devices, P = 2, 20-30 handovers 1-2.6 s apart with 0.6 s
between stop and start, ~800-1,400 PUBACKed msg/s; each line one run):

  handed-over consumers     + steady consumer   handovers  SIGKILL  published  lost (handed over / steady)  dups
  MQTT session              none                   30        -       61,186    0                              149
  MQTT session              MQTT session           20        -       35,403    520 / 0                        225
  MQTT session              MQTT session           20        -       30,923    993 / 0                        200
  MQTT session              MQTT session            0        -       19,546    0 / 0                            0
  pull on $MQTT_msgs        none                   20        -       43,564    0                                0
  pull on $MQTT_msgs        none                   20      leader    39,996    0                              100
  pull on $MQTT_msgs        none                   20      leader    36,138    0                                3
  pull on $MQTT_msgs        MQTT session           20        -       31,730    821 / 4                          0
  pull on $MQTT_msgs        MQTT session           20      leader    27,018    276 / 43                         0
  pull on $MQTT_msgs        pull                   20        -       35,599    746 / 210                        0
  pull on $MQTT_msgs        pull                    0        -       17,817    260 / 244                        0
  pull on sourced stream    pull                   20        -       31,105    0 / 0                            0
  pull on sourced stream    pull                   20      leader    22,283    57 / 57 (one block)              0
  pull on sourced stream    pull                   20      leader    23,743    0 / 0                           32
  pull on sourced stream    pull                   20      leader    28,679    311 / 311 (one block)            0

(SIGKILL: of `$MQTT_msgs`' leader node, halfway; publishers and consumers on the other two nodes.)

`$MQTT_msgs` (in DEVICES): subjects `$MQTT.msgs.>`, retention **interest**, R3, file storage. An extra durable
consumer is allowed (a user in DEVICES with the JetStream API on that stream: `js_permissions`) and holds messages
until it acknowledges them: as the only consumer on its messages it kept every PUBACKed message across handovers and
a SIGKILL of the stream leader. But as soon as two consumers cover the same messages, the interest stream drops
messages one of them has not acknowledged: a handed-over MQTT session beside a steady one (the loss of issue 15:
ingest's and alerts' sessions read the same subjects), and two pull consumers even without any handover. So the
loss is the gateway stream's interest retention with more than one consumer a message, not MQTT as such, and pull
consumers on `$MQTT_msgs` do not fix it while ingest and alerts both read each message. `jetstream_sourced` (a
limits-retention R3 stream `GRIDHUB_DEVICES` sourcing `$MQTT_msgs`' device subjects, the consumers on it) kept
everything across handovers with two consumer sets, but lost one contiguous block of PUBACKed messages (both sets
alike: it never reached the sourced stream) in 2 of 3 SIGKILLs of `$MQTT_msgs`' leader: the source is no
at-least-once path on 2.9.10 either.

A stored message, as the pull consumer gets it: subject `$MQTT.msgs.<topic with '/' as '.'>` after the account's
mapping (`$MQTT.msgs.gridhub.v1.part.0.devices.<id>.telemetry`; unmapped ones `$MQTT.msgs.gridhub.v1.devices.<id>.
telemetry`), one header `Nmqtt-Pub: 1` (the QoS it was published with), and the MQTT PUBLISH's payload as is.

    .venv/bin/python bench/nats_handover.py [--variants mqtt_session,jetstream_pull] [--steady mqtt|pull|none]
        [--handovers 20] [--every 1] [--gap 0.6] [--no-handover] [--no-kill] [--devices 16] [--interval 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
import paho.mqtt.client as paho
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.services.nats import (
    DEVICES_ACCOUNT,
    PARTITION_LEVEL,
    NatsCluster,
    NatsNode,
    NatsUser,
    accounts_conf,
    device_partition,
    find_nats_server,
    free_layout,
    server_version,
    status_reader,
    subject_prefix,
)
from gridhub.services.process import make_service_tmpdir
from gridhub.settings import DEFAULT_TOPIC_PREFIX

PREFIX = DEFAULT_TOPIC_PREFIX
STREAM = "$MQTT_msgs"  # the MQTT gateway's message stream in each account (checked with /jsz below)
SOURCED = "GRIDHUB_DEVICES"  # jetstream_sourced: a limits-retention R3 stream sourcing $MQTT_msgs' device subjects
HUB = NatsUser("gridhub-hub", "hub-" + uuid.uuid4().hex)
JS_USER = "gridhub-hub-js"  # the consumer user variant (b) needs in DEVICES: JetStream API on $MQTT_msgs only


def log(*args: Any) -> None:
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def js_permissions() -> dict[str, Any]:
    """What a hub user in DEVICES needs to own durable pull consumers on the gateway's stream, and nothing else: the
    JetStream API for that stream (info, create, next message), acknowledgements, and its own reply inboxes."""
    api = "$JS.API"
    allow = [f"{api}.INFO", f"{api}.STREAM.CREATE.{SOURCED}"]
    for st in (STREAM, SOURCED):
        allow += [f"{api}.STREAM.INFO.{st}", f"{api}.CONSUMER.CREATE.{st}.>", f"{api}.CONSUMER.DURABLE.CREATE.{st}.>",
                  f"{api}.CONSUMER.INFO.{st}.>", f"{api}.CONSUMER.MSG.NEXT.{st}.>", f"$JS.ACK.{st}.>"]
    return {"publish": {"allow": allow}, "subscribe": {"allow": ["_INBOX.>"]}}


def device_ids(count: int, partitions: int) -> list[str]:
    """`count` device ids spread evenly over the partitions (by the same hash as NATS's mapping)."""
    per = {k: [] for k in range(partitions)}  # type: dict[int, list[str]]
    i = 0
    while sum(len(v) for v in per.values()) < count:
        d = f"bench-ho-{i:03d}"
        k = device_partition(d, partitions)
        if len(per[k]) < -(-count // partitions):
            per[k].append(d)
        i += 1
    return sorted(x for v in per.values() for x in v)[:count]


def start_cluster(devices: list[str], partitions: int) -> tuple[NatsCluster, Path]:
    root = Path(make_service_tmpdir("gridhub-bench-ho-"))
    cluster = NatsCluster(root, free_layout())
    users = [NatsUser(d, "pw-" + d) for d in devices] + [NatsUser(JS_USER, HUB.password, js_permissions())]
    cluster.write_config(accounts_conf(PREFIX, partitions, [HUB], users, NatsUser("sys", uuid.uuid4().hex)))
    cluster.start(timeout=90)
    return cluster, root


def stream_facts(cluster: NatsCluster) -> dict[str, Any]:
    """The DEVICES account's MQTT message stream as /jsz reports it: name, subjects, retention, replicas, leader."""
    for n in cluster.nodes:
        if cluster.pid(n) is None:
            continue
        try:
            jsz = cluster.monitor(n, f"/jsz?acc={DEVICES_ACCOUNT}&streams=true&config=true&consumers=true")
        except OSError:
            continue
        for acc in jsz.get("account_details") or []:
            for st in acc.get("stream_detail") or []:
                if st["name"] == STREAM:
                    cfg = st.get("config") or {}
                    return {"name": st["name"], "subjects": cfg.get("subjects"), "retention": cfg.get("retention"),
                            "replicas": cfg.get("num_replicas"), "storage": cfg.get("storage"),
                            "leader": (st.get("cluster") or {}).get("leader"),
                            "messages": (st.get("state") or {}).get("messages"),
                            "consumers": (st.get("state") or {}).get("consumer_count")}
    return {}


# --- publishers -------------------------------------------------------------------------------------------------


class Publisher(threading.Thread):
    """One device: QoS 1, one message at a time, each resent (same seq) until PUBACKed, until `done` is set (after
    the last handover) or `per_device` messages; records the sequence numbers PUBACKed."""

    def __init__(self, device: str, ports: list[int], per_device: int, interval: float,
                 done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.device, self.ports, self.per_device, self.interval = device, ports, per_device, interval
        self.done = done
        self.acked: dict[int, float] = {}  # seq -> monotonic time of its PUBACK
        self.resends = 0

    def run(self) -> None:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{self.device}-{uuid.uuid4().hex[:6]}",
                        protocol=paho.MQTTv311)
        c.username_pw_set(self.device, "pw-" + self.device)
        c.reconnect_delay_set(1, 2)
        c.connect("127.0.0.1", self.ports[0], keepalive=15)
        c.loop_start()
        topic = f"{PREFIX}/devices/{self.device}/telemetry"
        try:
            for seq in range(self.per_device):
                if self.done.is_set():
                    break
                body = orjson.dumps({"ts": int(time.time() * 1000), "seq": seq, "metrics": {"battery_pct": 42.0}})
                first = True
                while True:
                    if not first:
                        self.resends += 1
                    first = False
                    info = c.publish(topic, body, qos=1)
                    try:
                        info.wait_for_publish(10)
                        if info.is_published():
                            self.acked[seq] = time.monotonic()
                            break
                    except (RuntimeError, ValueError):  # not connected: paho's loop reconnects, then resend
                        time.sleep(0.2)
                time.sleep(self.interval)
        finally:
            c.disconnect()
            c.loop_stop()


# --- consumers --------------------------------------------------------------------------------------------------


class Record:
    """What the consumers "stored": (device, seq) -> times recorded, and one sample of a stored message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: Counter[tuple[str, int]] = Counter()
        self.sample: dict[str, Any] | None = None
        self.subjects: Counter[str] = Counter()

    def add(self, payload: bytes, where: str) -> None:
        device = where.split("/" if "/" in where else ".")
        if device[-1] != "telemetry":  # the start-up probe's status message
            return
        doc = orjson.loads(payload)
        dev = device[device.index("devices") + 1]
        kind = "mapped" if PARTITION_LEVEL in device else "unmapped"
        with self.lock:
            self.seen[(dev, int(doc["seq"]))] += 1
            self.subjects[kind] += 1


def run_mqtt_holder(port: int, client_id: str, partition: int, record: Record, stop: threading.Event,
                    ready: threading.Event, ack_interval: float) -> None:
    """One holder of partition `partition`'s persistent MQTT session until `stop`, subscribed as ingest is (its
    telemetry, event and status topics; partition 0 the unmapped ones too). It records each message, then
    acknowledges: at once, or (`ack_interval` > 0) in batches every `ack_interval` seconds as ingest does after
    storing a batch. At `stop` it acknowledges what it recorded and sends a clean DISCONNECT."""
    reader = status_reader(HUB)
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False)
    c.username_pw_set(reader.user, reader.password)
    c.manual_ack_set(True)
    kinds = ("telemetry", "event", "status")
    filters = [f"{PREFIX}/{PARTITION_LEVEL}/{partition}/devices/+/{k}" for k in kinds]
    if partition == 0:
        filters += [f"{PREFIX}/devices/+/{k}" for k in kinds]
    unacked: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_connect(cl: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            cl.subscribe([(f, 1) for f in filters])

    def on_subscribe(_cl: paho.Client, _u: Any, _mid: Any, _rc: Any, _p: Any) -> None:
        ready.set()

    def on_message(cl: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        record.add(bytes(msg.payload), msg.topic)  # "store" first, then acknowledge
        if ack_interval <= 0:
            cl.ack(msg.mid, msg.qos)
        else:
            with lock:
                unacked.append((msg.mid, msg.qos))

    def flush() -> None:
        with lock:
            batch = unacked[:]
            unacked.clear()
        for mid, qos in batch:
            c.ack(mid, qos)

    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", port, keepalive=15)
    c.loop_start()
    while not stop.wait(ack_interval if ack_interval > 0 else 1):
        flush()
    flush()
    c.disconnect()
    c.loop_stop()


class MqttVariant:
    def __init__(self, ports: list[int], partitions: int, record: Record, ack_interval: float) -> None:
        self.ports, self.partitions, self.record, self.ack_interval = ports, partitions, record, ack_interval
        self.tag = uuid.uuid4().hex[:8]
        self.current: list[tuple[threading.Thread, threading.Event]] = []
        self.holder = 0

    def start_holders(self) -> None:
        self.current = []
        readies = []
        for k in range(self.partitions):
            stop, ready = threading.Event(), threading.Event()
            # holder A and B connect to different nodes, as two hub processes might
            port = self.ports[self.holder % len(self.ports)]
            t = threading.Thread(target=run_mqtt_holder, daemon=True,
                                 args=(port, f"gridhub-bench-p{k}-{self.tag}", k, self.record, stop, ready,
                                       self.ack_interval))
            t.start()
            self.current.append((t, stop))
            readies.append(ready)
        for r in readies:
            if not r.wait(60):
                raise RuntimeError("an MQTT holder did not get its SUBACK in 60 s")

    def stop_holders(self) -> None:
        for _t, stop in self.current:
            stop.set()
        for t, _ in self.current:
            t.join(30)
        self.holder += 1


class JetStreamVariant:
    """Durable pull consumers on DEVICES' $MQTT_msgs, held by one nats-py connection at a time (holder A or B), in
    an asyncio loop of their own thread."""

    def __init__(self, cluster: NatsCluster, nodes: list[NatsNode], partitions: int, record: Record,
                 stream: str = STREAM) -> None:
        self.cluster, self.nodes, self.partitions, self.record = cluster, nodes, partitions, record
        self.stream = stream
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tag = uuid.uuid4().hex[:8]
        self.holder = 0
        self.stop_flag: asyncio.Event | None = None
        self.tasks: list[Any] = []
        self.nc: Any = None
        self.facts: dict[str, Any] = {}
        self.errors: Counter[str] = Counter()

    def call(self, coro: Any, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def filters(self) -> dict[str, str]:
        s = subject_prefix(PREFIX)
        out = {f"bench-p{k}-{self.tag}": f"$MQTT.msgs.{s}.{PARTITION_LEVEL}.{k}.>" for k in range(self.partitions)}
        # partition 0's holder reads the unmapped subjects too; 2.9 allows one filter a consumer, so a second one
        out[f"bench-unmapped-{self.tag}"] = f"$MQTT.msgs.{s}.devices.>"
        return out

    async def connect(self, first: NatsNode) -> Any:
        others = [n for n in self.nodes if n is not first]
        servers = [f"nats://127.0.0.1:{n.client_port}" for n in [first, *others]]
        return await nats.connect(servers=servers, user=JS_USER, password=HUB.password, dont_randomize=True,
                                  max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5)

    async def exists(self, js: Any) -> bool:
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def create(self) -> None:
        nc = await self.connect(self.nodes[0])
        js = nc.jetstream(timeout=30)
        if self.stream == SOURCED and not await self.exists(js):
            # limits retention: a consumer's ack removes nothing; one source (an internal consumer) on $MQTT_msgs
            await js.add_stream(StreamConfig(name=SOURCED, retention=RetentionPolicy.LIMITS, num_replicas=3,
                                             storage=StorageType.FILE, max_age=3600,
                                             sources=[StreamSource(name=STREAM, filter_subject=(
                                                 f"$MQTT.msgs.{subject_prefix(PREFIX)}.>"))]))
        si = await js.stream_info(self.stream)
        self.facts = {"retention": str(si.config.retention), "subjects": si.config.subjects,
                      "replicas": si.config.num_replicas}
        for name, subject in self.filters().items():
            await js.add_consumer(self.stream, ConsumerConfig(durable_name=name, filter_subject=subject,
                                                         ack_policy=AckPolicy.EXPLICIT,
                                                         deliver_policy=DeliverPolicy.ALL, ack_wait=5,
                                                         max_ack_pending=1000))
        await nc.close()

    async def consume(self, js: Any, name: str, stop: asyncio.Event) -> None:
        sub = await js.pull_subscribe_bind(name, self.stream)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(100, timeout=1)
            except nats.errors.TimeoutError:
                continue
            except Exception as exc:  # a leader election, a reconnect: wait and fetch again
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                if self.record.sample is None:
                    self.record.sample = {"subject": m.subject, "headers": m.headers,
                                          "payload": m.data.decode(errors="replace"),
                                          "stream_seq": m.metadata.sequence.stream,
                                          "num_delivered": m.metadata.num_delivered}
                self.record.add(m.data, m.subject)  # "store" first, then acknowledge
                try:
                    await m.ack()
                except Exception as exc:
                    self.errors["ack-" + type(exc).__name__] += 1
            if stop.is_set():
                break

    async def _start(self) -> None:
        node = self.nodes[self.holder % len(self.nodes)]
        self.nc = await self.connect(node)
        js = self.nc.jetstream(timeout=10)
        self.stop_flag = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self.consume(js, name, self.stop_flag)) for name in self.filters()]

    async def _stop(self) -> None:
        assert self.stop_flag is not None
        self.stop_flag.set()
        await asyncio.wait(self.tasks, timeout=15)
        await self.nc.close()

    def start_holders(self) -> None:
        self.call(self._start())

    def stop_holders(self) -> None:
        self.call(self._stop())
        self.holder += 1

    async def _pending(self) -> dict[str, Any]:
        nc = await self.connect(self.nodes[0])
        js = nc.jetstream(timeout=10)
        out = {}
        for name in self.filters():
            ci = await js.consumer_info(self.stream, name)
            out[name] = {"num_pending": ci.num_pending, "num_ack_pending": ci.num_ack_pending,
                         "num_redelivered": ci.num_redelivered}
        await nc.close()
        return out

    def pending(self) -> dict[str, Any]:
        return dict(self.call(self._pending()))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# --- one run ----------------------------------------------------------------------------------------------------


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    devices = device_ids(args.devices, args.partitions)
    cluster, root = start_cluster(devices, args.partitions)
    record = Record()
    out: dict[str, Any] = {"variant": variant, "partitions": args.partitions, "devices": len(devices)}
    killed: dict[str, Any] = {}
    js_variant: JetStreamVariant | None = None
    try:
        # one MQTT connection in DEVICES makes the gateway create the account's streams; then find their leader
        probe = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe-" + uuid.uuid4().hex[:6],
                            protocol=paho.MQTTv311)
        probe.username_pw_set(devices[0], "pw-" + devices[0])
        probe.connect("127.0.0.1", cluster.nodes[0].mqtt_port, keepalive=15)
        probe.loop_start()
        probe.publish(f"{PREFIX}/devices/{devices[0]}/status", b'{"online": true}', qos=1).wait_for_publish(60)
        probe.disconnect()
        probe.loop_stop()
        facts = stream_facts(cluster)
        out["stream_before"] = facts
        leader = facts.get("leader") or cluster.nodes[0].name
        # publishers and holders on the two nodes that do not lead the stream: the leader is the one killed in (b)
        others = [n for n in cluster.nodes if n.name != leader]
        out["leader_node"], out["client_nodes"] = leader, [n.name for n in others]
        if variant == "mqtt_session":
            consumer: Any = MqttVariant([n.mqtt_port for n in others], args.partitions, record, args.ack_interval)
        else:
            js_variant = JetStreamVariant(cluster, others, args.partitions, record,
                                          SOURCED if variant == "jetstream_sourced" else STREAM)
            js_variant.call(js_variant.create())
            out["stream_via_nats_py"] = js_variant.facts
            consumer = js_variant
        # a second, never handed over persistent session a partition on the same subjects (alerts', in the hub):
        # the stream keeps a message (interest retention) until every consumer on it has acknowledged it
        alerts = Record()
        steady: list[tuple[threading.Thread, threading.Event]] = []
        steady_pull: JetStreamVariant | None = None
        if args.steady == "pull":  # or a second set of durable pull consumers
            steady_pull = JetStreamVariant(cluster, others[1:], args.partitions, alerts,
                                           SOURCED if variant == "jetstream_sourced" else STREAM)
            steady_pull.call(steady_pull.create())
            steady_pull.start_holders()
        for k in range(args.partitions if args.steady == "mqtt" else 0):
            stop, ready = threading.Event(), threading.Event()
            t = threading.Thread(target=run_mqtt_holder, daemon=True,
                                 args=(others[1].mqtt_port, f"gridhub-bench-alerts-p{k}-{uuid.uuid4().hex[:6]}", k,
                                       alerts, stop, ready, 0.0))
            t.start()
            steady.append((t, stop))
            if not ready.wait(60):
                raise RuntimeError("the steady session did not get its SUBACK in 60 s")
        consumer.start_holders()
        done = threading.Event()
        pubs = [Publisher(d, [others[i % 2].mqtt_port], args.per_device, args.interval, done)
                for i, d in enumerate(devices)]
        began = time.monotonic()
        for p in pubs:
            p.start()
        handovers = 0
        gap = []
        handover_at: list[float] = []
        while handovers < args.handovers and any(p.is_alive() for p in pubs):
            time.sleep(args.every)
            t0 = time.monotonic()
            if args.hand_over:
                consumer.stop_holders()
                time.sleep(args.gap)
                consumer.start_holders()
                gap.append(round(time.monotonic() - t0, 3))
                handover_at.append(t0 - began)
            handovers += 1
            if variant != "mqtt_session" and args.kill and handovers == args.handovers // 2 and not killed:
                node = cluster.node(leader)
                pid = cluster.signal_node(node, signal.SIGKILL)
                killed = {"node": leader, "pid": pid, "at_s": round(time.monotonic() - began, 1)}
                log("SIGKILL", killed)
        time.sleep(args.every)
        done.set()
        for p in pubs:
            p.join(600)
        acked_at = {(p.device, s): t for p in pubs for s, t in p.acked.items()}
        published = set(acked_at)
        publish_s = time.monotonic() - began
        log(variant, "published", len(published), "in", round(publish_s, 1), "s; waiting for the consumers")
        # wait for everything PUBACKed, or until nothing new arrived for `--settle` seconds (redelivery is 5 s)
        last, last_change = -1, time.monotonic()
        while True:
            with record.lock:
                have = len(published & set(record.seen))
            if have != last:
                last, last_change = have, time.monotonic()
            if have == len(published) or time.monotonic() - last_change > args.settle:
                break
            time.sleep(0.5)
        if killed:
            cluster.start_node(cluster.node(leader))  # back in, for a clean stop
        if steady_pull is not None:
            steady_pull.stop_holders()
            steady_pull.close()
        for _t, stop in steady:
            stop.set()
        for t, _ in steady:
            t.join(30)
        with record.lock:
            seen = dict(record.seen)
            subjects = dict(record.subjects)
        lost = sorted(published - set(seen))
        out.update({
            "published_pubacked": len(published),
            "publisher_resends": sum(p.resends for p in pubs),
            "received_distinct": len(published & set(seen)),
            "lost": len(lost),
            "lost_sample": [f"{d}#{s}" for d, s in lost[:10]],
            # when the lost messages were PUBACKed: seconds since the start -> how many
            "lost_pubacked_at_s": dict(Counter(str(int(acked_at[m] - began)) for m in lost)),
            "handovers_at_s": [round(x, 1) for x in handover_at],
            "lost_by_partition": dict(Counter(str(device_partition(d, args.partitions)) for d, _ in lost)),
            "duplicates": sum(c - 1 for c in seen.values() if c > 1),
            "steady_consumer": args.steady,
            "steady_consumer_lost": len(published - set(alerts.seen)) if args.steady != "none" else None,
            "received_not_pubacked": len(set(seen) - published),
            "received_by_subject": subjects,
            "handovers": handovers if args.hand_over else 0,
            "handover_stop_to_start_s": gap,
            "publish_seconds": round(publish_s, 1),
            "wait_after_publish_s": round(time.monotonic() - began - publish_s, 1),
        })
        if killed:
            out["sigkill_stream_leader"] = killed
        consumer.stop_holders()
        if js_variant is not None:
            out["consumers_after"] = js_variant.pending()
            out["consumer_errors"] = dict(js_variant.errors)
            out["stored_message_sample"] = record.sample
        out["stream_after"] = stream_facts(cluster)
        return out
    finally:
        if js_variant is not None:
            js_variant.close()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="mqtt_session,jetstream_pull")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--per-device", type=int, default=100000, help="at most; they stop after the last handover")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between a device's messages")
    ap.add_argument("--handovers", type=int, default=30)
    ap.add_argument("--every", type=float, default=1.0, help="seconds a holder holds before the handover")
    ap.add_argument("--gap", type=float, default=0.6, help="seconds between one holder's stop and the next start")
    ap.add_argument("--ack-interval", type=float, default=0.05,
                    help="MQTT holders acknowledge in batches every this many seconds (0: each at once)")
    ap.add_argument("--steady", choices=("mqtt", "pull", "none"), default="mqtt",
                    help="a second, never handed over consumer on the same subjects (alerts' in the hub): a "
                         "persistent MQTT session a partition, a durable pull consumer a partition, or none")
    ap.add_argument("--no-handover", dest="hand_over", action="store_false",
                    help="the same periods, without handing the consumers over (a control run)")
    ap.add_argument("--no-kill", dest="kill", action="store_false", help="no SIGKILL of the stream leader in (b)")
    ap.add_argument("--settle", type=float, default=30, help="give up when nothing new arrived for this long")
    args = ap.parse_args()
    results = []
    for v in args.variants.split(","):
        log("variant", v)
        results.append(run_variant(v, args))
    program = find_nats_server()
    print(json.dumps({"nats_server": server_version(program) if program else None, "args": vars(args),
                      "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
