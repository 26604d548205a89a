"""The alerts part's partitions (gridhub/leases.py, CONTRACT §8): which partition a device is on, the persistent
sessions a partition is (one per lane, named by the partition and never by the process), and the fence that asks
the database whether a lease is still this process's before anything of its partition is acknowledged.

Invariant: only the holder of a partition's unexpired lease, with the epoch it took it under, acknowledges a
message of that partition's sessions or connects under their client ids; a `Fence` that cannot ask (the database
does not answer) says no.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

from gridhub.db import LazyConnection
from gridhub.leases import Lease, PartitionLeases, session_client_id
from gridhub.services.nats import device_partition
from gridhub.waiting import DATABASE_ERRORS

if TYPE_CHECKING:
    from gridhub.mqtt import MqttConnection

__all__ = ["PART", "Fence", "FencedSession", "describe", "marker_topic", "partition_of", "pause_unless_confirmed",
           "session_id"]

PART = "alerts"
LANES = ("events", "telemetry")


def partition_of(device_id: str, partitions: int) -> int:
    """The partition of a device: NATS's own `partition(P, 1)` of its id (gridhub/services/nats.py); 0 with one."""
    return 0 if partitions == 1 else device_partition(device_id, partitions)


def session_id(partition: int, lane: str, topic_prefix: str) -> str:
    """The client id of one lane's persistent session of a partition: `gridhub-alerts-p0-events`,
    `gridhub-alerts-p0-telemetry` (a hub on another topic prefix has it in the name, before the lane)."""
    assert lane in LANES
    return f"{session_client_id(PART, partition, topic_prefix)}-{lane}"[:128]


def marker_topic(prefix: str, client_id: str) -> str:
    """Published by a session's holder to the session itself after subscribing: it arrives after the backlog the
    broker had queued for the session (gridhub/mqtt.py's backlog marker)."""
    return f"{prefix}/hub/{client_id}/drained"


def describe(lease: Lease) -> str:
    return f"partition {lease.partition} (epoch {lease.epoch})"


class Fence:
    """`confirm(lease)`: whether the lease is still this holder's, with its epoch, unexpired by the database's clock;
    from any thread, on a connection of its own (not inside anyone's transaction). No answer is a no."""

    def __init__(self, leases: PartitionLeases, url: str, application_name: str) -> None:
        self.leases = leases
        self._db = LazyConnection(url, application_name=application_name, autocommit=True)
        self._lock = threading.Lock()

    def confirm(self, lease: Lease | None) -> bool:
        if lease is None:
            return False
        with self._lock:
            try:
                return self.leases.holds(self._db.get(), lease)
            except DATABASE_ERRORS:
                self._db.forget_if_broken()
                return False

    def close(self) -> None:
        with self._lock:
            self._db.close()


class FencedSession(Protocol):
    """A lane's persistent session of a partition: its connection, under its client id and the lease it runs under,
    paused when the connection was lost and the lease could not be confirmed then."""

    mqtt: MqttConnection
    fence: Fence
    lease: Lease | None
    paused: bool
    client_id: str


def pause_unless_confirmed(lane: FencedSession, rc: Any, kept: str, log: logging.Logger) -> bool:
    """On paho's thread, the lane's connection lost, before paho reconnects: unless the lease is confirmed, the lane is
    paused and paho told not to reconnect under the client id (True); else paho reconnects and resumes the session,
    where the `kept` (unacknowledged messages, readings) stay. Logged on the lane's logger `log` either way."""
    if not lane.fence.confirm(lane.lease):
        lane.paused = True
        lane.mqtt.client.disconnect()  # paho does not reconnect after this callback
        log.warning("broker connection lost (%s); not reconnecting as %s until the lease is confirmed", rc,
                    lane.client_id)
        return True
    log.warning("broker connection lost (%s); reconnecting as %s, unacknowledged %s stay in the session", rc,
                lane.client_id, kept)
    return False
