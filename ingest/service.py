"""The ingest consumer: device telemetry, events and status from the broker into the database, in batches,
each message acknowledged only after its batch is committed (stored or quarantined).

A connection (gridhub/mqtt.py's MqttConnection, MQTT 3.1.1) with manual acknowledgement on a persistent session
(clean session off) with a stable client id receives on paho's network thread into a queue, through the fast
receive path of gridhub/mqtt_fastpath.py; a preparer thread takes a batch (up to `batch_max` messages or
`linger_s` after the first), classifies it and prepares its rows while the writer thread commits the batch
before; then the writer commits it and acknowledges its messages in arrival order. The broker's in-flight window
bounds the unacknowledged messages, so a batch is at most half the window: the next half arrives while one is
committed. A database outage stalls the writer (and the preparer's device look-ups), which wait and retry
(`_with_retries`: `gridhub.waiting.keep_trying`, the hub's one way of waiting for the database; the part's health
says `waiting_for: database` meanwhile) and acknowledge nothing meanwhile; the broker keeps the rest in the session. Several instances take turns by lease
(ingest/slot.py): the holder of partition 0 consumes the session named by the partition, `gridhub-ingest-p0`, and
confirms its lease (with its epoch, by the database's clock) before every acknowledgement batch and before paho may
reconnect; the others stand by and take the partition, and its session, over from a holder that stops or dies. The settings are `IngestSettings` (GRIDHUB_INGEST_*, gridhub/settings.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar

import paho.mqtt.client as paho
import psycopg

from gridhub.db import LazyConnection
from gridhub.ingest.registry_cache import RegistryCache
from gridhub.ingest.slot import PARTITION, SlotKeeper, describe
from gridhub.ingest.store import (
    BatchCounts,
    Item,
    PreparedBatch,
    prepare,
    prepare_batch,
    reject_unstorable,
    write_batch,
    write_prepared,
)
from gridhub.ingest.validate import Rejected, Validator, quarantine_payload
from gridhub.leases import Lease, session_client_id
from gridhub.mqtt import BrokerError, Connack, MqttConnection
from gridhub.mqtt_fastpath import buffer_reads, raw_topic, receive_directly
from gridhub.protocol import Reason
from gridhub.runtime import run_until_signalled
from gridhub.settings import IngestSettings, Settings
from gridhub.waiting import STOP_GRACE_S, GaveUp, keep_trying

log = logging.getLogger("gridhub.ingest")

CHANNELS = ("telemetry", "event", "status")
SHARE_GROUP = "ingest"
APPLICATION_NAME = "gridhub-ingest"
CONNECT_TIMEOUT_S = 10.0
GATHER_S = 0.005  # how long the writer sleeps while a batch fills
TOPIC_CACHE = 100_000  # distinct topics decoded and parsed once each (a few per device)
LOOKUP_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
STORE_ERRORS: tuple[type[Exception], ...] = (*LOOKUP_ERRORS, psycopg.errors.DeadlockDetected,
                                             psycopg.errors.SerializationFailure)

T = TypeVar("T")


class _Inbound(NamedTuple):
    topic: bytes
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received: float
    generation: int


class IngestService:
    """One ingest consumer; `start()`, then `stop()` drains what was received and disconnects."""

    def __init__(self, settings: Settings, tuning: IngestSettings | None = None) -> None:
        if not settings.database_url or not settings.mqtt_url:
            raise ValueError("ingest needs GRIDHUB_DATABASE_URL and GRIDHUB_MQTT_URL (or run it through gridhub up)")
        self.settings = settings
        self.tuning = tuning or settings.ingest
        # the leased slot (ingest/slot.py): one session named by the partition, whichever instance holds it; with
        # GRIDHUB_INGEST_SHARED=1 every process keeps a session of its own instead
        self.slot = None if self.tuning.shared else SlotKeeper(settings, self._reconcile, self._fail)
        self.client_id = (settings.client_id("ingest") if self.slot is None
                          else session_client_id("ingest", PARTITION, settings.topic_prefix))
        self._lease: Lease | None = None  # the lease the connection runs under (leased slot)
        self._slot_lock = threading.Lock()  # taking and leaving the slot against each other
        self._paused = False  # the connection was lost and not resumed: the lease could not be confirmed then
        self._refusing = False  # acknowledgements refused under the current lease (logged once)
        self.registry = RegistryCache(settings.database_url)
        self.validator = Validator(settings.topic_prefix, self.registry, settings.readings_days)
        self._queue: queue.SimpleQueue[_Inbound] = queue.SimpleQueue()
        self._topics: dict[bytes, str] = {}
        self.direct_receive = False
        self._generation = 0
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self._preparer: threading.Thread | None = None
        self._prepared: queue.Queue[tuple[list[_Inbound], PreparedBatch] | None] = queue.Queue(maxsize=1)
        self._store_db = LazyConnection(settings.database_url, application_name=APPLICATION_NAME, on_open=prepare)
        self._lookup_db = LazyConnection(settings.database_url, application_name=APPLICATION_NAME)
        self._mqtt: MqttConnection | None = None
        self._client: paho.Client | None = None  # the connection's paho client, for the fast path and the acks
        self._session_present = False
        self.protocol: int | None = None
        self.shared = False
        self.connected = threading.Event()
        self.totals = BatchCounts()
        self.batches = 0
        self.failed = threading.Event()

    def _fail(self) -> None:
        self.failed.set()

    # ------------------------------------------------------------------ broker

    def start(self) -> None:
        self.registry.start()
        if self.slot is None:
            self._mqtt = self._connect()
        else:
            lease = self.slot.first_round(self._stopping)
            if isinstance(lease, Lease):
                with self._slot_lock:
                    self._take(lease, wait=True)
            else:
                self._stand_by()
            self.slot.start()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._preparer = threading.Thread(target=self._prepare_loop, name="ingest-preparer", daemon=True)
        self._preparer.start()

    def _connect(self, *, wait: bool = True) -> MqttConnection:
        """The consumer's own connection: MQTT 3.1.1 (paho builds MQTT 5 properties for every message it
        receives), with a plain subscription, or a shared one when asked for (GRIDHUB_INGEST_SHARED) and the broker
        has them (mosquitto takes $share from 3.1.1 clients, but forgets them when it restarts); clean session off, so the broker keeps the session's unacknowledged messages (for as long as
        its `persistent_client_expiration` says) and sends at most its `max_inflight_messages` of them. A broker
        that refuses or does not answer is a `gridhub.mqtt.BrokerError` that says what to do (unless not `wait`:
        then paho connects in the background and retries)."""
        assert self.settings.mqtt_url
        self.shared = self.tuning.shared and self.tuning.mqtt5 and self._broker_has_shared_subscriptions()
        share = f"$share/{SHARE_GROUP}/" if self.shared else ""
        prefix = self.settings.topic_prefix
        conn = MqttConnection(self.settings.mqtt_url, self.client_id, protocol=paho.MQTTv311, persistent=True,
                              manual_ack=True, keepalive=30, reconnect_delay=(1, 10),
                              subscriptions=[(f"{share}{prefix}/devices/+/{ch}", 1) for ch in CHANNELS],
                              on_connected=self._on_connected, on_subscribed=self._on_subscribed,
                              on_message=self._on_message, on_disconnected=self._on_disconnected)
        self._mqtt, self._client = conn, conn.client
        # QoS 2, and everything where this paho has no fast path, still comes through on_message
        self.direct_receive = receive_directly(conn.client, self._on_publish)
        self.protocol = paho.MQTTv311
        if wait:
            conn.connect(wait_s=CONNECT_TIMEOUT_S)
        else:
            conn.start()
        return conn

    # ------------------------------------------------------------------ the leased slot

    def _stand_by(self) -> None:
        assert self.slot is not None
        log.info("ingest standby (%s): partition %d is held by another instance; taking it over if that one stops "
                 "or its lease expires (GRIDHUB_LEASE_S=%g)", self.slot.holder, PARTITION, self.settings.lease_s)

    def _reconcile(self, lease: Lease | None) -> None:
        """After every lease round, on the lease keeper's thread: leave a lease lost (or replaced by a new epoch),
        connect under one gained, and resume a connection held back while the lease could not be confirmed."""
        with self._slot_lock:
            current = self._lease
            if current is not None and (lease is None or lease.epoch != current.epoch):
                self._leave(current)
                if lease is None:
                    self._stand_by()
            if lease is None or self._stopping.is_set():
                return
            if self._lease is None:
                self._take(lease, wait=False)
            elif self._paused and self._mqtt is not None:
                self._paused = False
                log.info("ingest %s: the lease on %s is confirmed; reconnecting", self.client_id, describe(lease))
                self._mqtt.stop()
                self._mqtt.start()

    def _take(self, lease: Lease, *, wait: bool) -> None:
        """Connect as the partition's session under `lease` (synchronously at start, so that a broker that refuses
        us says so; in the background on a takeover)."""
        self._lease, self._paused, self._refusing = lease, False, False
        log.info("ingest %s holds %s: connecting as %s", self.slot.holder if self.slot else "", describe(lease),
                 self.client_id)
        if self._mqtt is None:
            self._mqtt = self._connect(wait=wait)
        elif wait:
            self._mqtt.connect(wait_s=CONNECT_TIMEOUT_S)
        else:
            self._mqtt.start()

    def _leave(self, lease: Lease) -> None:
        """A lease lost (another instance took the partition, or it expired while this process stalled): acknowledge
        nothing more, disconnect, and do not reconnect under the partition's client id (the holder has it)."""
        log.warning("ingest %s lost %s: another instance holds it now, or its lease ran out (this process stalled, "
                    "or could not renew it); acknowledging nothing more and leaving the session %s to the holder",
                    self.slot.holder if self.slot else "", describe(lease), self.client_id)
        self._lease, self._paused = None, False
        self.connected.clear()
        if self._mqtt is not None:
            self._mqtt.stop()
        while True:  # what came on that connection is the holder's now (the broker redelivers it there)
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    def _lease_confirmed(self) -> bool:
        """Whether the connection's lease is still ours with its epoch (before acknowledging, before reconnecting);
        True without a slot."""
        if self.slot is None:
            return True
        lease = self._lease
        return lease is not None and self.slot.confirm(lease)

    def _broker_has_shared_subscriptions(self) -> bool:
        """Ask the broker with a throwaway MQTT 5 connection: one that speaks MQTT 5 says whether it has shared
        subscriptions (CONNACK, default yes); one that does not (amqtt) gets plain subscriptions."""
        assert self.settings.mqtt_url
        probe = MqttConnection(self.settings.mqtt_url, f"{self.client_id}-probe"[:128], protocol=paho.MQTTv5,
                               keepalive=10)
        try:
            connack = probe.connect(wait_s=CONNECT_TIMEOUT_S)
        except BrokerError:  # the consumer's own connection says what is wrong, if anything
            return False
        probe.stop()
        return connack is not None and getattr(connack.properties, "SharedSubscriptionAvailable", 1) != 0

    def _on_connected(self, connack: Connack) -> None:
        """Every (re)connection, on paho's thread, before the connection subscribes again."""
        assert self._mqtt is not None
        self._generation = self._mqtt.generation
        self._session_present = connack.session_present
        buffer_reads(self._mqtt.client, self.tuning.read_gather_s, self._on_publish if self.direct_receive else None)

    def _on_subscribed(self) -> None:
        lease = self._lease
        log.info("ingest %s connected (MQTT 3.1.1, %s subscription, session %s%s)", self.client_id,
                 "shared" if self.shared else "plain", "resumed" if self._session_present else "new",
                 f", {describe(lease)}" if lease is not None else "")
        self.connected.set()

    def _on_disconnected(self, rc: Any) -> None:
        """On paho's thread, before paho reconnects: under a lease that cannot be confirmed, no reconnect (the
        lease keeper resumes the connection if the lease is still ours, or leaves it to the new holder)."""
        was_connected = self.connected.is_set()
        self.connected.clear()
        mqtt = self._mqtt
        if self._stopping.is_set() or mqtt is None or mqtt.stopping:
            return
        if self.slot is not None and not self._lease_confirmed():
            self._paused = True
            mqtt.client.disconnect()  # paho does not reconnect after this callback
            log.warning("broker connection lost (%s); not reconnecting as %s until the lease on partition %d is "
                        "confirmed", rc, self.client_id, PARTITION)
            self.slot.wake()
            return
        if was_connected:
            log.warning("broker connection lost (%s); reconnecting, unacknowledged messages stay in the session", rc)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        self._on_publish(raw_topic(msg), bytes(msg.payload), msg.mid, msg.qos, bool(msg.retain))

    def _on_publish(self, topic: bytes, payload: bytes, mid: int, qos: int, retain: bool) -> None:
        if self._stopping.is_set():
            return  # left unacknowledged: the broker redelivers it to the session
        self._queue.put(_Inbound(topic, payload, mid, qos, retain, time.time(), self._generation))

    # ------------------------------------------------------------------ writer

    def _next_batch(self) -> list[_Inbound]:
        q = self._queue
        try:
            first = q.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.tuning.linger_s
        limit = self.tuning.batch_max
        while len(batch) < limit:
            try:
                batch.append(q.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # let messages gather for a moment rather than wake up (and take the GIL) for each one
            time.sleep(min(remaining, GATHER_S))
        return batch

    def _prepare_loop(self) -> None:
        """Batches from the receive queue, classified and prepared for the database while the writer commits the
        one before (the broker's window holds two batches: one being committed, one being received)."""
        try:
            while True:
                batch = self._next_batch()
                if not batch:
                    if self._stopping.is_set():
                        self._hand_over(None)
                        return
                    continue
                prepared = self._prepare(batch)
                if prepared is None or not self._hand_over((batch, prepared)):
                    self._hand_over(None)
                    return
        except Exception:  # a bug: stop acknowledging, let the supervisor restart us; nothing is lost
            log.exception("ingest preparer failed; no further messages are acknowledged")
            self.failed.set()
            self._hand_over(None)

    def _hand_over(self, entry: tuple[list[_Inbound], PreparedBatch] | None) -> bool:
        """Put a prepared batch (or the end, None) for the writer; False when the writer is gone."""
        while True:
            try:
                self._prepared.put(entry, timeout=0.2)
                return True
            except queue.Full:
                writer = self._writer
                if self.failed.is_set() or (writer is not None and not writer.is_alive()):
                    return False

    def _write_loop(self) -> None:
        try:
            while True:
                entry = self._prepared.get()
                if entry is None:
                    return
                batch, prepared = entry
                if not self._commit(batch, prepared):
                    return
                self._ack(batch)
        except Exception:  # a bug: stop acknowledging, let the supervisor restart us; nothing is lost
            log.exception("ingest writer failed; no further messages are acknowledged")
            self.failed.set()

    def _topic(self, raw: bytes) -> str:
        """The topic as text, decoded once per distinct topic."""
        topic = self._topics.get(raw)
        if topic is None:
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            topic = self._topics[raw] = raw.decode("utf-8", "replace")
        return topic

    def _classify(self, batch: list[_Inbound], topics: list[str]) -> list[Item]:
        now_ms = int(time.time() * 1000)
        items: list[Item] = []
        classify = self.validator.classify
        for inbound, topic in zip(batch, topics, strict=True):
            payload = inbound.payload
            try:
                outcome = classify(topic, payload, retained=inbound.retain, now_ms=now_ms)
            except Exception as exc:  # noqa: BLE001 - a message must never stop the consumer
                log.exception("validator failed on %s", topic)
                text, enc, trunc = quarantine_payload(payload)
                outcome = Rejected(topic, self.validator.device_id_of(topic), Reason.SCHEMA,
                                   f"the hub could not check this message ({exc!r}): report it with this entry",
                                   text, enc, trunc)
            items.append(Item(outcome, inbound.received, topic, payload))
        return items

    def _with_retries(self, db: LazyConnection, attempt: Callable[[psycopg.Connection[Any]], T],
                      errors: tuple[type[Exception], ...], *, doing: str, left: str) -> T | Literal[GaveUp.STOPPING]:
        """`attempt` on the connection until it succeeds, through database outages (`gridhub.waiting.keep_trying`:
        once more at once, then capped jittered backoff, a new connection when this one broke, one log line when
        ingest starts waiting and one when it is back, its health 503 `waiting_for: database` meanwhile),
        acknowledging nothing meanwhile. Once the consumer is stopping it gives up after waiting.STOP_GRACE_S,
        leaving `left` to the broker, which redelivers what is unacknowledged."""
        result = keep_trying(lambda: attempt(db.get()), waiter=f"ingest-{doing}", stopping=self._stopping,
                             on_error=db.forget_if_broken, errors=errors, grace_s=STOP_GRACE_S, url=db.url)
        if result is GaveUp.STOPPING:
            log.error("stopping with %s: the broker redelivers it", left)
        return result

    def _prepare(self, batch: list[_Inbound]) -> PreparedBatch | None:
        """Classify a batch (looking up devices the registry cache has not seen, through database outages) and
        prepare it for storing; None when stopping before that could be done."""
        decode = self._topic
        topics = [decode(i.topic) for i in batch]
        device_id_of = self.validator.device_id_of
        registry = self.registry
        missing = {d for d in map(device_id_of, topics) if d and d not in registry}
        if missing:

            def look_up(conn: psycopg.Connection[Any]) -> None:
                with conn.transaction():
                    registry.add_missing(conn, missing)

            if self._with_retries(self._lookup_db, look_up, LOOKUP_ERRORS, doing="look up devices",
                                  left=f"a batch of {len(batch)} unclassified and unacknowledged") is GaveUp.STOPPING:
                return None
        return prepare_batch(self._classify(batch, topics))

    def _commit(self, batch: list[_Inbound], prepared: PreparedBatch) -> bool:
        """Store the batch, retrying through database outages; False when stopping before it could be stored."""

        def store(conn: psycopg.Connection[Any]) -> BatchCounts:
            gauges = {"gridhub_ingest_lag_seconds": max(0.0, time.time() - batch[0].received),
                      "gridhub_ingest_queue_messages": float(self._queue.qsize())}
            try:
                return write_prepared(conn, prepared, instance=self.settings.instance_id, gauges=gauges)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                if conn.closed or conn.broken:
                    raise
                log.warning("a batch of %d was refused by the database (%s); storing one by one", len(batch), exc)
                return self._write_one_by_one(conn, list(prepared.items))

        counts = self._with_retries(self._store_db, store, STORE_ERRORS, doing=f"store a batch of {len(batch)}",
                                    left=f"a batch of {len(batch)} unstored and unacknowledged")
        if counts is GaveUp.STOPPING:
            return False
        self._account(counts)
        return True

    def _write_one_by_one(self, conn: psycopg.Connection[Any], items: list[Item]) -> BatchCounts:
        total = BatchCounts()
        for item in items:
            try:
                counts = write_batch(conn, [item], instance=self.settings.instance_id)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                if conn.closed or conn.broken:
                    raise
                counts = write_batch(conn, [reject_unstorable(item, exc)], instance=self.settings.instance_id)
            _add(total, counts)
        return total

    def _account(self, counts: BatchCounts) -> None:
        _add(self.totals, counts)
        self.batches += 1

    def _ack(self, batch: list[_Inbound]) -> None:
        """The batch's PUBACKs (in arrival order) as one write, each on the connection its message came on: a
        message of a connection that is gone is not acknowledged (its packet id means something else, or nothing,
        on the next one); the broker redelivers it to the session and the store drops the duplicate."""
        mqtt = self._mqtt
        assert mqtt is not None
        if not self._lease_confirmed():
            if not self._refusing:
                log.warning("ingest %s: not acknowledging a batch of %d, the lease on partition %d is not confirmed "
                            "(the broker redelivers it to the partition's holder)", self.client_id, len(batch),
                            PARTITION)
            self._refusing = True
            if self.slot is not None:
                self.slot.wake()
            return
        by_generation: dict[int, list[int]] = {}
        for i in batch:
            if i.qos == 1:
                by_generation.setdefault(i.generation, []).append(i.mid)
        for generation, mids in by_generation.items():
            mqtt.ack_many(mids, generation)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 30.0, *, end_session: bool = False) -> None:
        """Store and acknowledge what was received, disconnect, and release the slot's lease (a standby takes the
        partition over at its next round); the session keeps the rest for the next holder (or, with
        GRIDHUB_INGEST_SHARED, for the next start with the same instance id). `end_session` (MQTT 5) ends the session instead, dropping what the
        broker still holds for it: for tests, and for an instance removed for good while others share the load."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._preparer:
            self._preparer.join(timeout)
        if self._writer:
            self._writer.join(max(0.1, deadline - time.monotonic()))
        if self.slot is not None:
            self.slot.stop()  # no more rounds: the lease stays ours until released below
        with self._slot_lock:
            holding = self.slot is None or self._lease is not None
        if self._mqtt:
            try:  # a session is ended only by its holder: another instance may hold the partition's now
                self._mqtt.stop(end_session=end_session and holding)
            except BrokerError as exc:  # ending the session needs one more connection
                log.warning("ingest %s disconnected, but its session could not be ended: %s", self.client_id, exc)
        if self.slot is not None:
            self.slot.release()
        self.registry.stop()
        self._store_db.close()
        self._lookup_db.close()
        log.info("ingest stopped: %d messages in %d batches (%d readings, %d events stored, %d duplicates, "
                 "quarantined %s)", self.totals.messages, self.batches, self.totals.readings, self.totals.events,
                 self.totals.duplicates, self.totals.quarantined or "none")


def _add(total: BatchCounts, counts: BatchCounts) -> None:
    total.messages += counts.messages
    total.readings += counts.readings
    total.events += counts.events
    total.duplicates += counts.duplicates
    total.seq_gaps += counts.seq_gaps
    total.unknown_metrics += counts.unknown_metrics
    for k, v in counts.quarantined.items():
        total.quarantined[k] = total.quarantined.get(k, 0) + v


def run(settings: Settings) -> None:
    """Run ingest until SIGTERM or SIGINT, then drain and exit."""
    service = IngestService(settings)
    seen = 0

    def report(elapsed: float) -> None:
        nonlocal seen
        n = service.totals.messages
        log.info("ingest: %d messages (%.0f/s), %d readings, %d events, quarantined %s", n, (n - seen) / elapsed,
                 service.totals.readings, service.totals.events, service.totals.quarantined or "none")
        seen = n

    run_until_signalled(service, "ingest", report=report, report_every_s=30, log=log)
