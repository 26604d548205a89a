"""The alerts part's partitions (gridhub/leases.py, CONTRACT §8): which partition a device is on, the persistent
sessions a partition is (one per lane, named by the partition and never by the process), and where those sessions
subscribe on each broker. The leases themselves are kept by `gridhub.leases.LeaseKeeper`.

Invariant: only the holder of a partition's unexpired lease, with the epoch it took it under, acknowledges a
message of that partition's sessions or connects under their client ids: a session asks `confirm(lease)` (the
database, one query) before every batch of acknowledgements and before paho may reconnect; no answer is a no. A `PartitionSession` is one lane's session of one held partition: created when the
partition is gained, left (never to connect again) when it is lost or given back.

On mosquitto there is one partition and its sessions subscribe to every device's topics. On NATS
(`GRIDHUB_BROKER=nats`) partition k's sessions subscribe to `<prefix>/part/k/devices/+/<kind>` (NATS's own
`partition(P, 1)` mapping put each device there) and also to the devices' own topics of the same kinds, where
nats-server 2.9.10 publishes a last will, and stores some QoS 1 publishes, unmapped (a session keeps only its own
partition's devices of those, and acknowledges the others); they log
in as the hub's subscribe-only user of the DEVICES account (`status_reader`), whose `$MQTT_msgs` stream is the one a
device's PUBACK waited for (docs/scaling.md), under client ids with a tag no device can guess. That user may publish
nothing, so no backlog marker is published there: a NATS session counts as drained once it has been subscribed and
quiet for `QUIET_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from gridhub.leases import Lease, LeaseKeeper, session_client_id
from gridhub.mqtt import Connack, MqttConnection
from gridhub.services.nats import (
    contract_topic,
    device_partition,
    partition_filters,
    session_client_id_on_nats,
    session_user_url,
    unmapped_filters,
)
from gridhub.settings import Settings

__all__ = ["PART", "QUIET_S", "Confirm", "PartitionSession", "describe", "device_and_channel", "lane_confirmer",
           "marker_topic", "partition_of", "session_id", "session_name", "session_subscriptions", "session_url"]

PART = "alerts"
LANES = ("events", "telemetry")
QUIET_S = 1.0  # NATS: a session subscribed and quiet this long has handed over its backlog (no marker there)


def partition_of(device_id: str, partitions: int) -> int:
    """The partition of a device: NATS's own `partition(P, 1)` of its id (gridhub/services/nats.py); 0 with one."""
    return 0 if partitions == 1 else device_partition(device_id, partitions)


def session_id(partition: int, lane: str, topic_prefix: str) -> str:
    """The client id of one lane's persistent session of a partition: `gridhub-alerts-p0-events`,
    `gridhub-alerts-p3-telemetry` (a hub on another topic prefix has it in the name, before the lane)."""
    assert lane in LANES
    return f"{session_client_id(PART, partition, topic_prefix)}-{lane}"[:128]


def marker_topic(prefix: str, client_id: str) -> str:
    """Published by a session's holder to the session itself after subscribing: it arrives after the backlog the
    broker had queued for the session (gridhub/mqtt.py's backlog marker). Mosquitto only."""
    return f"{prefix}/hub/{client_id}/drained"


def session_subscriptions(settings: Settings, partition: int, lane: str) -> list[tuple[str, int]]:
    """What one lane's session of a partition subscribes to (QoS 1). On NATS: its partition's subjects, and the
    devices' own unmapped topics of the same kinds (`unmapped_filters`: nats-server 2.9.10 publishes last wills there
    and stores some QoS 1 publishes there, PUBACKed all the same), of which the session keeps its own partition's
    devices only (the holder of a device's partition alone has its rule state; the others are only acknowledged)."""
    p = settings.topic_prefix
    kinds = ("event", "status") if lane == "events" else ("telemetry",)
    if settings.broker != "nats":
        return [(f"{p}/devices/+/{kind}", 1) for kind in kinds]
    return [(f, 1) for f in partition_filters(p, partition, kinds) + unmapped_filters(p, kinds)]


def session_url(settings: Settings) -> str:
    """The URL the partition sessions log in with: GRIDHUB_MQTT_URL on mosquitto; on NATS the hub's subscribe-only
    user in DEVICES (`gridhub.services.nats.session_user_url`)."""
    url = settings.mqtt_url or ""
    return session_user_url(url) if settings.broker == "nats" else url


