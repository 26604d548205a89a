"""Alerts acknowledges a message on the connection it came on (issue 15, gridhub/mqtt.py's `generation`): an event
received, the events connection dropped before its acknowledgement, the acknowledgement then not written on the new
connection; the broker delivers the event again, it makes one task, and the copy is acknowledged on the new
connection (not delivered once more). The telemetry lane's acknowledgements are grouped by connection the same way."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alerts_support import Device, add_devices
from polling import wait_for

from gridhub.alerts import telemetry
from gridhub.alerts.partitions import PartitionSession
from gridhub.alerts.service import AlertService, Inbound
from gridhub.alerts.timers import ShiftedClock
from gridhub.leases import Lease
from gridhub.settings import Settings

GRID = "g-xg-02"
DEVICE = "ack-sa-1"


@pytest.fixture
def mine(db_url: str, settings: Settings, broker: Any) -> Settings:
    add_devices(db_url, settings, broker, "ack-b-1", GRID, [(DEVICE, "smoke_alarm", None)])
    with psycopg.connect(db_url, autocommit=True) as db:
        # earlier tests' instances are gone: their lease is free for this one at once
        db.execute("UPDATE part_leases SET holder = NULL, expires_at = NULL WHERE part = 'alerts'")
        db.execute("DELETE FROM part_instances WHERE part = 'alerts'")
    return settings.model_copy(update={"instance_id": f"acks{os.getpid()}"})


@pytest.fixture
def service(mine: Settings) -> Iterator[AlertService]:
    svc = AlertService(mine, clock=ShiftedClock())
    svc.start()
    try:
        assert svc.ready.wait(15), "alerts service did not subscribe"
        wait_for(lambda: svc.grace_until is not None, 20, "the backlog marker")
        yield svc
    finally:
        svc.stop()


def fire_tasks(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM tasks WHERE device_id = %s AND type = 'fire_alarm'", (DEVICE,)).fetchone()
    return int(row[0]) if row else 0


def test_an_event_whose_connection_dropped_is_not_acknowledged_on_the_next_one(
        db_url: str, mine: Settings, service: AlertService) -> None:
    mqtt = service.sessions[0].mqtt
    handled: list[Inbound] = []
    markers: list[bytes] = []  # backlog markers the priority lane has taken: each comes after its backlog
    entered, release = threading.Event(), threading.Event()
    handle = service._handle_priority

    def held(conn: psycopg.Connection[Any], item: Inbound) -> list[int]:
        if item.channel == "marker":
            markers.append(item.payload)
        if item.device_id == DEVICE:
            handled.append(item)
            if len(handled) == 1:  # the first copy waits while its connection is dropped under it
                entered.set()
                assert release.wait(60)
        return handle(conn, item)

    acks: list[tuple[list[int], int, bool]] = []
    ack_many = mqtt.ack_many

    def recorded(mids: Any, generation: int) -> bool:
        sent = ack_many(mids, generation)
        acks.append((list(mids), generation, sent))
        return sent

    service._handle_priority = held  # type: ignore[method-assign]
    mqtt.ack_many = recorded  # type: ignore[method-assign]

    dev = Device(mine, DEVICE)
    try:
        with psycopg.connect(db_url, autocommit=True) as db:
            dev.event("alarm")
            assert entered.wait(30), "the alarm did not reach the priority lane"
            first = handled[0]
            assert first.generation == mqtt.generation
            sock = mqtt.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)  # lost before the alarm is acknowledged
            wait_for(lambda: mqtt.generation == first.generation + 1 and mqtt.is_connected(), 30,
                     "the events connection to come back")
            release.set()

            wait_for(lambda: len(handled) == 2, 30, "the broker to deliver the unacknowledged alarm again")
            again = handled[1]
            assert again.generation == first.generation + 1 and again.payload == first.payload
            wait_for(lambda: any(m == [again.mid] and g == again.generation for m, g, _ in acks), 30,
                     "the copy to be acknowledged")
            # the first copy's packet id was not written on the new connection; the copy's was
            assert ([first.mid], first.generation, False) in acks
            assert ([again.mid], again.generation, True) in acks
            assert fire_tasks(db) == 1  # processed once: the copy found its rule event already there

            # acknowledged on its own connection: after one more drop the broker has nothing of it to deliver
            generation = mqtt.generation
            mqtt.publish_confirmed(f"{mine.topic_prefix}/hub/test-acks/flush", b"", timeout_s=10)
            sock = mqtt.client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            wait_for(lambda: mqtt.generation == generation + 1 and mqtt.marker.encode() in markers, 30,
                     "the events connection to come back and its backlog to be taken")
            assert len(handled) == 2 and fire_tasks(db) == 1
    finally:
        release.set()
        dev.close()


class _Acks:
    """Stands in for the lane's MqttConnection: records `ack_many` calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], int]] = []

    def ack_many(self, mids: list[int], generation: int) -> bool:
        self.calls.append((list(mids), generation))
        return True


class _Fence:
    """Stands in for the lane's lease confirmation (the database's answer is not what is tested here)."""

    def __init__(self) -> None:
        self.holds = True

    def confirm(self, lease: Lease | None) -> bool:
        return self.holds and lease is not None


def test_the_telemetry_lane_acknowledges_each_message_on_its_own_connection_once_its_lease_is_confirmed(
        settings: Settings) -> None:
    fence = _Fence()
    session = PartitionSession(settings, "telemetry", Lease("alerts", 0, "t/1", 3), fence.confirm,
                               logging.getLogger("test"), on_message=lambda _s, _m: None)
    acks = _Acks()
    session.mqtt = acks  # type: ignore[assignment]
    lane = telemetry.TelemetryLane.__new__(telemetry.TelemetryLane)
    lane.sessions = {0: session}
    batch = [telemetry.Inbound("d1", b"{}", 1, 7, 3, session=session),
             telemetry.Inbound("d2", b"{}", 1, 8, 3, session=session),
             telemetry.Inbound("d1", b"{}", 0, 0, 4, session=session),
             telemetry.Inbound("d3", b"{}", 1, 1, 4, session=session),
             telemetry.Inbound("", b"m", 1, 2, 4, marker=True, session=session)]
    fence.holds = False  # the lease cannot be confirmed: nothing is acknowledged, the acknowledgements wait
    lane._ack(batch[:2])
    assert acks.calls == [] and session.has_pending()
    fence.holds = True
    lane._ack(batch[2:])
    assert acks.calls == [([7, 8], 3), ([1, 2], 4)]  # in arrival order, one write per connection, no QoS 0
    assert not session.has_pending()
    # a session left with its lease lost acknowledges nothing more
    session.leave(lost=True)
    lane._ack([telemetry.Inbound("d1", b"{}", 1, 9, 4, session=session)])
    assert acks.calls == [([7, 8], 3), ([1, 2], 4)]
