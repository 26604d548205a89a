"""The telemetry lane, in a process of its own so that a flood of readings never shares an interpreter lock
with fire alarms: the partition's telemetry session (`gridhub-alerts-p0-telemetry`, persistent, named by the
partition), readings evaluated in batches in memory, what they change written in one transaction, every message
acknowledged after that commit and after the lease has been confirmed.

The priority process keeps the lease (alerts/service.py) and tells this one, after every lease round, which lease
it holds (`Lease` or None on the lease queue): the lane connects as the partition's session under a lease it is
given, leaves the session (disconnects, forgets what it had received) when it is told of none or of another epoch,
and, while it has unconfirmed work, asks the database itself (`partitions.Fence`) before every acknowledgement and
before paho may reconnect: no confirmation, no acknowledgement and no reconnect. It reports to the parent on a
queue: connected (offline deadlines wait again), subscribed, the drain marker seen (each with the lease's epoch),
and waiting for the database / back (the parent's health says so). Through a database outage it keeps its batch
(first again, unacknowledged) and reconnects with backoff (`gridhub.waiting.keep_trying`); it never exits for it.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from dataclasses import dataclass
from multiprocessing.queues import Queue as ProcessQueue
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

import paho.mqtt.client as paho
import psycopg
from psycopg.types.json import Jsonb
from pydantic import ValidationError

from gridhub.alerts import changes, timers
from gridhub.alerts.devices import DeviceBook, Registered
from gridhub.alerts.evaluate import Finding, acceptable, reading_findings
from gridhub.alerts.partitions import PART, Fence, describe, marker_topic, pause_unless_confirmed, session_id
from gridhub.alerts.rules import RuleBook
from gridhub.db import connect
from gridhub.leases import Lease, PartitionLeases
from gridhub.mqtt import Connack, MqttConnection
from gridhub.protocol import Reading
from gridhub.settings import Settings
from gridhub.waiting import DATABASE_ERRORS, GaveUp, Waits, keep_trying

log = logging.getLogger("gridhub.alerts.telemetry")

BATCH = 500
NICE = 10  # when the CPU is short, the priority process runs first; the broker queues telemetry meanwhile
APPLICATION_NAME = "gridhub-alerts-telemetry"
UNSET = object()


@dataclass(frozen=True)
class Inbound:
    device_id: str
    payload: bytes
    qos: int
    mid: int
    generation: int  # the connection it came on (MqttConnection.generation): acknowledged on that one only
    marker: bool = False


@dataclass(frozen=True)
class LaneArgs:
    settings: Settings
    rules: RuleBook
    clock: timers.Clock
    holder: str  # the lease holder: the priority process (gridhub.leases.holder_name)
    log_level: int
    parent_pid: int  # the priority process: the lane stops when it is gone (even if killed with SIGKILL)


class _Stopping:
    """Set when the parent says stop or is gone (even killed with SIGKILL): what the lane's waits watch."""

    def __init__(self, stop: ProcessEvent, parent_pid: int) -> None:
        self._stop, self._parent = stop, parent_pid

    def is_set(self) -> bool:
        return self._stop.is_set() or os.getppid() != self._parent

    def wait(self, timeout: float | None = None) -> bool:
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._stop.wait(min(left, 0.5))
        return True