def session_name(settings: Settings, partition: int, lane: str) -> str:
    """A session's client id: `session_id`, on NATS with the tag no device can guess
    (`gridhub.services.nats.session_client_id_on_nats`)."""
    name = session_id(partition, lane, settings.topic_prefix)
    return session_client_id_on_nats(name, settings.mqtt_url or "") if settings.broker == "nats" else name


def device_and_channel(settings: Settings, topic: str) -> tuple[str, str]:
    """(device id, kind) of a device topic as received (a partitioned one on NATS); ('', '') for anything else."""
    topic = contract_topic(settings.topic_prefix, topic) if settings.broker == "nats" else topic
    head = f"{settings.topic_prefix}/devices/"
    if not topic.startswith(head):
        return "", ""
    device, _, channel = topic[len(head):].partition("/")
    return device, channel


def describe(lease: Lease) -> str:
    return f"partition {lease.partition} (epoch {lease.epoch})"


Confirm = Callable[[Lease | None], bool]
"""Whether a lease is still this process's, with its epoch, unexpired by the database's clock (`LeaseKeeper.confirm`);
a database that does not answer is a no."""


def lane_confirmer(settings: Settings, application_name: str) -> LeaseKeeper:
    """For a process that works under leases another process keeps (the telemetry lane): a `LeaseKeeper` that is
    never started, used only for `confirm(lease)` on a connection of its own (a lease names its holder and epoch)."""
    assert settings.database_url
    return LeaseKeeper(PART, settings.partitions, settings.database_url, settings.instance_id, settings.lease_s,
                       on_change=lambda _change: None, application_name=application_name)


