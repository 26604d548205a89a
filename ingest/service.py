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
says `waiting_for: database` meanwhile) and acknowledge nothing meanwhile; the broker keeps the rest in the session.

Partitions (CONTRACT §8): the instances share the part's P partitions by lease (gridhub/leases.py `LeaseKeeper`).
For each partition it holds, an instance consumes the one persistent session named by the partition
(`gridhub-ingest-p<k>`), so that an instance taking a partition over resumes exactly the session of the one that
held it. On mosquitto P is 1 and the session has the wildcard subscription (unregistered devices and bad topics
still reach the quarantine). On NATS (`GRIDHUB_BROKER=nats`) the session of partition k subscribes to that
partition's telemetry, events and status (gridhub/services/nats.py `partition_filters`; partition 0 also to the
devices' own unmapped topics, where nats-server 2.9.10 leaves last wills and some QoS 1 publishes), as the hub's subscribe-only user in the DEVICES account, under a client id that carries a tag
derived from the hub's password; a topic received is translated back to the device's own (`contract_topic`) before
validation, so validation and quarantine are as on mosquitto. Fencing: before every acknowledgement batch the
sessions' leases are confirmed with their epochs by the database's clock (one query), and a lost connection is
resumed only under a confirmed lease; a lease lost is left at once (nothing more acknowledged, disconnected, never
reconnected under the client id); a surplus (another instance is below its fair share) is given back: nothing more
taken from it, the batches in hand stored and acknowledged (a bounded wait), disconnected, released. Acknowledgements
are bound to the connection (generation) the message came on. The settings are `IngestSettings` (GRIDHUB_INGEST_*,
gridhub/settings.py).
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
from gridhub.leases import Change, Lease, LeaseKeeper, session_client_id
from gridhub.mqtt import BrokerError, Connack, MqttConnection
from gridhub.mqtt_fastpath import buffer_reads, raw_topic, receive_directly
from gridhub.protocol import Reason
from gridhub.runtime import run_until_signalled
from gridhub.services.nats import (
    contract_topic,
    partition_filters,
    session_client_id_on_nats,
    session_user_url,
    unmapped_filters,
)
from gridhub.settings import IngestSettings, Settings
from gridhub.waiting import STOP_GRACE_S, GaveUp, keep_trying

log = logging.getLogger("gridhub.ingest")

CHANNELS = ("telemetry", "event", "status")
SHARE_GROUP = "ingest"
APPLICATION_NAME = "gridhub-ingest"
LEASE_APPLICATION_NAME = "gridhub-ingest-lease"
PART = "ingest"
GIVE_BACK_S = 5.0  # how long a surplus partition's batches in hand may take to be stored before it is given back
CONNECT_TIMEOUT_S = 10.0
GATHER_S = 0.005  # how long the writer sleeps while a batch fills
TOPIC_CACHE = 100_000  # distinct topics decoded and parsed once each (a few per device)
LOOKUP_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
STORE_ERRORS: tuple[type[Exception], ...] = (*LOOKUP_ERRORS, psycopg.errors.DeadlockDetected,
                                             psycopg.errors.SerializationFailure)

T = TypeVar("T")


class _Session:
    """One partition's persistent session: its connection under its client id, and the lease it runs under (None
    with GRIDHUB_INGEST_SHARED, where the process keeps a session of its own and holds no lease)."""

    def __init__(self, partition: int, client_id: str, lease: Lease | None) -> None:
        self.partition = partition
        self.client_id = client_id
        self.lease = lease
        self.mqtt: MqttConnection | None = None
        self.generation = 0  # the connection the messages now arriving come on
        self.session_present = False
        self.paused = False  # the connection was lost and not resumed: the lease could not be confirmed then
        self.refusing = False  # acknowledgements refused under the current lease (logged once)
        self.closed = False  # left (lease lost, given back, stopping): nothing of it is acknowledged any more
        self.draining = False  # being given back: what arrives now is left to the next holder
        self.connected = threading.Event()
        self.in_hand = 0  # messages received and not yet acknowledged or dropped (for a clean give-back)
        self.direct = False  # messages come through gridhub/mqtt_fastpath.py's direct receive path
        self.lock = threading.Lock()

    def describe(self) -> str:
        lease = self.lease
        return f"partition {self.partition}" + (f" (epoch {lease.epoch})" if lease is not None else "")


