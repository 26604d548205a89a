"""The telemetry lane, in a process of its own so that a flood of readings never shares an interpreter lock
with fire alarms: one persistent telemetry session per held partition (`gridhub-alerts-p<k>-telemetry`, named by the
partition; `partitions.PartitionSession`), readings evaluated in batches in memory, what they change written in one
transaction, every message acknowledged after that commit and after its partition's lease has been confirmed.

The priority process keeps the leases (alerts/service.py) and tells this one, after every lease round, which
leases it holds (`{partition: Lease}` on the lease queue): the lane connects as a partition's session under a lease
it is given, leaves the session (disconnects, forgets what it had received) when it is told of none or of another
epoch for that partition, and asks the database itself (`partitions.lane_confirmer`) before every acknowledgement and before
paho may reconnect: no confirmation, no acknowledgement and no reconnect. It reports to the parent on a queue:
connected (offline deadlines wait again), subscribed, the backlog drained, a session left (each with the partition and the lease's
epoch, `k:epoch`), and waiting for the database / back (the parent's health says so). Through a database outage it
keeps its batch (first again, unacknowledged) and reconnects with backoff (`gridhub.waiting.keep_trying`); it never
exits for it.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from dataclasses import dataclass, field
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
from gridhub.alerts.partitions import (
    PartitionSession,
    describe,
    device_and_channel,
    lane_confirmer,
    partition_of,
)
from gridhub.alerts.rules import RuleBook
from gridhub.db import connect
from gridhub.leases import Lease
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
    session: PartitionSession | None = field(default=None, compare=False)  # the partition's session it came on


def _tag(session: PartitionSession) -> str:
    """A report's detail: the partition and the epoch of the lease the session runs under (`2:17`)."""
    return f"{session.partition}:{session.epoch}"


@dataclass(frozen=True)
class LaneArgs:
    settings: Settings
    rules: RuleBook
    clock: timers.Clock
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