def run_lane(args: LaneArgs, reports: ProcessQueue[tuple[str, str]], leases: ProcessQueue[Lease | None],
             stop: ProcessEvent) -> None:
    """The child process's entry point: run until `stop` is set or the parent process is gone."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if os.getppid() != args.parent_pid:
        return  # the parent died while this process was starting
    os.nice(NICE)
    stopping = _Stopping(stop, args.parent_pid)
    lane = TelemetryLane(args, reports, leases, stopping)
    if not lane.reconnect_db():
        return
    try:
        while not stopping.is_set():
            try:
                lane.run_once()
            except DATABASE_ERRORS:  # the batch is kept for the next connection
                if not lane.reconnect_db():
                    return
            except Exception:  # noqa: BLE001 - the lane goes on with a fresh connection; messages were requeued
                log.exception("telemetry lane failed; going on in 1 s on a fresh connection")
                time.sleep(1.0)
                if not lane.reconnect_db():
                    return
    finally:
        lane.stop()


class TelemetryLane:
    """Readings of the held partition's devices: held thresholds, drop window, signs of life."""

    def __init__(self, args: LaneArgs, reports: ProcessQueue[tuple[str, str]], leases: ProcessQueue[Lease | None],
                 stopping: _Stopping) -> None:
        self.settings = args.settings
        self.db_url = args.settings.database_url or ""
        self.prefix = args.settings.topic_prefix
        self.rules = args.rules
        self.clock = args.clock
        self.reports = reports
        self.lease_inbox = leases
        self.book = DeviceBook(args.settings.partitions, args.rules, args.clock)
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.retry: list[Inbound] = []  # a batch whose transaction failed: first again, still unacknowledged
        self.unacked: list[Inbound] = []  # committed, waiting for the lease to be confirmed before the PUBACKs
        self.stopping = stopping
        self.waits = Waits("alerts", log_changes=False)  # the parent logs and answers health for the part
        self.conn: psycopg.Connection[Any] | None = None
        self.fence = Fence(PartitionLeases(PART, args.settings.partitions, args.holder, args.settings.lease_s),
                           self.db_url, APPLICATION_NAME)
        self.lease: Lease | None = None  # the lease the session runs under
        self.paused = False  # connection lost and not resumed: the lease could not be confirmed then
        self.refusing = False  # acknowledgements held back under the current lease (logged once)
        self.client_id = session_id(0, "telemetry", self.prefix)
        self.marker_topic = marker_topic(self.prefix, self.client_id)
        self.mqtt = MqttConnection(
            self.settings.mqtt_url or "", self.client_id, protocol=paho.MQTTv311, persistent=True,
            manual_ack=True, keepalive=30, reconnect_delay=(1, 5), max_inflight=100,
            subscriptions=[(f"{self.prefix}/devices/+/telemetry", 1)], marker_topic=self.marker_topic,
            on_connected=self._on_connected, on_subscribed=self._on_subscribed, on_message=self._on_message,
            on_disconnected=self._on_disconnected, on_refused=self._on_refused)
        self.started = False
        self.session_present = False

    def stop(self) -> None:
        if self.started:
            self.mqtt.stop()
        if self.conn is not None:
            self.conn.close()
        self.fence.close()

    # ------------------------------------------------------------------ the lease (the parent's, after every round)

    def follow_lease(self) -> None:
        """Take the latest lease the parent sent (if any) and act on it."""
        latest: object = UNSET
        while True:
            try:
                latest = self.lease_inbox.get_nowait()
            except queue.Empty:
                break
        if latest is not UNSET:
            assert latest is None or isinstance(latest, Lease)
            self.reconcile(latest)

    def reconcile(self, lease: Lease | None) -> None:
        current = self.lease
        if current is not None and (lease is None or lease.epoch != current.epoch):
            self._leave(current)
        if lease is None:
            return
        if self.lease is None:
            self.lease, self.paused, self.refusing = lease, False, False
            self.book.set_partitions(frozenset({lease.partition}))
            log.info("alerts telemetry lane holds %s: connecting as %s", describe(lease), self.client_id)
            self.started = True
            self.mqtt.start()
        elif self.paused and self.fence.confirm(lease):
            self.paused = False
            log.info("alerts %s: the lease on %s is confirmed; reconnecting", self.client_id, describe(lease))
            self.mqtt.stop()
            self.mqtt.start()

    def _leave(self, lease: Lease) -> None:
        """A lease lost: acknowledge nothing more, disconnect and do not connect under the session's client id again
        (the new holder has it); what was received here is the broker's to deliver to the holder."""
        log.warning("alerts %s lost %s: another instance holds it now, or its lease ran out; acknowledging nothing "
                    "more and leaving the session to the holder", self.client_id, describe(lease))
        self.lease, self.paused = None, False
        self.book.set_partitions(frozenset())
        if self.started:
            self.mqtt.stop()
            self.started = False
        self.retry, self.unacked = [], []
        while True:
            try:
                self.inbox.get_nowait()
            except queue.Empty:
                break

    def _epoch(self) -> str:
        lease = self.lease
        return "" if lease is None else str(lease.epoch)

    def reconnect_db(self) -> bool:
        """A new connection with the registry read again, waiting through outages (and telling the parent once that
        we wait and once that we are back); False when stopping first."""
        told = False

        def attempt() -> None:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            conn = connect(self.db_url, autocommit=True)
            try:
                self.book.load(conn)
            except BaseException:
                conn.close()
                raise
            self.conn = conn

        def waiting(exc: BaseException) -> None:
            nonlocal told
            if not told:
                self.reports.put(("waiting", type(exc).__name__))
                told = True

        result = keep_trying(attempt, waiter="telemetry-lane", stopping=self.stopping, on_error=waiting,
                             grace_s=None, waits=self.waits, url=self.db_url)
        if told:
            self.reports.put(("back", ""))
        return result is not GaveUp.STOPPING

    # ------------------------------------------------------------------ MQTT (paho's network thread)

    def _on_refused(self, rc: Any) -> None:
        log.error("broker refused the alerts instance (telemetry session): %s", rc)

    def _on_connected(self, connack: Connack) -> None:
        """(Re)connected: the connection draws a new backlog marker and subscribes again."""
        self.session_present = connack.session_present
        self.reports.put(("connected", self._epoch()))

    def _on_subscribed(self) -> None:
        """Subscribed, and the backlog marker published to ourselves."""
        lease = self.lease
        log.info("alerts %s connected (MQTT 3.1.1, session %s%s)", self.client_id,
                 "resumed" if self.session_present else "new",
                 f", {describe(lease)}" if lease is not None else "")
        self.reports.put(("subscribed", self._epoch()))

    def _on_disconnected(self, rc: Any) -> None:
        """Before paho reconnects: not under a lease that cannot be confirmed (the parent's next round resumes the
        connection if the lease is still ours, or takes it away)."""
        if self.stopping.is_set() or self.mqtt.stopping:
            return
        pause_unless_confirmed(self, rc, "readings", log)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        generation = self.mqtt.generation  # paho's network thread: the connection this message came on
        if msg.topic == self.marker_topic:
            self.inbox.put(Inbound("", bytes(msg.payload), msg.qos, msg.mid, generation, marker=True))
            return
        parts = msg.topic.rsplit("/", 2)
        self.inbox.put(Inbound(parts[1] if len(parts) == 3 else "", bytes(msg.payload), msg.qos, msg.mid,
                               generation))

    # ------------------------------------------------------------------ the lane

    def run_once(self) -> None:
        self.follow_lease()
        batch, self.retry = self.retry, []
        if not batch:
            try:
                batch = [self.inbox.get(timeout=0.5)]
            except queue.Empty:
                if self.unacked:
                    self._ack([])  # the lease could not be confirmed last time: ask again
                return
        while len(batch) < BATCH:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        conn = self.conn
        assert conn is not None
        try:
            self._evaluate(conn, batch)
        except Exception:  # the unit of work rolled back and forgot its changes
            self.book.forget_states()
            self.retry = batch  # not acknowledged: first again, in order, on a fresh connection
            raise
        self._ack(batch)

    def _ack(self, batch: list[Inbound]) -> None:
        """The batch's PUBACKs (with any held back before), once the lease is confirmed, in arrival order, each on
        the connection its message came on (one write per connection): a message of a connection that is gone is
        not acknowledged (its packet id means another message, or nothing, on the next one); the broker redelivers
        it and it is evaluated again (at least once, as after any reconnect). Unconfirmed, nothing is acknowledged:
        the PUBACKs wait for a confirmation, or are dropped with the lease."""
        pending = self.unacked + [item for item in batch if item.qos == 1]  # the subscription's QoS: nothing above
        if not pending:
            return
        if not self.fence.confirm(self.lease):
            if not self.refusing:
                log.warning("alerts %s: not acknowledging %d readings, the lease is not confirmed (the broker "
                            "redelivers them to the partition's holder)", self.client_id, len(pending))
            self.refusing = True
            self.unacked = pending
            return
        self.refusing = False
        self.unacked = []
        by_generation: dict[int, list[int]] = {}
        for item in pending:
            by_generation.setdefault(item.generation, []).append(item.mid)
        for generation, mids in by_generation.items():
            self.mqtt.ack_many(mids, generation)

    def _evaluate(self, conn: psycopg.Connection[Any], batch: list[Inbound]) -> None:
        """Evaluate a batch of readings in memory and write what they changed in one transaction."""
        book = self.book
        now = self.clock.now()
        now_ms = int(now.timestamp() * 1000)
        work: list[tuple[Registered, Reading]] = []
        for item in batch:
            if item.marker:
                if self.mqtt.is_current_marker(item.payload):
                    self.reports.put(("drained", self._epoch()))
                continue
            reg = book.registered(conn, item.device_id)
            if reg is None or not book.mine(item.device_id):
                continue
            try:
                r = Reading.model_validate_json(item.payload)
            except ValidationError:
                continue  # ingest quarantines it
            if acceptable(reg.place.kind, r, now_ms):
                work.append((reg, r))
        if not work:
            return
        alive = {reg.place.device_id: reg for reg, _ in work}
        book.load_states(conn, set(alive))
        found: list[tuple[Registered, Finding]] = []
        with book.lock:
            for reg, r in work:
                st = book.states[reg.place.device_id]
                found += [(reg, f) for f in reading_findings(st, self.rules, reg.place.kind, reg.place.device_id, r)]
            dirty = [(d, Jsonb(book.states[d].to_json())) for d in alive if book.states[d].dirty]
        with changes.UnitOfWork(conn) as uow:
            for reg, f in found:
                book.apply(uow, reg, f, now)
            book.signs_of_life(uow, alive, now, offline_in_memory=False)
            if dirty:
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO rule_state (device_id, rule, state, updated_at) VALUES"
                                    " (%s, 'readings', %s, now()) ON CONFLICT (device_id, rule)"
                                    " DO UPDATE SET state = EXCLUDED.state, updated_at = now()", dirty)
        with book.lock:
            for d, _ in dirty:
                book.states[d].dirty = False
