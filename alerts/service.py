"""The `gridhub alerts` process: holds its fair share of the alerts part's partitions by lease
(`gridhub.leases.LeaseKeeper`; one partition on mosquitto, GRIDHUB_PARTITIONS on NATS) and, for each partition it
holds, consumes the partition's two persistent sessions (named by the partition and the lane, never by the process:
`gridhub-alerts-p<k>-events` here, `gridhub-alerts-p<k>-telemetry` in the telemetry process; on NATS with a tag no
device can guess), evaluates the rules, raises and clears alerts, opens and joins tasks, fires the partition's
durable timers (offline, escalation, reminders) and pushes every change to MQTT on a publisher connection of its
own. An instance holding no partition stands by: it receives nothing and fires nothing; whoever takes a partition
that was given back, or whose lease expired, resumes exactly the sessions the old holder left, with what it had
received but not acknowledged.

Fencing: the keeper renews the leases every third of a lease and reports what changed (`_on_change`): a partition
gained gets its sessions (`partitions.PartitionSession`), one lost is left at once (nothing more acknowledged, the
connections closed and never opened again under their client ids, what they had received forgotten: the broker
redelivers it to the new holder and the work is idempotent), a surplus is left after acknowledging what was
processed and given back once the telemetry process has left it too. Before acknowledging anything, before the
timer loop fires a partition's timers, and before paho may reconnect after a lost connection, the lease is confirmed
with the database (`LeaseKeeper.confirm`, its epoch included); no confirmation, no acknowledgement (the PUBACKs wait
for one) and no reconnect (the session pauses; it is resumed once the lease confirms, or left when it is lost).

Fire alarms never share an interpreter with the telemetry flood: readings are evaluated by a child process
(`telemetry.py`, its own sessions and database connection, told the held leases after every change). This process keeps the
priority lane (events and status), which publishes the notifications of its own transaction right after commit; the
notifier, woken by NOTIFY (then 0.1 s later), publishes every other change (telemetry, timers, the API) and catches
up on anything a crash left unpublished (`publish.py`: once per change). The timer loop sleeps until the next due
timer or a NOTIFY.

A database outage stops nothing: every thread that loses its connection waits with backoff and runs again on new
connections (`gridhub.waiting.run_through_outages`), the telemetry process does the same and says so on its report
queue, a message whose transaction failed is kept (first in line) and acknowledged only after its commit, and the
part's health endpoint answers 503 "waiting for database" meanwhile (`gridhub.waiting.WAITS`).

After (re)connecting, the broker first hands over what it queued for our session; a marker published to
ourselves comes after that backlog (mosquitto; on NATS the sessions' user may not publish, and a session quiet for a
second after subscribing counts as drained), and offline deadlines stay held back until every held partition's two
sessions are drained, plus a margin (silence during our own absence is no evidence). A retained `offline` status,
replayed on subscribe, tells state, not an event: it makes the device's offline deadline due at once, so it
becomes an alert only if nothing else from the device arrives in the backlog or the grace margin. A live last
will (`offline`, not retained) raises device_offline at once.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import paho.mqtt.client as paho
import psycopg
from pydantic import ValidationError

from gridhub.alerts import changes, offline, patrols, publish, records, tasks, telemetry, timers
from gridhub.alerts.devices import DeviceBook
from gridhub.alerts.evaluate import acceptable, event_findings
from gridhub.alerts.partitions import (
    PART,
    PartitionSession,
    describe,
    device_and_channel,
    partition_of,
    session_name,
)
from gridhub.alerts.rules import RuleBook, load_rules
from gridhub.db import connect
from gridhub.leases import Change, Lease, LeaseKeeper
from gridhub.mqtt import MqttConnection
from gridhub.protocol import Event, ms_to_dt
from gridhub.runtime import serve_part_health
from gridhub.services.nats import check_partitions
from gridhub.settings import Settings
from gridhub.waiting import DATABASE, DATABASE_ERRORS, WAITS, GaveUp, keep_trying, run_through_outages

log = logging.getLogger("gridhub.alerts")

PUBLISH_WAIT_S = 0.05  # the notifier looks again this soon when rows wait for an earlier change of their entity
NOTIFIER_DELAY_S = 0.1  # after a wake-up: fresh rows of the priority lane are its own to publish, not contended
LANES = frozenset({"events", "telemetry"})
LANE_START_S = 30.0  # how long the events session waits for the telemetry process to subscribe
APPLICATION_NAME = "gridhub-alerts-lease"


@dataclass(frozen=True)
class Inbound:
    topic: str
    device_id: str
    channel: str
    payload: bytes
    qos: int
    mid: int
    retain: bool
    generation: int  # the connection it came on (MqttConnection.generation): acknowledged on that one only
    session: PartitionSession | None = field(default=None, compare=False)  # the partition's session it came on
    received: float = field(default_factory=time.perf_counter, compare=False)


@dataclass(frozen=True)
class Fresh:
    """Change rows the priority lane has just committed, for the fresh publisher."""

    ids: list[int]
    device_id: str
    channel: str
    received: float
    started: float
    committed: float


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
        if settings.broker == "nats":
            check_partitions(settings.partitions)
        elif settings.partitions != 1:
            raise ValueError(f"GRIDHUB_PARTITIONS={settings.partitions}: alerts on mosquitto takes one partition (its "
                             "sessions receive every device's messages); set GRIDHUB_PARTITIONS=1, or GRIDHUB_BROKER="
                             "nats for partitions")
        self.instance = settings.client_id("alerts")  # names this process (logs, its telemetry process, publisher)
        # the part's leases, kept on the keeper's thread; _on_change takes and leaves partitions
        self.keeper = LeaseKeeper(PART, settings.partitions, self.db_url, settings.instance_id, settings.lease_s,
                                  on_change=self._on_change, on_failure=self._keeper_failed,
                                  application_name=APPLICATION_NAME)
        self.keeper_failed = threading.Event()
        self.held: dict[int, Lease] = {}  # the leases the sessions run under; empty on a standby
        self.giving_back: dict[int, tuple[int, float]] = {}  # surplus left here: (epoch, give back at the latest)
        self.unwatched: set[int] = set()  # partitions gained whose silent devices get their offline deadlines
        self.sessions: dict[int, PartitionSession] = {}  # the held partitions' events sessions
        self.lease_lock = threading.Lock()  # taking and leaving partitions against each other
        self.standing_by = False  # said so in the log
        self.events_due: dict[int, float] = {}  # when a partition's events session starts even without telemetry's
        self.lanes_subscribed: dict[int, set[str]] = {}
        self.lanes_drained: dict[int, set[str]] = {}
        self.book = DeviceBook(settings.partitions, self.rules, self.clock)
        self.stopping = threading.Event()
        self.ready = threading.Event()  # every held partition's two sessions have subscribed
        self.priority: queue.Queue[Inbound] = queue.Queue()
        self.retry: deque[Inbound] = deque()  # messages whose transaction failed: first again, still unacknowledged
        self.fresh: queue.Queue[Fresh] = queue.Queue()
        self.grace_until: datetime | None = None
        self.threads: list[threading.Thread] = []
        self.ctx = mp.get_context("spawn")
        self.lane_reports: Any = self.ctx.Queue()
        self.lane_leases: Any = self.ctx.Queue()  # {partition: Lease} after every round, for the telemetry process
        self.lane_stop: Any = self.ctx.Event()
        self.lane: Any = None  # the telemetry process
        self.timer_actions: dict[str, timers.TimerAction] = {
            **tasks.timer_actions(self.rules),
            **offline.timer_actions(self.rules),
            **patrols.timer_actions(self.rules),
            "offline": self._offline_due,
            "noisy": lambda uow, key, payload, now: records.noisy_check(uow, key, now, self.rules),
        }
        # notifications (alerts, workers' tasks) go out on a connection of their own as the hub's user: on NATS the
        # partition sessions are subscribe-only users of the devices' account. TCP_NODELAY: a notification goes out
        # at once instead of waiting up to 40 ms for the peer's delayed ACK
        self.publisher = MqttConnection(settings.mqtt_url, f"{self.instance}-publish"[:128], protocol=paho.MQTTv311,
                                        keepalive=30, reconnect_delay=(1, 5), tcp_nodelay=True)

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        sys.setswitchinterval(0.0005)  # hand the interpreter over quickly when an alarm's database reply arrives

        def load() -> None:
            with connect(self.db_url, autocommit=True) as conn:
                self.book.load(conn)
                plans, expiries = patrols.sync_plans(conn, self.clock.now())  # units and facilities imported while away
                if plans or expiries:
                    log.info("patrol plans: %d new units, %d facility expiry dates", plans, expiries)

        if keep_trying(load, waiter="alerts-start", stopping=self.stopping, grace_s=None,
                       url=self.db_url) is GaveUp.STOPPING:
            return
        self.lane = self.ctx.Process(
            target=telemetry.run_lane, name=f"{self.instance}-telemetry", daemon=True,
            args=(telemetry.LaneArgs(self.settings, self.rules, self.clock, logging.getLogger().getEffectiveLevel(),
                                     os.getpid()),
                  self.lane_reports, self.lane_leases, self.lane_stop))
        self.lane.start()
        self.publisher.start()
        for name, target in (("priority-lane", self._priority_lane), ("fresh-publisher", self._fresh_publisher),
                             ("lane-reports", self._lane_reports), ("timers", self._timer_loop),
                             ("notifier", self._notifier), ("housekeeping", self._housekeeping)):
            t = threading.Thread(target=self._guarded, args=(target,), name=f"alerts-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        # the keeper joins the part (PartitionMismatch when a live instance uses another P) and takes free partitions
        # at once; a partition's events session then starts once its telemetry session has subscribed (so that from
        # the first event on the broker keeps both)
        self.keeper.start(self.stopping)

    def stop(self) -> None:
        """Stop renewing and working, acknowledge what was processed, disconnect, and release the leases: a standby
        takes the partitions, and their sessions, at its next round."""
        self.stopping.set()
        self.lane_stop.set()
        self.keeper.stop()
        for t in self.threads:
            t.join(timeout=10)
        with self.lease_lock:
            for session in self.sessions.values():
                session.leave(lost=False)
        self.publisher.stop()
        if self.lane is not None:
            self.lane.join(timeout=10)
            if self.lane.is_alive():
                self.lane.terminate()
                self.lane.join(timeout=5)
        self.keeper.release()

    def run_until_signalled(self) -> None:
        done = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        health = serve_part_health("alerts")
        failed: list[BaseException] = []

        def start() -> None:
            try:
                self.start()
            except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
                failed.append(exc)

        starting = threading.Thread(target=start, name="alerts-start", daemon=True)
        starting.start()  # waits for the database if it is away; a signal meanwhile still stops us
        while starting.is_alive() and not done.wait(0.5):
            pass
        if done.is_set():
            self.stopping.set()
            starting.join(10)
        if failed:
            self.stop()
            raise failed[0]
        if not done.is_set():
            log.info("alerts instance %s running", self.instance)
        while not done.wait(1.0):
            if not all(t.is_alive() for t in self.threads):
                log.error("an alerts thread died; stopping so that the supervisor restarts us")
                break
            if self.keeper_failed.is_set():
                log.error("the alerts lease keeper failed; stopping so that the supervisor restarts us")
                break
            if self.lane is not None and not self.lane.is_alive():
                log.error("the telemetry lane process exited (code %s); stopping so that the supervisor restarts us",
                          self.lane.exitcode)
                break
        self.stop()
        if health is not None:
            health.stop()

    def _guarded(self, target: Callable[[Callable[[], None]], None]) -> None:
        """Run a thread's loop; through database outages it waits and runs again on new connections
        (`target(connected)` calls `connected()` once its connections answer), after any other failure in 1 s."""
        name = threading.current_thread().name
        while not self.stopping.is_set():
            try:
                run_through_outages(target, waiter=name, stopping=self.stopping, url=self.db_url)
                return
            except Exception:  # noqa: BLE001 - a lane restarts on a fresh connection after a failure
                log.exception("%s failed; restarting it in 1 s", name)
                self.stopping.wait(1.0)

    # ------------------------------------------------------------------ MQTT, backlog markers

    def _on_message(self, session: PartitionSession, msg: paho.MQTTMessage) -> None:
        """On paho's network thread: the message with its session and the connection it came on (`generation`)."""
        generation = session.mqtt.generation
        topic = msg.topic
        if session.is_marker(topic):
            self.priority.put(Inbound(topic, "", "marker", bytes(msg.payload), msg.qos, msg.mid, msg.retain,
                                      generation, session))
            return
        device, channel = device_and_channel(self.settings, topic)
        if device and partition_of(device, self.settings.partitions) != session.partition:
            device, channel = "", ""  # unmapped on NATS, of another partition's device: only acknowledged
        self.priority.put(Inbound(topic, device, channel, bytes(msg.payload), msg.qos, msg.mid, msg.retain,
                                  generation, session))

    def _ack(self, item: Inbound) -> None:
        """Acknowledge a processed message once its partition's lease is confirmed (with any held back before), each
        on the connection it came on, or not at all: a packet id of a connection that is gone would acknowledge
        another message on the new one; the broker redelivers the message instead (the priority lane's work is
        idempotent: rule_events keeps one row per event). Priority lane only."""
        session = item.session
        if session is None:
            return
        if item.qos > 0:
            session.ack(item.generation, item.mid)
        session.flush()

    def _flush_acks(self) -> None:
        for session in list(self.sessions.values()):
            if session.has_pending():
                session.flush()

    def _session_connected(self, session: PartitionSession) -> None:
        self._lane_connected(session.partition, session.epoch, "events")

    def _session_subscribed(self, session: PartitionSession) -> None:
        self._lane_subscribed(session.partition, session.epoch, "events")

    def _current(self, partition: int, epoch: int | None) -> bool:
        lease = self.held.get(partition)
        return lease is not None and lease.epoch == epoch

    def _lane_connected(self, partition: int, epoch: int | None, lane: str) -> None:
        """A session (re)connected: offline deadlines wait for its backlog again."""
        if self._current(partition, epoch):
            self.lanes_drained.setdefault(partition, set()).discard(lane)
            self.grace_until = None

    def _lane_subscribed(self, partition: int, epoch: int | None, lane: str) -> None:
        if not self._current(partition, epoch):
            return
        self.lanes_subscribed.setdefault(partition, set()).add(lane)
        if all(self.lanes_subscribed.get(k, set()) >= LANES for k in self.held):
            self.ready.set()

    def _lane_drained(self, partition: int, epoch: int | None, lane: str) -> None:
        """This session's backlog is processed; with every held partition's two, offline deadlines resume after the
        grace margin."""
        if not self._current(partition, epoch):
            return
        self.lanes_drained.setdefault(partition, set()).add(lane)
        if self.held and all(self.lanes_drained.get(k, set()) >= LANES for k in self.held):
            self.grace_until = self.clock.now() + timedelta(seconds=self.rules.offline.grace_margin_s)
            log.info("backlog drained; offline deadlines resume at %s", self.grace_until.isoformat())

    def _lane_reports(self, connected: Callable[[], None]) -> None:
        """What the telemetry process tells us about its sessions (with the partition and the lease's epoch, `k:e`: a
        report of an earlier lease is stale) and its database connection; starts a partition's events session once
        its telemetry session has subscribed, or LANE_START_S after taking the partition. On NATS, a session quiet
        since subscribing counts as drained (no marker there)."""
        while not self.stopping.is_set():
            now = time.monotonic()
            for k, (surplus_epoch, due) in list(self.giving_back.items()):
                if now > due:
                    self._give_back(k, surplus_epoch)
            for k, session in list(self.sessions.items()):
                if session.paused and (lease := self.held.get(k)) is not None:
                    session.resume(lease)  # held back while its lease could not be confirmed: ask again
                if not session.started and now > self.events_due.get(k, now):
                    log.warning("the telemetry lane has not subscribed partition %d after %s s; taking events anyway",
                                k, LANE_START_S)
                    self._start_events(k, None)
                if session.started and not session.drained and session.quiet():
                    session.drained = True
                    self._lane_drained(k, session.epoch, "events")
            try:
                what, detail = self.lane_reports.get(timeout=0.5)
            except queue.Empty:
                continue
            if what == "waiting":
                WAITS.begin(DATABASE, "telemetry-lane", detail)
            elif what == "back":
                WAITS.end(DATABASE, "telemetry-lane")
            else:
                k_text, _, epoch_text = detail.partition(":")
                k, epoch = int(k_text), int(epoch_text) if epoch_text.isdigit() else None
                if what == "left":
                    self._give_back(k, epoch)
                    continue
                {"connected": self._lane_connected, "subscribed": self._lane_subscribed,
                 "drained": self._lane_drained}[what](k, epoch, "telemetry")
                if what == "subscribed":
                    self._start_events(k, epoch)

    # ------------------------------------------------------------------ the leases

    def _on_change(self, change: Change) -> None:
        """The keeper's report (on its thread, or on the starting thread for the first share): leave the partitions
        lost (acknowledging nothing more) and the surplus (acknowledging what was processed), take the ones gained,
        and tell the telemetry process. A surplus is given back once the telemetry process has left it too (or
        LANE_START_S later)."""
        with self.lease_lock:
            for k in sorted(change.lost):
                if k in self.sessions:
                    self._leave(k, lost=True)
            for k, lease in sorted(change.surplus.items()):
                if k in self.sessions:
                    self._leave(k, lost=False)
                    log.info("alerts %s gives back %s (a fair share for %d instances)", self.keeper.holder,
                             describe(lease), change.live)
                self.giving_back[k] = (lease.epoch, time.monotonic() + LANE_START_S)
            for k in change.lost:
                self.giving_back.pop(k, None)
            if not self.stopping.is_set():
                for _k, lease in sorted(change.gained.items()):
                    self._take(lease)
            self.lane_leases.put(dict(self.held))
            if not self.held and not self.standing_by:
                self._stand_by()

    def _give_back(self, partition: int, epoch: int | None) -> None:
        """Both lanes have left a surplus partition (or the telemetry lane did not say so in time): release it."""
        with self.lease_lock:
            pending = self.giving_back.get(partition)
            if pending is None or (epoch is not None and pending[0] != epoch):
                return
            del self.giving_back[partition]
        self.keeper.give_back([partition])

    def _keeper_failed(self) -> None:
        self.keeper_failed.set()

    def _stand_by(self) -> None:
        self.standing_by = True
        log.info("alerts standby (%s): every partition (%d) is held by another instance; taking partitions over, with "
                 "their sessions, if one stops or its lease expires (GRIDHUB_LEASE_S=%g)", self.keeper.holder,
                 self.keeper.partitions, self.keeper.lease_s)

    def _take(self, lease: Lease) -> None:
        k = lease.partition
        session = PartitionSession(self.settings, "events", lease, self.keeper.confirm, log,
                                   on_message=self._on_message, on_connected=self._session_connected,
                                   on_subscribed=self._session_subscribed, on_paused=self.keeper.wake,
                                   tcp_nodelay=True)
        log.info("alerts %s holds %s: taking its sessions %s and %s", self.keeper.holder, describe(lease),
                 session.client_id, session_name(self.settings, k, "telemetry"))
        self.standing_by = False
        self.held[k] = lease
        self.sessions[k] = session
        self.lanes_subscribed[k], self.lanes_drained[k] = set(), set()
        self.ready.clear()
        self.grace_until = None
        gained = self.book.set_partitions(frozenset(self.held))
        self.events_due[k] = time.monotonic() + LANE_START_S
        self.unwatched |= gained  # the timer loop gives their silent devices offline deadlines

    def _start_events(self, partition: int, epoch: int | None) -> None:
        """A partition's events session, under its current lease (of `epoch`, when given)."""
        with self.lease_lock:
            session = self.sessions.get(partition)
            if session is None or session.started or self.stopping.is_set() or (
                    epoch is not None and epoch != session.epoch):
                return
            session.start()

    def _leave(self, partition: int, *, lost: bool) -> None:
        """A lease lost (another instance took the partition, or it expired while this process stalled): acknowledge
        nothing more, disconnect, and never reconnect under the sessions' client ids (the holder has them); what
        was received here is the holder's now (the broker redelivers it there). Given back (a surplus): what was
        processed is acknowledged first."""
        session = self.sessions.pop(partition)
        self.held.pop(partition, None)
        self.events_due.pop(partition, None)
        self.lanes_subscribed.pop(partition, None)
        self.lanes_drained.pop(partition, None)
        session.leave(lost=lost)
        if not self.held:
            self.ready.clear()
            self.grace_until = None
        self.book.set_partitions(frozenset(self.held))

    def _watch_silent_devices(self, conn: psycopg.Connection[Any], gained: frozenset[int]) -> None:
        """Devices never heard from get an offline deadline one window from when we started watching."""
        now = self.clock.now()
        book = self.book
        rows = [(d, now + reg.window, book.partition_of(d)) for d, reg in book.devices.items()
                if not reg.retired and book.partition_of(d) in gained]
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany("INSERT INTO timers (kind, key, due_at, partition) SELECT 'offline', %s, %s, %s"
                            " WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE device_id = %s AND type = 'device_offline'"
                            " AND state = 'active') ON CONFLICT (kind, key) DO NOTHING",
                            [(d, due, s, d) for d, due, s in rows])

    # ------------------------------------------------------------------ what a message does

    def _offline_due(self, uow: changes.UnitOfWork, device_id: str, payload: dict[str, Any], now: datetime) -> None:
        """The offline deadline: raise device_offline unless a sign of life came after the deadline was written."""
        conn = uow.conn
        book = self.book
        reg = book.devices.get(device_id)
        if reg is None or reg.retired:
            return
        last = book.alive.get(device_id)
        if last is not None and last + reg.window > now:
            timers.schedule(conn, "offline", device_id, last + reg.window, partition=book.partition_of(device_id),
                            wake=False)
            book.offline_written[device_id] = last + reg.window
            return
        book.offline_written.pop(device_id, None)
        reason = payload.get("reason", f"silent for {int(reg.window.total_seconds())} s")
        records.raise_alert(uow, reg.place, "device_offline", now, now, self.rules, {"reason": reason})
        book.load_states(conn, {device_id})
        book.state(device_id).active.add("device_offline")

    def _handle_priority(self, conn: psycopg.Connection[Any], item: Inbound) -> list[int]:
        """Evaluate an event or status message in one transaction; returns the change rows it wrote."""
        book = self.book
        if item.channel == "marker":
            session = item.session
            if session is not None and session.mqtt.is_current_marker(item.payload):
                session.drained = True
                self._lane_drained(session.partition, session.epoch, "events")
            return []
        if not item.device_id:
            return []
        reg = book.registered(conn, item.device_id)
        if reg is None or not book.mine(item.device_id):
            return []
        now = self.clock.now()
        dev = item.device_id
        book.load_states(conn, {dev})
        ids: list[int] = []
        if item.channel == "event":
            try:
                ev = Event.model_validate_json(item.payload)
            except ValidationError:
                return []  # ingest quarantines it
            if not acceptable(reg.place.kind, ev, int(now.timestamp() * 1000)):
                return []
            with changes.UnitOfWork(conn) as uow:
                fresh = conn.execute(
                    "INSERT INTO rule_events (device_id, ts, seq, type) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING 1",
                    (dev, ms_to_dt(ev.ts), ev.seq if ev.seq is not None else -1, ev.type)).fetchone()
                if fresh is None:
                    return []  # redelivered or re-sent: evaluated once already
                book.signs_of_life(uow, {dev: reg}, now, offline_in_memory=True)
                st = book.state(dev)
                for f in event_findings(ev):
                    book.apply(uow, reg, f, now)
                    (st.active.add if f.action == "raise" else st.active.discard)(f.alert_type)
                if ev.type == "alarm":
                    records.count_alarm(uow, reg.place, ms_to_dt(ev.ts), now, self.rules)
            ids = uow.ids
        elif item.channel == "status":
            text = item.payload.decode("utf-8", "replace").strip()
            with changes.UnitOfWork(conn) as uow:
                if text == "offline" and not item.retain:
                    timers.cancel(conn, "offline", dev)
                    book.offline_written.pop(dev, None)
                    book.alive.pop(dev, None)
                    records.raise_alert(uow, reg.place, "device_offline", now, now, self.rules,
                                        {"reason": "last will: the broker lost the device's connection"})
                    book.state(dev).active.add("device_offline")
                elif text == "offline":
                    if "device_offline" not in book.state(dev).active:
                        book.alive.pop(dev, None)
                        timers.schedule(conn, "offline", dev, now, partition=book.partition_of(dev),
                                        payload={"reason": "retained offline status (last will while the hub was away)"})
                        book.offline_written[dev] = now
                elif text == "online" and not item.retain:
                    book.signs_of_life(uow, {dev: reg}, now, offline_in_memory=True)
            ids = uow.ids
        return ids

    # ------------------------------------------------------------------ threads

    def _priority_lane(self, connected: Callable[[], None]) -> None:
        with connect(self.db_url, autocommit=True) as conn:
            connected()
            while not self.stopping.is_set():
                if self.retry:
                    item = self.retry.popleft()
                else:
                    try:
                        item = self.priority.get(timeout=0.5)
                    except queue.Empty:
                        self._flush_acks()  # held back for a confirmation: ask again
                        continue
                if item.session is not None and item.session.lease is None:
                    continue  # its partition was left: the broker redelivers it to the holder
                started = time.perf_counter()
                try:
                    ids = self._handle_priority(conn, item)
                except Exception:  # the unit of work rolled back and forgot its changes
                    self.book.forget_states()
                    self.retry.appendleft(item)  # not acknowledged: first again, on a fresh connection
                    raise
                if ids:
                    self.fresh.put(Fresh(ids, item.device_id, item.channel, item.received, started,
                                         time.perf_counter()))
                self._ack(item)
            self._flush_acks()  # stopping: what was processed is acknowledged before the connection closes

    def _fresh_publisher(self, connected: Callable[[], None]) -> None:
        """Publishes what the priority lane committed, at once and while the lane goes on with the next message
        (the notifier is the fallback); logs where each message's time went."""
        with publish.connect_publisher(self.db_url) as conn:
            connected()
            while not self.stopping.is_set():
                try:
                    batch = [self.fresh.get(timeout=0.5)]
                except queue.Empty:
                    continue
                while True:
                    try:
                        batch.append(self.fresh.get_nowait())
                    except queue.Empty:
                        break
                mqtt = self.publisher
                ids = [i for f in batch for i in f.ids]
                if mqtt.is_connected():
                    try:
                        publish.publish_rows(conn, mqtt.client, self.prefix, ids)
                    except DATABASE_ERRORS:  # committed: the notifier publishes them; we wait for a new connection
                        if conn.broken or conn.closed:
                            raise
                        log.exception("could not publish changes %s directly; the notifier will", ids)
                    except Exception:  # noqa: BLE001 - committed; the notifier publishes what is still unpublished
                        log.exception("could not publish changes %s directly; the notifier will", ids)
                done = time.perf_counter()
                for f in batch:
                    log.info("%s %s: waited %.1f ms, transaction %.1f ms, published %.1f ms after commit", f.device_id,
                             f.channel, (f.started - f.received) * 1000, (f.committed - f.started) * 1000,
                             (done - f.committed) * 1000)

    def _held_back(self) -> tuple[str, ...]:
        g = self.grace_until
        return ("offline",) if g is None or self.clock.now() < g else ()

    def _timer_loop(self, connected: Callable[[], None]) -> None:
        with connect(self.db_url, autocommit=True) as conn, connect(self.db_url, autocommit=True) as listen:
            listen.execute(f"LISTEN {timers.CHANNEL}")
            connected()
            while not self.stopping.is_set():
                if self.unwatched:
                    with self.lease_lock:
                        todo, self.unwatched = frozenset(k for k in self.unwatched if k in self.held), set()
                    try:
                        self._watch_silent_devices(conn, todo)
                    except BaseException:
                        self.unwatched |= todo  # again on the next connection
                        raise
                held_back = self._held_back()
                # a lease that cannot be confirmed fires nothing of its partition (another may hold it)
                held = self.keeper.confirm_all(list(self.held.values())) if self.held else frozenset()
                timers.fire_due(conn, self.clock.now(), self.timer_actions, partitions=held, held_back=held_back)
                nd = timers.next_due(conn, self.timer_actions.keys(), partitions=held, held_back=held_back)
                wait = 5.0 if nd is None else (nd - self.clock.now()).total_seconds()
                if held_back:
                    g = self.grace_until
                    wait = min(wait, 0.5 if g is None else (g - self.clock.now()).total_seconds())
                wait = min(max(wait, 0.0), 5.0)
                wake_at = self.clock.now() + timedelta(seconds=wait)
                end = time.monotonic() + wait
                while (left := end - time.monotonic()) > 0 and not self.stopping.is_set():
                    notes = list(listen.notifies(timeout=left, stop_after=1))
                    if not notes or any(timers.wakes_earlier(n.payload, wake_at) for n in notes):
                        break  # due now, or a timer due before we would wake (else: sleep on, no queries)

    def _notifier(self, connected: Callable[[], None]) -> None:
        """Publish every change not yet published, woken at once by NOTIFY (a commit, or rows left for us);
        the 1 s timeout is the fallback for a lost wake-up."""
        with publish.connect_publisher(self.db_url) as conn, connect(self.db_url, autocommit=True) as listen:
            listen.execute(f"LISTEN {changes.CHANNEL}")
            listen.execute(f"LISTEN {publish.WAKE_CHANNEL}")
            connected()
            while not self.stopping.is_set():
                mqtt = self.publisher
                out = publish.Outcome(0, 0)
                if mqtt.is_connected():
                    out = publish.catch_up(conn, mqtt.client, self.prefix)
                if out.published >= publish.BATCH:
                    continue
                if out.deferred:
                    self.stopping.wait(PUBLISH_WAIT_S)
                    continue
                woken = False
                for _ in listen.notifies(timeout=1.0, stop_after=1):
                    woken = True
                if woken:  # the priority lane publishes its own rows meanwhile; this wakes for the others
                    self.stopping.wait(NOTIFIER_DELAY_S)

    def _housekeeping(self, connected: Callable[[], None]) -> None:
        """The registry read again every minute, and old rule events pruned every hour."""
        with connect(self.db_url, autocommit=True) as conn:
            connected()
            last_registry = time.monotonic()
            last_prune = 0.0
            while not self.stopping.wait(5.0):
                if time.monotonic() - last_registry > 60:
                    self.book.load(conn)
                    last_registry = time.monotonic()
                if time.monotonic() - last_prune > 3600:
                    conn.execute("DELETE FROM rule_events WHERE ts < %s",
                                 (self.clock.now() - timedelta(seconds=max(2 * 86400, 2 * self.rules.noisy_device.window_s)),))
                    last_prune = time.monotonic()


def run(settings: Settings) -> None:
    """Run one alerts instance until SIGTERM or SIGINT."""
    AlertService(settings).run_until_signalled()