def run_lane(args: LaneArgs, reports: ProcessQueue[tuple[str, str]], leases: ProcessQueue[dict[int, Lease]],
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
    """Readings of the held partitions' devices: held thresholds, drop window, signs of life. One persistent session
    per held partition (`partitions.PartitionSession`), created when the parent tells a lease and left when it tells
    none, or another epoch, for that partition."""

    def __init__(self, args: LaneArgs, reports: ProcessQueue[tuple[str, str]],
                 leases: ProcessQueue[dict[int, Lease]], stopping: _Stopping) -> None:
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
        self.stopping = stopping
        self.waits = Waits("alerts", log_changes=False)  # the parent logs and answers health for the part
        self.conn: psycopg.Connection[Any] | None = None
        self.confirmer = lane_confirmer(args.settings, APPLICATION_NAME)
        self.sessions: dict[int, PartitionSession] = {}  # the held partitions' telemetry sessions

    def stop(self) -> None:
        for session in self.sessions.values():
            session.leave(lost=False)
        self.sessions = {}
        if self.conn is not None:
            self.conn.close()
        # the confirmer's connection closes with this process

    # ------------------------------------------------------------------ the lease (the parent's, after every round)

    def follow_lease(self) -> None:
        """Take the latest leases the parent sent (if any) and act on them; report quiet NATS sessions drained."""
        latest: object = UNSET
        while True:
            try:
                latest = self.lease_inbox.get_nowait()
            except queue.Empty:
                break
        if latest is not UNSET:
            assert isinstance(latest, dict)
            self.reconcile(latest)
        for session in self.sessions.values():
            if session.paused and session.lease is not None:
                session.resume(session.lease)  # held back while its lease could not be confirmed: ask again
            if not session.drained and session.quiet():
                session.drained = True
                self.reports.put(("drained", _tag(session)))

    def reconcile(self, held: dict[int, Lease]) -> None:
        for k, session in list(self.sessions.items()):
            lease = held.get(k)
            if lease is None or lease.epoch != session.epoch:
                self._leave(k, lost=lease is not None)  # another epoch: lost; not held: the fence decides
        for k, lease in sorted(held.items()):
            session = self.sessions.get(k)
            if session is None:
                session = PartitionSession(self.settings, "telemetry", lease, self.confirmer.confirm, log,
                                           on_message=self._on_message, on_connected=self._on_connected,
                                           on_subscribed=self._on_subscribed)
                self.sessions[k] = session
                self.book.set_partitions(frozenset(self.sessions))
                log.info("alerts telemetry lane holds %s: connecting as %s", describe(lease), session.client_id)
                session.start()
            else:
                session.resume(lease)

    def _leave(self, partition: int, *, lost: bool) -> None:
        """A lease lost or given back: acknowledge nothing more (given back: what was committed first), disconnect
        and never connect under the session's client id again (the new holder has it); what was received here and
        not acknowledged is the broker's to deliver to the holder."""
        session = self.sessions.pop(partition)
        epoch = session.epoch
        session.leave(lost=lost)
        self.reports.put(("left", f"{partition}:{epoch}"))
        self.book.set_partitions(frozenset(self.sessions))
        self.retry = [item for item in self.retry if item.session is not session]

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

    def _on_connected(self, session: PartitionSession) -> None:
        """(Re)connected: the connection draws a new backlog marker and subscribes again."""
        self.reports.put(("connected", _tag(session)))

    def _on_subscribed(self, session: PartitionSession) -> None:
        """Subscribed, and (mosquitto) the backlog marker published to ourselves."""
        self.reports.put(("subscribed", _tag(session)))

    def _on_message(self, session: PartitionSession, msg: paho.MQTTMessage) -> None:
        generation = session.mqtt.generation  # paho's network thread: the connection this message came on
        if session.is_marker(msg.topic):
            self.inbox.put(Inbound("", bytes(msg.payload), msg.qos, msg.mid, generation, marker=True, session=session))
            return
        device, _channel = device_and_channel(self.settings, msg.topic)
        if device and partition_of(device, self.settings.partitions) != session.partition:
            device = ""  # unmapped on NATS, of another partition's device: only acknowledged
        self.inbox.put(Inbound(device, bytes(msg.payload), msg.qos, msg.mid, generation, session=session))

    # ------------------------------------------------------------------ the lane

    def run_once(self) -> None:
        self.follow_lease()
        batch, self.retry = self.retry, []
        if not batch:
            try:
                batch = [self.inbox.get(timeout=0.5)]
            except queue.Empty:
                self._ack([])  # acknowledgements held back for a confirmation: ask again
                return
        while len(batch) < BATCH:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        batch = [item for item in batch if item.session is None or item.session.lease is not None]  # left: not ours
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
        """The batch's PUBACKs (with any held back before), each session's once its lease is confirmed, in arrival
        order, each on the connection its message came on (one write per connection): a message of a connection
        that is gone is not acknowledged (its packet id means another message, or nothing, on the next one); the
        broker redelivers it and it is evaluated again (at least once, as after any reconnect). Unconfirmed, nothing
        of that session is acknowledged: the PUBACKs wait for a confirmation, or are dropped with the lease."""
        for item in batch:
            if item.qos == 1 and item.session is not None:  # the subscription's QoS: nothing above
                item.session.ack(item.generation, item.mid)
        for session in list(self.sessions.values()):
            if session.has_pending():
                session.flush()

    def _evaluate(self, conn: psycopg.Connection[Any], batch: list[Inbound]) -> None:
        """Evaluate a batch of readings in memory and write what they changed in one transaction."""
        book = self.book
        now = self.clock.now()
        now_ms = int(now.timestamp() * 1000)
        work: list[tuple[Registered, Reading]] = []
        for item in batch:
            if item.marker:
                if item.session is not None and item.session.mqtt.is_current_marker(item.payload):
                    item.session.drained = True
                    self.reports.put(("drained", _tag(item.session)))
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
