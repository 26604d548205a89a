"""The `gridhub alerts` process: consumes every device's telemetry, events and status from the broker on its own
persistent session, evaluates the rules for the devices of the shards it holds, raises and clears alerts, opens
and joins tasks, fires durable timers (offline, escalation, reminders) and pushes every change to MQTT.

Threads: paho's network loop sorts messages into a priority lane (events and status: fire alarms never wait
behind telemetry) and a telemetry lane; each lane has its own database connection and acknowledges a message
only after the transaction it caused has committed. The timer loop sleeps until the next due timer or a NOTIFY;
the notifier publishes the change log in order; the lease keeper renews shard leases.

After (re)connecting, the broker first hands over what it queued for our session; a marker published to
ourselves comes after that backlog, and offline deadlines stay held back until the marker has been processed
plus a margin (silence during our own absence is no evidence). A retained `offline` status, replayed on
subscribe, tells state, not an event: it makes the device's offline deadline due at once, so it becomes an
alert only if nothing else from the device arrives in the backlog or the grace margin. A live last will
(`offline`, not retained) raises device_offline at once.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from gridhub.alerts import changes, records, shards, tasks, timers
from gridhub.alerts.evaluate import DeviceState, Finding, acceptable, event_findings, reading_findings
from gridhub.alerts.rules import RuleBook, load_rules
from gridhub.db import connect
from gridhub.mqtt import BrokerAddress, make_client
from gridhub.protocol import (
    DEFAULT_HEARTBEAT_S,
    DeviceKind,
    Event,
    Reading,
    alerts_topic,
    ms_to_dt,
    worker_tasks_topic,
)
from gridhub.settings import Settings

log = logging.getLogger("gridhub.alerts")

BATCH = 500
PUBLISH_BATCH = 500
OFFLINE_SLACK_S = 1.0  # an offline deadline is rewritten when it moves by more; the timer re-checks memory


@dataclass(frozen=True)
class Inbound:
    topic: str
    device_id: str
    channel: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    lane: str  # the session it came on: "events" or "telemetry"


@dataclass(frozen=True)
class Registered:
    place: records.Place
    retired: bool
    window: timedelta  # silence that makes it offline


class AlertService:
    """One alerts instance; `start()` then `stop()`, or `run_until_signalled()`."""

    def __init__(self, settings: Settings, *, clock: timers.Clock | None = None, rules: RuleBook | None = None) -> None:
        if not settings.database_url or not settings.mqtt_url:
            raise RuntimeError("the alerts part needs GRIDHUB_DATABASE_URL and GRIDHUB_MQTT_URL (or `gridhub up`)")
        self.settings = settings
        self.db_url: str = settings.database_url
        self.prefix = settings.topic_prefix
        self.clock: timers.Clock = clock or timers.SystemClock()
        self.rules = rules or load_rules(settings.rules_file)
        self.instance = settings.client_id("alerts")
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.priority: queue.Queue[Inbound] = queue.Queue()
        self.telemetry: queue.Queue[Inbound] = queue.Queue()
        self.lock = threading.Lock()
        self.priority_busy = threading.Event()
        self.devices: dict[str, Registered] = {}
        self.devices_loaded = 0.0
        self.states: dict[str, DeviceState] = {}
        self.alive: dict[str, datetime] = {}
        self.offline_written: dict[str, datetime] = {}
        self.held: frozenset[int] = frozenset()
        self.others: frozenset[int] = frozenset()
        self.markers: dict[str, str] = {}
        self.drained: set[str] = set()
        self.grace_until: datetime | None = None
        self.threads: list[threading.Thread] = []
        self.clients: dict[str, paho.Client] = {}
        self.timer_actions: dict[str, timers.TimerAction] = {
            **tasks.timer_actions(self.rules),
            "offline": self._offline_due,
            "noisy": lambda c, key, payload, now: records.noisy_check(c, key, now, self.rules),
        }

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        sys.setswitchinterval(0.0005)  # hand the interpreter over quickly when an alarm's database reply arrives
        with connect(self.db_url, autocommit=True) as conn:
            self._load_devices(conn)
            self._keep_leases(conn)
        for name, target in (("priority-lane", self._priority_lane), ("telemetry-lane", self._telemetry_lane),
                             ("timers", self._timer_loop), ("notifier", self._notifier), ("leases", self._lease_keeper)):
            t = threading.Thread(target=self._guarded, args=(target,), name=f"alerts-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        addr = BrokerAddress.parse(self.settings.mqtt_url or "")
        # two persistent sessions, so that an alarm never queues behind telemetry at the broker or on the wire
        for lane, client_id in (("events", self.instance), ("telemetry", f"{self.instance}-telemetry")):
            client = make_client(self.settings.mqtt_url or "", client_id, protocol=paho.MQTTv311, clean=False,
                                 manual_ack=True)
            client.max_inflight_messages_set(100)
            client.user_data_set(lane)
            client.on_connect = self._on_connect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message
            client.reconnect_delay_set(1, 5)
            self.clients[lane] = client
            client.connect_async(addr.host, addr.port, keepalive=30)
            client.loop_start()

    def stop(self) -> None:
        self.stopping.set()
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()
        for t in self.threads:
            t.join(timeout=10)
        try:
            with connect(self.db_url, autocommit=True) as conn:
                shards.release(conn, self.instance)
        except Exception:  # noqa: BLE001 - the leases expire on their own
            log.exception("could not release shard leases; they expire in %s s", shards.LEASE_S)

    def run_until_signalled(self) -> None:
        done = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        log.info("alerts instance %s running", self.instance)
        while not done.wait(1.0):
            if not all(t.is_alive() for t in self.threads):
                log.error("an alerts thread died; stopping so that the supervisor restarts us")
                break
        self.stop()

    def _guarded(self, target: Any) -> None:
        while not self.stopping.is_set():
            try:
                target()
                return
            except Exception:  # noqa: BLE001 - a lane restarts on a fresh connection after a failure
                log.exception("%s failed; restarting it in 1 s", threading.current_thread().name)
                self.stopping.wait(1.0)

    # ------------------------------------------------------------------ MQTT

    def _on_connect(self, client: paho.Client, lane: str, flags: Any, rc: Any, props: Any = None) -> None:
        if getattr(rc, "is_failure", False):
            log.error("broker refused the alerts instance (%s session): %s", lane, rc)
            return
        self.drained.discard(lane)
        self.grace_until = None  # offline deadlines wait for the backlog of this (re)connection
        self.markers[lane] = uuid.uuid4().hex
        p = self.prefix
        topics = ([(f"{p}/devices/+/telemetry", 1)] if lane == "telemetry"
                  else [(f"{p}/devices/+/event", 1), (f"{p}/devices/+/status", 1)])
        client.subscribe([*topics, (self._marker_topic(lane), 1)])

    def _marker_topic(self, lane: str) -> str:
        return f"{self.prefix}/hub/{self.instance}/{lane}/drained"

    def _on_subscribe(self, client: paho.Client, lane: str, mid: int, rcs: Any, props: Any = None) -> None:
        client.publish(self._marker_topic(lane), self.markers[lane].encode(), qos=1)
        if len(self.markers) == 2:
            self.ready.set()

    def _on_message(self, client: paho.Client, lane: str, msg: paho.MQTTMessage) -> None:
        topic = msg.topic
        into = self.telemetry if lane == "telemetry" else self.priority
        if topic == self._marker_topic(lane):
            into.put(Inbound(topic, "", "marker", bytes(msg.payload), msg.qos, msg.mid, msg.retain, lane))
            return
        parts = topic.rsplit("/", 2)
        if len(parts) != 3:
            self._ack(lane, msg.mid, msg.qos)
            return
        into.put(Inbound(topic, parts[1], parts[2], bytes(msg.payload), msg.qos, msg.mid, msg.retain, lane))

    def _ack(self, lane: str, mid: int, qos: int) -> None:
        client = self.clients.get(lane)
        if qos > 0 and client is not None:
            client.ack(mid, qos)

    def _marker_seen(self, lane: str, payload: bytes) -> None:
        """This session's backlog is processed; with both, offline deadlines resume after the grace margin."""
        if payload.decode() != self.markers.get(lane):
            return
        self.drained.add(lane)
        if self.drained >= {"events", "telemetry"}:
            self.grace_until = self.clock.now() + timedelta(seconds=self.rules.offline.grace_margin_s)
            log.info("backlog drained; offline deadlines resume at %s", self.grace_until.isoformat())

    # ------------------------------------------------------------------ registry, shards, state

    def _load_devices(self, conn: psycopg.Connection[Any]) -> None:
        out: dict[str, Registered] = {}
        factor = self.rules.offline.heartbeat_factor
        for dev, kind, building, grid, place, hb, retired in conn.execute(
                "SELECT d.id, d.kind, d.building_id, b.grid_id, d.place, d.heartbeat_s, d.retired FROM devices d"
                " JOIN buildings b ON b.id = d.building_id"):
            beat = hb or DEFAULT_HEARTBEAT_S[DeviceKind(kind)]
            out[dev] = Registered(records.Place(dev, kind, building, grid, place, hb), retired,
                                  timedelta(seconds=beat * factor))
        self.devices = out
        self.devices_loaded = time.monotonic()

    def _registered(self, conn: psycopg.Connection[Any], device_id: str) -> Registered | None:
        reg = self.devices.get(device_id)
        if reg is None and time.monotonic() - self.devices_loaded > 2.0:
            self._load_devices(conn)  # a device imported since
            reg = self.devices.get(device_id)
        return None if reg is None or reg.retired else reg

    def _mine(self, conn: psycopg.Connection[Any], device_id: str) -> bool:
        s = shards.shard_of(device_id)
        if s in self.held:
            return True
        if s in self.others and shards.held_elsewhere(conn, self.instance, s):
            return False
        if shards.take(conn, self.instance, s):
            self.held = self.held | {s}
            return True
        return False

    def _keep_leases(self, conn: psycopg.Connection[Any]) -> None:
        before = self.held
        held = frozenset(shards.renew_and_take(conn, self.instance))
        self.held = held
        lost = before - held
        if lost:
            with self.lock:
                for dev in [d for d in self.states if shards.shard_of(d) in lost]:
                    del self.states[dev]
        gained = held - before
        if gained:
            self._watch_silent_devices(conn, gained)
        self.others = frozenset(s for s, (holder, _) in shards.holders(conn).items()
                                if holder is not None and holder != self.instance)

    def _watch_silent_devices(self, conn: psycopg.Connection[Any], gained: frozenset[int]) -> None:
        """Devices never heard from get an offline deadline one window from when we started watching."""
        now = self.clock.now()
        rows = [(d, now + reg.window, shards.shard_of(d)) for d, reg in self.devices.items()
                if not reg.retired and shards.shard_of(d) in gained]
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO timers (kind, key, due_at, shard) SELECT 'offline', %s, %s, %s"
                            " WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE device_id = %s AND type = 'device_offline'"
                            " AND state = 'active') ON CONFLICT (kind, key) DO NOTHING",
                            [(d, due, s, d) for d, due, s in rows])

    def _states(self, conn: psycopg.Connection[Any], devices: set[str]) -> None:
        """Load rule state and active alerts of devices not yet in memory."""
        with self.lock:
            missing = [d for d in devices if d not in self.states]
        if not missing:
            return
        saved = dict(conn.execute("SELECT device_id, state FROM rule_state WHERE device_id = ANY(%s) AND rule = 'readings'",
                                  (missing,)).fetchall())
        active: dict[str, set[str]] = {}
        for dev, typ in conn.execute("SELECT device_id, type FROM alerts WHERE device_id = ANY(%s) AND state = 'active'"
                                     " AND type <> 'fire_incident'", (missing,)):
            active.setdefault(dev, set()).add(typ)
        with self.lock:
            for d in missing:
                self.states.setdefault(d, DeviceState.from_json(saved.get(d), active.get(d, set())))

    def _state(self, device_id: str) -> DeviceState:
        with self.lock:
            return self.states[device_id]

    # ------------------------------------------------------------------ what a message does

    def _apply(self, conn: psycopg.Connection[Any], reg: Registered, f: Finding, now: datetime) -> None:
        seen = ms_to_dt(f.ts_ms)
        if f.action == "raise":
            records.raise_alert(conn, reg.place, f.alert_type, seen, now, self.rules, f.detail)
        else:
            why = ", ".join(f"{k} {v}" for k, v in f.detail.items()) or "cleared"
            records.clear_alert(conn, reg.place, f.alert_type, seen, now, why)

    def _signs_of_life(self, conn: psycopg.Connection[Any], devices: dict[str, Registered], now: datetime) -> None:
        """Any accepted message: the offline deadline moves and an active device_offline clears."""
        moves = []
        for dev, reg in devices.items():
            self.alive[dev] = now
            due = now + reg.window
            written = self.offline_written.get(dev)
            if written is None or (due - written).total_seconds() > OFFLINE_SLACK_S:
                moves.append((dev, due, shards.shard_of(dev)))
            st = self._state(dev)
            if "device_offline" in st.active:
                records.clear_alert(conn, reg.place, "device_offline", now, now, "the device spoke again")
                st.active.discard("device_offline")
        if moves:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO timers (kind, key, due_at, shard) VALUES ('offline', %s, %s, %s)"
                                " ON CONFLICT (kind, key) DO UPDATE SET due_at = EXCLUDED.due_at, payload = '{}'",
                                moves)
            for dev, due, _ in moves:
                self.offline_written[dev] = due

    def _offline_due(self, conn: psycopg.Connection[Any], device_id: str, payload: dict[str, Any], now: datetime) -> None:
        """The offline deadline: raise device_offline unless a sign of life came after the deadline was written."""
        reg = self.devices.get(device_id)
        if reg is None or reg.retired:
            return
        last = self.alive.get(device_id)
        if last is not None and last + reg.window > now:
            timers.schedule(conn, "offline", device_id, last + reg.window, shard=shards.shard_of(device_id), wake=False)
            self.offline_written[device_id] = last + reg.window
            return
        self.offline_written.pop(device_id, None)
        reason = payload.get("reason", f"silent for {int(reg.window.total_seconds())} s")
        records.raise_alert(conn, reg.place, "device_offline", now, now, self.rules, {"reason": reason})
        self._states(conn, {device_id})
        self._state(device_id).active.add("device_offline")

    def _handle_priority(self, conn: psycopg.Connection[Any], item: Inbound) -> None:
        if item.channel == "marker":
            self._marker_seen(item.lane, item.payload)
            return
        reg = self._registered(conn, item.device_id)
        if reg is None or not self._mine(conn, item.device_id):
            return
        now = self.clock.now()
        dev = item.device_id
        self._states(conn, {dev})
        if item.channel == "event":
            try:
                ev = Event.model_validate_json(item.payload)
            except ValidationError:
                return  # ingest quarantines it
            if not acceptable(reg.place.kind, ev, int(now.timestamp() * 1000)):
                return
            with conn.transaction():
                fresh = conn.execute(
                    "INSERT INTO rule_events (device_id, ts, seq, type) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING 1",
                    (dev, ms_to_dt(ev.ts), ev.seq if ev.seq is not None else -1, ev.type)).fetchone()
                if fresh is None:
                    return  # redelivered or re-sent: evaluated once already
                self._signs_of_life(conn, {dev: reg}, now)
                st = self._state(dev)
                for f in event_findings(ev):
                    self._apply(conn, reg, f, now)
                    (st.active.add if f.action == "raise" else st.active.discard)(f.alert_type)
                if ev.type == "alarm":
                    records.count_alarm(conn, reg.place, ms_to_dt(ev.ts), now, self.rules)
                changes.flush(conn)
        elif item.channel == "status":
            text = item.payload.decode("utf-8", "replace").strip()
            with conn.transaction():
                if text == "offline" and not item.retain:
                    timers.cancel(conn, "offline", dev)
                    self.offline_written.pop(dev, None)
                    self.alive.pop(dev, None)
                    records.raise_alert(conn, reg.place, "device_offline", now, now, self.rules,
                                        {"reason": "last will: the broker lost the device's connection"})
                    self._state(dev).active.add("device_offline")
                elif text == "offline":
                    if "device_offline" not in self._state(dev).active:
                        self.alive.pop(dev, None)
                        timers.schedule(conn, "offline", dev, now, shard=shards.shard_of(dev),
                                        payload={"reason": "retained offline status (last will while the hub was away)"})
                        self.offline_written[dev] = now
                elif text == "online" and not item.retain:
                    self._signs_of_life(conn, {dev: reg}, now)
                changes.flush(conn)

    def _yield_to_alarms(self, limit_s: float = 0.05) -> None:
        """Telemetry waits while the priority lane has work (up to `limit_s`, so that it is never starved)."""
        end = time.monotonic() + limit_s
        while (self.priority_busy.is_set() or not self.priority.empty()) and time.monotonic() < end:
            time.sleep(0.0005)

    def _telemetry_batch(self, conn: psycopg.Connection[Any], batch: list[Inbound]) -> bool:
        """Evaluate a batch of readings in memory and write what they changed in one transaction.
        Returns whether the drain marker of this connection was in it."""
        now = self.clock.now()
        now_ms = int(now.timestamp() * 1000)
        marker = False
        work: list[tuple[Registered, Reading]] = []
        for n, item in enumerate(batch):
            if n % 50 == 0:
                self._yield_to_alarms()
            if item.channel == "marker":
                marker = True
                self._marker_seen(item.lane, item.payload)
                continue
            reg = self._registered(conn, item.device_id)
            if reg is None or not self._mine(conn, item.device_id):
                continue
            try:
                r = Reading.model_validate_json(item.payload)
            except ValidationError:
                continue
            if acceptable(reg.place.kind, r, now_ms):
                work.append((reg, r))
        if not work:
            return marker
        alive = {reg.place.device_id: reg for reg, _ in work}
        self._states(conn, set(alive))
        found: list[tuple[Registered, Finding]] = []
        self._yield_to_alarms()
        for i, (reg, r) in enumerate(work):
            if i % 50 == 0:
                self._yield_to_alarms()
            with self.lock:
                st = self.states[reg.place.device_id]
                found += [(reg, f) for f in reading_findings(st, self.rules, reg.place.kind, reg.place.device_id, r)]
        with self.lock:
            dirty = [(d, Jsonb(self.states[d].to_json())) for d in alive if self.states[d].dirty]
        self._yield_to_alarms()
        with conn.transaction():
            for reg, f in found:
                self._apply(conn, reg, f, now)
            self._signs_of_life(conn, alive, now)
            if dirty:
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO rule_state (device_id, rule, state, updated_at) VALUES (%s, 'readings', %s, now())"
                                    " ON CONFLICT (device_id, rule) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
                                    dirty)
            changes.flush(conn)
        with self.lock:
            for d, _ in dirty:
                self.states[d].dirty = False
        return marker

    # ------------------------------------------------------------------ threads

    def _priority_lane(self) -> None:
        with connect(self.db_url, autocommit=True) as conn:
            while not self.stopping.is_set():
                try:
                    item = self.priority.get(timeout=0.5)
                except queue.Empty:
                    continue
                self.priority_busy.set()
                try:
                    self._handle_priority(conn, item)
                except Exception:
                    changes.discard(conn)
                    self.priority.put(item)  # not acknowledged: try again on a fresh connection
                    raise
                finally:
                    if self.priority.empty():
                        self.priority_busy.clear()
                self._ack(item.lane, item.mid, item.qos)

    def _telemetry_lane(self) -> None:
        with connect(self.db_url, autocommit=True) as conn:
            while not self.stopping.is_set():
                try:
                    batch = [self.telemetry.get(timeout=0.5)]
                except queue.Empty:
                    continue
                while len(batch) < BATCH:
                    try:
                        batch.append(self.telemetry.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self._telemetry_batch(conn, batch)
                except Exception:
                    changes.discard(conn)
                    with self.lock:
                        self.states.clear()  # memory may be ahead of the database: reload
                    for item in batch:
                        self.telemetry.put(item)
                    raise
                for item in batch:
                    self._ack(item.lane, item.mid, item.qos)

    def _held_back(self) -> tuple[str, ...]:
        g = self.grace_until
        return ("offline",) if g is None or self.clock.now() < g else ()

    def _timer_loop(self) -> None:
        with connect(self.db_url, autocommit=True) as conn, connect(self.db_url, autocommit=True) as listen:
            listen.execute(f"LISTEN {timers.CHANNEL}")
            while not self.stopping.is_set():
                held_back = self._held_back()
                timers.fire_due(conn, self.clock.now(), self.timer_actions, shards=self.held, held_back=held_back)
                nd = timers.next_due(conn, self.timer_actions.keys(), shards=self.held, held_back=held_back)
                wait = 5.0 if nd is None else (nd - self.clock.now()).total_seconds()
                if held_back:
                    g = self.grace_until
                    wait = min(wait, 0.5 if g is None else (g - self.clock.now()).total_seconds())
                wait = min(max(wait, 0.0), 5.0)
                if wait > 0:
                    for _ in listen.notifies(timeout=wait, stop_after=1):
                        pass

    def _notifier(self) -> None:
        with connect(self.db_url) as conn, connect(self.db_url, autocommit=True) as listen:
            listen.execute(f"LISTEN {changes.CHANNEL}")
            while not self.stopping.is_set():
                n = self._publish_changes(conn)
                if n < PUBLISH_BATCH:
                    for _ in listen.notifies(timeout=1.0, stop_after=1):
                        pass

    def _publish_changes(self, conn: psycopg.Connection[Any]) -> int:
        """Publish the next changes in log order, once: the cursor row's lock elects one publisher at a time."""
        client = self.clients.get("events")
        if client is None or not client.is_connected():
            return 0
        with conn.transaction():
            row = conn.execute("SELECT last_id FROM change_publish_cursor WHERE id = 1 FOR UPDATE SKIP LOCKED").fetchone()
            if row is None:
                return 0
            rows = conn.execute("SELECT id, kind, payload::text, recipients FROM changes WHERE id > %s ORDER BY id"
                                " LIMIT %s", (row[0], PUBLISH_BATCH)).fetchall()
            if not rows:
                return 0
            sent = []
            for _id, kind, payload, recipients in rows:
                body = payload.encode()
                if kind == "alert":
                    sent.append(client.publish(alerts_topic(self.prefix), body, qos=1))
                else:
                    sent += [client.publish(worker_tasks_topic(self.prefix, w), body, qos=1) for w in recipients]
            for info in sent:
                info.wait_for_publish(timeout=10)
                if not info.is_published():
                    raise RuntimeError("the broker did not acknowledge a notification within 10 s; will resend")
            conn.execute("UPDATE change_publish_cursor SET last_id = %s WHERE id = 1", (rows[-1][0],))
        return len(rows)

    def _lease_keeper(self) -> None:
        with connect(self.db_url, autocommit=True) as conn:
            last_registry = time.monotonic()
            last_prune = 0.0
            while not self.stopping.wait(5.0):
                self._keep_leases(conn)
                if time.monotonic() - last_registry > 60:
                    self._load_devices(conn)
                    last_registry = time.monotonic()
                if time.monotonic() - last_prune > 3600:
                    conn.execute("DELETE FROM rule_events WHERE ts < %s",
                                 (self.clock.now() - timedelta(seconds=max(2 * 86400, 2 * self.rules.noisy_device.window_s)),))
                    last_prune = time.monotonic()


def run(settings: Settings) -> None:
    """Run one alerts instance until SIGTERM or SIGINT."""
    AlertService(settings).run_until_signalled()