class _Inbound(NamedTuple):
    topic: bytes
    payload: bytes
    mid: int
    qos: int
    retain: bool
    received: float
    generation: int
    session: _Session


class IngestService:
    """One ingest consumer; `start()`, then `stop()` drains what was received and disconnects."""

    def __init__(self, settings: Settings, tuning: IngestSettings | None = None) -> None:
        if not settings.database_url or not settings.mqtt_url:
            raise ValueError("ingest needs GRIDHUB_DATABASE_URL and GRIDHUB_MQTT_URL (or run it through gridhub up)")
        self.settings = settings
        self.tuning = tuning or settings.ingest
        self.nats = settings.broker == "nats"
        if self.nats and self.tuning.shared:
            raise ValueError("GRIDHUB_INGEST_SHARED needs shared subscriptions, which NATS's MQTT gateway does not "
                             "have: unset it (ingest holds partitions by lease)")
        if not self.nats and settings.partitions != 1:
            raise ValueError(f"GRIDHUB_PARTITIONS={settings.partitions}: ingest on mosquitto takes one partition (its "
                             "subscription receives every device's messages); set GRIDHUB_PARTITIONS=1, or "
                             "GRIDHUB_BROKER=nats for partitions")
        # the leased partitions (gridhub/leases.py): one session each, named by the partition, whichever instance
        # holds it; with GRIDHUB_INGEST_SHARED=1 (mosquitto) every process keeps a session of its own instead
        self.keeper = None if self.tuning.shared else LeaseKeeper(
            PART, settings.partitions, settings.database_url, settings.instance_id, settings.lease_s,
            on_change=self._on_change, on_failure=self._fail, application_name=LEASE_APPLICATION_NAME,
            every_round=True)
        self.session_url = session_user_url(settings.mqtt_url) if self.nats else settings.mqtt_url
        self.client_id = (settings.client_id("ingest") if self.keeper is None else self._client_id(0))
        self._sessions: dict[int, _Session] = {}  # by partition: the sessions held now
        self._sessions_lock = threading.Lock()  # taking, leaving and giving back sessions against each other
        self._sessions_started = False  # the first round's sessions connect synchronously (a refusal says so)
        self.registry = RegistryCache(settings.database_url)
        self.validator = Validator(settings.topic_prefix, self.registry, settings.readings_days)
        self._queue: queue.SimpleQueue[_Inbound] = queue.SimpleQueue()
        self._topics: dict[bytes, str] = {}
        self.direct_receive = False
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self._preparer: threading.Thread | None = None
        self._prepared: queue.Queue[tuple[list[_Inbound], PreparedBatch] | None] = queue.Queue(maxsize=1)
        self._store_db = LazyConnection(settings.database_url, application_name=APPLICATION_NAME, on_open=prepare)
        self._lookup_db = LazyConnection(settings.database_url, application_name=APPLICATION_NAME)
        self._client: paho.Client | None = None  # the first session's paho client, for the fast path's tests
        self.protocol: int | None = None
        self.shared = False
        self.connected = threading.Event()  # every session held is connected and subscribed
        self.totals = BatchCounts()
        self.batches = 0
        self.failed = threading.Event()

    def _fail(self) -> None:
        self.failed.set()

    def _client_id(self, partition: int) -> str:
        """The client id of a partition's session: named by the partition (on NATS with a tag from the hub's
        password, which no device can guess: gridhub/services/nats.py)."""
        name = session_client_id(PART, partition, self.settings.topic_prefix)
        assert self.settings.mqtt_url
        return session_client_id_on_nats(name, self.settings.mqtt_url) if self.nats else name

    def _filters(self, partition: int) -> list[tuple[str, int]]:
        """Mosquitto: the wildcard subscription (one partition), so that unregistered devices and bad topics reach
        the quarantine. NATS: the partition's telemetry, events and status, and on partition 0 the devices' last
        wills and whatever else nats-server left unmapped (gridhub/services/nats.py `unmapped_filters`)."""
        prefix = self.settings.topic_prefix
        if not self.nats:
            share = f"$share/{SHARE_GROUP}/" if self.shared else ""
            return [(f"{share}{prefix}/devices/+/{ch}", 1) for ch in CHANNELS]
        filters = partition_filters(prefix, partition, CHANNELS)
        if partition == 0:  # what nats-server left unmapped: last wills, and some QoS 1 publishes (2.9.10)
            filters += unmapped_filters(prefix, CHANNELS)
        return [(f, 1) for f in filters]

    # ------------------------------------------------------------------ broker

    def start(self) -> None:
        self.registry.start()
        if self.keeper is None:
            session = _Session(0, self.client_id, None)
            self._sessions[0] = session
            self._connect(session, wait=True)
        else:
            first = self.keeper.start(self._stopping)  # takes the first share: _on_change, here, connects
            if isinstance(first, Change) and not first.held:
                self._stand_by()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()
        self._preparer = threading.Thread(target=self._prepare_loop, name="ingest-preparer", daemon=True)
        self._preparer.start()

    def _connect(self, session: _Session, *, wait: bool) -> None:
        """A session's connection: MQTT 3.1.1 (paho builds MQTT 5 properties for every message it receives), clean
        session off (the broker keeps the session's unacknowledged messages and sends at most its in-flight window
        of them), manual acknowledgement; on mosquitto a plain subscription, or a shared one when asked for
        (GRIDHUB_INGEST_SHARED) and the broker has them. A broker that refuses or does not answer is a
        `gridhub.mqtt.BrokerError` that says what to do (unless not `wait`: then paho connects in the background
        and retries)."""
        assert self.settings.mqtt_url
        if self.keeper is None:
            self.shared = self.tuning.shared and self.tuning.mqtt5 and self._broker_has_shared_subscriptions()

        def on_publish(topic: bytes, payload: bytes, mid: int, qos: int, retain: bool) -> None:
            self._on_publish(session, topic, payload, mid, qos, retain)

        conn = MqttConnection(self.session_url, session.client_id, protocol=paho.MQTTv311, persistent=True,
                              manual_ack=True, keepalive=30, reconnect_delay=(1, 10),
                              subscriptions=self._filters(session.partition),
                              on_connected=lambda connack: self._on_connected(session, connack, on_publish),
                              on_subscribed=lambda: self._on_subscribed(session),
                              on_message=lambda msg: on_publish(raw_topic(msg), bytes(msg.payload), msg.mid, msg.qos,
                                                                bool(msg.retain)),
                              on_disconnected=lambda rc: self._on_disconnected(session, rc))
        session.mqtt = conn
        if self._client is None:
            self._client = conn.client
        # QoS 2, and everything where this paho has no fast path, still comes through on_message
        direct = receive_directly(conn.client, on_publish)
        self.direct_receive = direct if len(self._sessions) <= 1 else self.direct_receive and direct
        session.direct = direct
        self.protocol = paho.MQTTv311
        if wait:
            conn.connect(wait_s=CONNECT_TIMEOUT_S)
        else:
            conn.start()

    # ------------------------------------------------------------------ the leased partitions

    def _stand_by(self) -> None:
        assert self.keeper is not None
        log.info("ingest standby (%s): every partition of %d is held by another instance; taking its share when "
                 "one stops or its lease expires (GRIDHUB_LEASE_S=%g)", self.keeper.holder,
                 self.settings.partitions, self.settings.lease_s)

    def _on_change(self, change: Change) -> None:
        """After every lease round (on the keeper's thread; the first on the starting thread): leave the leases
        lost, give back the surplus, connect under the leases gained, and resume a connection held back while its
        lease could not be confirmed."""
        assert self.keeper is not None
        with self._sessions_lock:
            for p, lease in change.lost.items():
                session = self._sessions.get(p)
                if session is not None and session.lease == lease:
                    self._leave(session, lost=True)
            if self._stopping.is_set():
                return
            for lease in change.gained.values():
                self._take(lease, wait=not self._sessions_started)
            for p in change.surplus:
                session = self._sessions.get(p)
                if session is not None:
                    session.draining = True
                    threading.Thread(target=self._give_back, args=(session,), name=f"ingest-give-back-p{p}",
                                     daemon=True).start()
            for session in self._sessions.values():
                if session.paused and session.lease is not None and change.held.get(session.partition) == \
                        session.lease and session.mqtt is not None and not session.closed:
                    session.paused = False
                    log.info("ingest %s: the lease on %s is confirmed; reconnecting", session.client_id,
                             session.describe())
                    session.mqtt.stop()
                    session.mqtt.start()
            if change.lost and not self._sessions:
                self._stand_by()
            self._sessions_started = True
        self._update_connected()

    def _take(self, lease: Lease, *, wait: bool) -> None:
        """Connect as the partition's session under `lease`."""
        assert self.keeper is not None
        session = _Session(lease.partition, self._client_id(lease.partition), lease)
        self._sessions[lease.partition] = session
        log.info("ingest %s holds %s: connecting as %s", self.keeper.holder, session.describe(),
                 session.client_id)
        self._connect(session, wait=wait)

    def _leave(self, session: _Session, *, lost: bool) -> None:
        """Stop using a session: acknowledge nothing more of it, disconnect, and do not reconnect under its client
        id (a lease lost: the holder has it now, or its lease ran out while this process stalled)."""
        if lost:
            log.warning("ingest %s lost %s: another instance holds it now, or its lease ran out (this process "
                        "stalled, or could not renew it); acknowledging nothing more and leaving the session %s to "
                        "the holder", self.keeper.holder if self.keeper else "", session.describe(),
                        session.client_id)
        session.closed = True
        session.connected.clear()
        self._sessions.pop(session.partition, None)
        if session.mqtt is not None:
            session.mqtt.stop()

    def _give_back(self, session: _Session) -> None:
        """A surplus partition: take nothing more from it, let the batches in hand be stored and acknowledged (a
        bounded wait), disconnect, and give the lease back: another instance takes it at its next round."""
        assert self.keeper is not None
        deadline = time.monotonic() + min(GIVE_BACK_S, self.keeper.leases.renew_every_s)
        while session.in_hand > 0 and time.monotonic() < deadline and not self._stopping.is_set():
            time.sleep(0.02)
        with self._sessions_lock:
            if self._sessions.get(session.partition) is not session:
                return  # lost meanwhile
            log.info("ingest %s gives back %s (a fair share: another instance is below its own)", self.keeper.holder,
                     session.describe())
            self._leave(session, lost=False)
        self.keeper.give_back([session.partition])
        self._update_connected()

    def _update_connected(self) -> None:
        sessions = list(self._sessions.values())  # no lock: paho's threads call this, and _leave joins them
        if sessions and all(s.connected.is_set() for s in sessions):
            self.connected.set()
        else:
            self.connected.clear()

    def _confirmed(self, sessions: list[_Session]) -> set[int]:
        """The partitions among these sessions whose lease is still ours with its epoch (before acknowledging);
        every one without a keeper."""
        if self.keeper is None:
            return {s.partition for s in sessions}
        leases = [s.lease for s in sessions if s.lease is not None and not s.closed]
        return set(self.keeper.confirm_all(leases)) if leases else set()

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

    def _on_connected(self, session: _Session, connack: Connack, on_publish: Callable[..., None]) -> None:
        """Every (re)connection, on paho's thread, before the connection subscribes again."""
        assert session.mqtt is not None
        session.generation = session.mqtt.generation
        session.session_present = connack.session_present
        buffer_reads(session.mqtt.client, self.tuning.read_gather_s, on_publish if session.direct else None)

    def _on_subscribed(self, session: _Session) -> None:
        log.info("ingest %s connected (MQTT 3.1.1, %s subscription, session %s, %s, broker %s)", session.client_id,
                 "shared" if self.shared else "plain", "resumed" if session.session_present else "new",
                 session.describe(), session.mqtt.where if session.mqtt else "?")
        session.connected.set()
        self._update_connected()

    def _on_disconnected(self, session: _Session, rc: Any) -> None:
        """On paho's thread, before paho reconnects: under a lease that cannot be confirmed, no reconnect (the
        lease keeper resumes the connection if the lease is still ours, or leaves it to the new holder)."""
        was_connected = session.connected.is_set()
        session.connected.clear()
        self.connected.clear()
        mqtt = session.mqtt
        if self._stopping.is_set() or mqtt is None or mqtt.stopping or session.closed:
            return
        if self.keeper is not None and not self.keeper.confirm(session.lease):
            session.paused = True
            mqtt.hold()  # no reconnect under the client id until the lease is confirmed (or left to its holder)
            log.warning("broker connection lost (%s); not reconnecting as %s until the lease on %s is confirmed",
                        rc, session.client_id, session.describe())
            self.keeper.wake()
            return
        if was_connected:
            log.warning("broker connection lost (%s); %s reconnecting, unacknowledged messages stay in the session",
                        rc, session.client_id)

    def _on_publish(self, session: _Session, topic: bytes, payload: bytes, mid: int, qos: int, retain: bool) -> None:
        if self._stopping.is_set() or session.closed or session.draining:
            return  # left unacknowledged: the broker redelivers it to the session
        with session.lock:
            session.in_hand += 1
        self._queue.put(_Inbound(topic, payload, mid, qos, retain, time.time(), session.generation, session))

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
            topic = raw.decode("utf-8", "replace")
            if self.nats:  # the partition's subject back to the device's own topic (CONTRACT §1)
                topic = contract_topic(self.settings.topic_prefix, topic)
            self._topics[raw] = topic
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
        """The batch's PUBACKs (in arrival order), one write per session, each on the connection its message came
        on, and only under a lease confirmed (with its epoch) right now: a message of a connection that is gone is
        not acknowledged (its packet id means something else, or nothing, on the next one), nor one of a session
        left or whose lease is not confirmed; the broker redelivers those to the partition's session and the store
        drops the duplicate."""
        by_session: dict[int, tuple[_Session, dict[int, list[int]]]] = {}
        counts: dict[int, int] = {}
        for i in batch:
            key = id(i.session)
            entry = by_session.setdefault(key, (i.session, {}))
            counts[key] = counts.get(key, 0) + 1
            if i.qos == 1:
                entry[1].setdefault(i.generation, []).append(i.mid)
        sessions = [s for s, _ in by_session.values() if not s.closed]
        confirmed = self._confirmed(sessions) if sessions else set()
        for key, (session, by_generation) in by_session.items():
            if not session.closed:
                if session.partition not in confirmed:
                    if not session.refusing:
                        log.warning("ingest %s: not acknowledging %d messages, the lease on %s is not confirmed (the "
                                    "broker redelivers them to the partition's holder)", session.client_id,
                                    counts[key], session.describe())
                    session.refusing = True
                    if self.keeper is not None:
                        self.keeper.wake()
                elif session.mqtt is not None:
                    session.refusing = False
                    for generation, mids in by_generation.items():
                        session.mqtt.ack_many(mids, generation)
            with session.lock:
                session.in_hand -= counts[key]

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 30.0, *, end_session: bool = False) -> None:
        """Store and acknowledge what was received, disconnect, and release the leases (another instance takes the
        partitions over at its next round); each session keeps the rest for the next holder (or, with
        GRIDHUB_INGEST_SHARED, for the next start with the same instance id). `end_session` ends the sessions
        instead, dropping what the broker still holds for them: for tests, and for an instance removed for good
        while others share the load."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._preparer:
            self._preparer.join(timeout)
        if self._writer:
            self._writer.join(max(0.1, deadline - time.monotonic()))
        if self.keeper is not None:
            self.keeper.stop()  # no more rounds: the leases stay ours until released below
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            if session.mqtt is None:
                continue
            try:  # a session is ended only by its holder
                session.mqtt.stop(end_session=end_session and not session.closed)
            except BrokerError as exc:  # ending the session needs one more connection
                log.warning("ingest %s disconnected, but its session could not be ended: %s", session.client_id, exc)
        if self.keeper is not None:
            self.keeper.release()
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