class PartitionSession:
    """One lane's persistent session of one held partition, under the lease it was taken with.

    The owner feeds it nothing; paho's thread calls `on_message(session, msg)` (the owner queues the message with
    `session` and `mqtt.generation`), and the owner calls `ack(generation, mid)` for each QoS 1 message once its work
    has committed, then `flush()`: the acknowledgements go out only after the fence has confirmed the lease, each on
    the connection its message came on (a message of a connection that is gone is not acknowledged: the broker
    redelivers it). Unconfirmed, they wait for a confirmation. A lost connection is resumed only under a confirmed
    lease (else the session pauses until the owner's next lease round calls `resume()`). `leave()` ends it for good:
    nothing more is acknowledged and its client id is never used again by this object.
    """

    def __init__(self, settings: Settings, lane: str, lease: Lease, confirm: Confirm, log: logging.Logger, *,
                 on_message: Callable[[PartitionSession, paho.MQTTMessage], None],
                 on_connected: Callable[[PartitionSession], None] | None = None,
                 on_subscribed: Callable[[PartitionSession], None] | None = None,
                 on_paused: Callable[[], None] | None = None, tcp_nodelay: bool = False) -> None:
        self.lane = lane
        self.partition = lease.partition
        self.lease: Lease | None = lease
        self.confirm = confirm
        self.log = log
        self.client_id = session_name(settings, lease.partition, lane)
        self.marker_topic = None if settings.broker == "nats" else marker_topic(settings.topic_prefix, self.client_id)
        self.paused = False  # the connection was lost and not resumed: the lease could not be confirmed then
        self.refusing = False  # acknowledgements held back under this lease (logged once)
        self.session_present = False
        self.subscribed = False
        self.drained = False  # the backlog of the current connection is processed
        self.quiet_since = 0.0  # monotonic: subscribed, or the last message (NATS drain by quiet)
        self.started = False
        self._pending: list[tuple[int, int]] = []  # (generation, mid) processed, waiting for the lease's confirmation
        self._lock = threading.Lock()
        self._on_message, self._on_connected_cb, self._on_subscribed_cb = on_message, on_connected, on_subscribed
        self._on_paused = on_paused
        self.mqtt = MqttConnection(
            session_url(settings), self.client_id, protocol=paho.MQTTv311, persistent=True, manual_ack=True,
            keepalive=30, reconnect_delay=(1, 5), max_inflight=100, tcp_nodelay=tcp_nodelay,
            subscriptions=session_subscriptions(settings, lease.partition, lane), marker_topic=self.marker_topic,
            on_connected=self._connected, on_subscribed=self._subscribed, on_message=self._message,
            on_disconnected=self._disconnected, on_refused=self._refused)

    @property
    def epoch(self) -> int | None:
        lease = self.lease
        return None if lease is None else lease.epoch

    def start(self) -> None:
        if self.lease is None or self.started:
            return
        self.started = True
        self.mqtt.start()

    def is_marker(self, topic: str) -> bool:
        return self.marker_topic is not None and topic == self.marker_topic

    def quiet(self) -> bool:
        """NATS (no marker): subscribed and nothing received for QUIET_S."""
        return self.marker_topic is None and self.subscribed and time.monotonic() - self.quiet_since > QUIET_S

    # ------------------------------------------------------------------ acknowledgements

    def ack(self, generation: int, mid: int) -> None:
        with self._lock:
            if self.lease is not None:
                self._pending.append((generation, mid))

    def flush(self) -> bool:
        """Send the pending acknowledgements if the lease is confirmed; False when they wait (or were dropped with
        the lease)."""
        with self._lock:
            if not self._pending:
                return True
            lease = self.lease
            if lease is None:
                self._pending = []
                return False
            if not self.confirm(lease):
                if not self.refusing:
                    self.log.warning("alerts %s: not acknowledging %d messages, the lease on %s is not confirmed (the "
                                     "broker redelivers them to the partition's holder)", self.client_id,
                                     len(self._pending), describe(lease))
                self.refusing = True
                if self._on_paused is not None:
                    self._on_paused()
                return False
            self.refusing = False
            pending, self._pending = self._pending, []
        by_generation: dict[int, list[int]] = {}
        for generation, mid in pending:
            by_generation.setdefault(generation, []).append(mid)
        for generation, mids in by_generation.items():
            self.mqtt.ack_many(mids, generation)
        return True

    def has_pending(self) -> bool:
        return bool(self._pending)

    # ------------------------------------------------------------------ the lease

    def resume(self, lease: Lease) -> None:
        """A lease round confirmed `lease` (this session's): reconnect if the connection was held back."""
        if self.paused and self.lease is not None and lease.epoch == self.lease.epoch and self.confirm(lease):
            self.paused = False
            self.log.info("alerts %s: the lease on %s is confirmed; reconnecting", self.client_id, describe(lease))
            self.mqtt.stop()
            self.mqtt.start()

    def leave(self, *, lost: bool) -> None:
        """End the session here: `lost` (another holder, or it expired): acknowledge nothing more; given back (a
        surplus, or stopping): acknowledge what was processed first, if the lease still confirms. Then disconnect,
        never to connect again under the client id from this object."""
        lease = self.lease
        if lease is not None and not lost:
            self.flush()
        with self._lock:
            self.lease = None
            self._pending = []
        if lost and lease is not None:
            self.log.warning("alerts %s lost %s: another instance holds it now, or its lease ran out (this process "
                             "stalled, or could not renew it); acknowledging nothing more and leaving the session to "
                             "the holder", self.client_id, describe(lease))
        if self.started:
            self.mqtt.stop()

    # ------------------------------------------------------------------ paho's network thread

    def _refused(self, rc: Any) -> None:
        self.log.error("broker refused the alerts session %s: %s", self.client_id, rc)

    def _connected(self, connack: Connack) -> None:
        self.session_present = connack.session_present
        self.subscribed = self.drained = False
        if self._on_connected_cb is not None:
            self._on_connected_cb(self)

    def _subscribed(self) -> None:
        lease = self.lease
        self.log.info("alerts %s connected (MQTT 3.1.1, session %s%s)", self.client_id,
                      "resumed" if self.session_present else "new", f", {describe(lease)}" if lease else "")
        self.quiet_since = time.monotonic()
        self.subscribed = True
        if self._on_subscribed_cb is not None:
            self._on_subscribed_cb(self)

    def _message(self, msg: paho.MQTTMessage) -> None:
        self.quiet_since = time.monotonic()
        self._on_message(self, msg)

    def _disconnected(self, rc: Any) -> None:
        """Before paho reconnects: unless the lease is confirmed, pause and hold the connection (`MqttConnection.hold`:
        paho marks a lost connection lost again after this callback and would reconnect whatever it did); the owner's
        next look resumes it if the lease is still ours, or leaves it."""
        self.subscribed = False
        if self.mqtt.stopping:
            return
        lease = self.lease
        if lease is not None and self.confirm(lease):
            self.log.warning("broker connection lost (%s); reconnecting as %s, unacknowledged messages stay in the "
                             "session", rc, self.client_id)
            return
        self.paused = lease is not None
        self.mqtt.hold()
        if lease is not None:
            self.log.warning("broker connection lost (%s); not reconnecting as %s until the lease is confirmed", rc,
                             self.client_id)
            if self._on_paused is not None:
                self._on_paused()
