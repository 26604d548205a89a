"""The alerts part on a real 3-node NATS cluster with P = 4 partitions (issue 15 item 2, CONTRACT §8): two
`gridhub alerts` processes share the partitions by lease (2 + 2), each holding, for every partition it holds, the
partition's events and telemetry sessions (`gridhub-alerts-p<k>-events-<tag>`, `…-telemetry-<tag>`, as the hub's
subscribe-only user in the devices' account). Fire alarms come from devices on every partition, published at QoS 1
through another node.

- Each alarm gives exactly one task, whichever process holds its partition.
- The holder of two partitions killed with SIGKILL right after alarms on every partition were PUBACKed: the other
  takes its partitions once their leases have expired, resumes exactly those sessions (the broker hands it what the
  dead one had received but not acknowledged), and every alarm gives one task, none doubled.
- A holder (both its processes) stopped with SIGSTOP past its leases while alarms arrive on its partitions, then
  resumed: the other has taken its partitions; the woken one finds its leases lost, acknowledges nothing more and
  never connects under the sessions' client ids again; one task per alarm, none doubled, also for alarms after.

Failover times are printed, never asserted."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from alerts_processes import Alerts
from alerts_support import Listener
from nats_support import HUB_USER, NatsHub, nats_hub
from paho.mqtt.enums import CallbackAPIVersion
from polling import wait_for

from gridhub.services.nats import device_partition

P = 4
LEASE_S = "4"  # GRIDHUB_LEASE_S: a takeover within seconds (the default is 15)
GRID = "g-xg-01"
# three smoke alarms a partition, each in a building of its own (no fire incident joins two alarms)
DEVICES = [f"nt-sa-{i:03d}" for i in range(12)]
BY_PARTITION = {k: [d for d in DEVICES if device_partition(d, P) == k] for k in range(P)}


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[NatsHub]:
    assert all(len(ds) == 3 for ds in BY_PARTITION.values()), BY_PARTITION
    with nats_hub(make_database, tmp_path, P, extra_devices=tuple(DEVICES)) as h:
        with psycopg.connect(h.db_url) as conn:
            for n, dev in enumerate(DEVICES):
                conn.execute("INSERT INTO buildings (id, grid_id, name, floors) VALUES (%s, %s, %s, 6)",
                             (f"nt-b-{n}", GRID, f"{n}号楼"))
                conn.execute("INSERT INTO devices (id, kind, building_id, floor, place) VALUES"
                             " (%s, 'smoke_alarm', %s, 1, '一楼')", (dev, f"nt-b-{n}"))
        yield h


class Devices:
    """The test's smoke alarms, each connected (MQTT 3.1.1, its own account) to one node for the whole test (a fresh
    connection per alarm is the case nats-server 2.9.10 most often stores unmapped: the sessions take those too)."""

    def __init__(self, hub: NatsHub, node: int = 1) -> None:
        self.prefix = hub.settings.topic_prefix
        self.clients: dict[str, paho.Client] = {}
        for device in DEVICES:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{device}-{uuid.uuid4().hex[:8]}",
                                 protocol=paho.MQTTv311)
            client.username_pw_set(device, "pw-" + device)
            client.connect("127.0.0.1", hub.cluster.nodes[node].mqtt_port, keepalive=30)
            client.loop_start()
            self.clients[device] = client
        wait_for(lambda: all(c.is_connected() for c in self.clients.values()), 60, "every device connected")

    def alarm(self, device: str) -> None:
        """A fire alarm at QoS 1; returns once the broker has PUBACKed it."""
        body = {"ts": int(time.time() * 1000), "seq": 1, "type": "alarm", "detail": {}}
        info = self.clients[device].publish(f"{self.prefix}/devices/{device}/event", json.dumps(body), qos=1)
        info.wait_for_publish(60)
        assert info.is_published(), f"{device}: the alarm was not PUBACKed"

    def low_battery(self, device: str) -> None:
        """Two readings with the battery at 5 % (the telemetry lane's rule), QoS 1, each PUBACKed."""
        now = int(time.time() * 1000)
        for seq in (2, 3):
            body = {"ts": now + seq, "seq": seq, "metrics": {"battery_pct": 5}}
            info = self.clients[device].publish(f"{self.prefix}/devices/{device}/telemetry", json.dumps(body), qos=1)
            info.wait_for_publish(60)
            assert info.is_published(), f"{device}: the reading was not PUBACKed"

    def close(self) -> None:
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def devices(hub: NatsHub) -> Iterator[Devices]:
    d = Devices(hub)
    yield d
    d.close()


def _holders(conn: psycopg.Connection[Any]) -> dict[str, set[int]]:
    """Instance id -> the alerts partitions it holds (unexpired leases)."""
    out: dict[str, set[int]] = {}
    for holder, partition in conn.execute(
            "SELECT split_part(holder, '/', 1), partition FROM part_leases WHERE part = 'alerts'"
            " AND expires_at > now()"):
        out.setdefault(holder, set()).add(int(partition))
    return out


def _epochs(conn: psycopg.Connection[Any]) -> dict[int, int]:
    return {int(k): int(e) for k, e in conn.execute("SELECT partition, epoch FROM part_leases WHERE part = 'alerts'")}


SESSION_CONNECTED = re.compile(r" connected \(MQTT 3\.1\.1, session \w+(?:, partition (\d+) \(epoch (\d+)\))?\)")


def _session_connections(log: str) -> list[tuple[int | None, int]]:
    """(partition, epoch) of every session connection in a process's log, in order; (None, -1) for one made under
    no lease."""
    return [(int(m[1]), int(m[2])) if m[1] else (None, -1) for m in SESSION_CONNECTED.finditer(log)]


def _active(conn: psycopg.Connection[Any], alert_type: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT device_id FROM alerts WHERE type = %s AND state = 'active'",
                                       (alert_type,))}


def _tasks(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Device -> its fire_alarm tasks."""
    return {d: int(n) for d, n in conn.execute(
        "SELECT device_id, count(*) FROM tasks WHERE type = 'fire_alarm' GROUP BY device_id")}


def _shared(conn: psycopg.Connection[Any], a: Alerts, b: Alerts) -> dict[str, set[int]]:
    """Wait until the two processes hold two partitions each, every held session connected (two a partition)."""
    def fair() -> dict[str, set[int]] | None:
        held = _holders(conn)
        if sorted(len(v) for v in held.values()) == [2, 2] and set(held) == {a.name, b.name}:
            return held
        return None

    held: dict[str, set[int]] = wait_for(fair, 120, "two partitions held by each process")
    wait_for(lambda: b.connections() >= 4, 120, f"{b.name}'s four sessions")
    return held


@pytest.fixture
def pair(hub: NatsHub, tmp_path: Path) -> Iterator[list[Alerts]]:
    """The two alerts processes (started by `_start_pair`), killed at the end, their logs printed."""
    procs: list[Alerts] = []
    yield procs
    for p in procs:
        p.kill()
    for p in procs:
        print(f"--- {p.name}\n{p.text()[-5000:]}")
    for n in hub.cluster.nodes:  # the brokers' warnings and errors
        print(f"--- {n.name}\n" + "\n".join(line for line in hub.cluster.log_file(n).read_text().splitlines()
                                              if "[ERR]" in line or "[WRN]" in line)[-3000:])


def _start_pair(hub: NatsHub, tmp_path: Path, procs: list[Alerts]) -> tuple[Alerts, Alerts]:
    """The first process takes every partition (eight sessions), then the second joins."""
    a = Alerts(hub, "na", tmp_path, LEASE_S)
    procs.append(a)
    wait_for(lambda: a.connections() >= 2 * P, 180, "the first instance connected as all eight sessions")
    b = Alerts(hub, "nb", tmp_path, LEASE_S)
    procs.append(b)
    return a, b


def test_alarms_on_every_partition_and_a_killed_holders_partitions_move(hub: NatsHub, devices: Devices,
                                                                        pair: list[Alerts], tmp_path: Path) -> None:
    a, b = _start_pair(hub, tmp_path, pair)
    # the alert changes, as the hub's own user (HUB account) on another node: alerts publish them there
    listener = Listener(f"mqtt://{HUB_USER}:{hub.hub_password}@127.0.0.1:{hub.cluster.nodes[2].mqtt_port}",
                        [f"{hub.settings.topic_prefix}/alerts"])
    with contextlib.closing(listener), psycopg.connect(hub.db_url, autocommit=True) as conn:
        held = _shared(conn, a, b)
        assert "gives back" in a.text()  # the fair share: two of its four partitions went to the newcomer
        # one alarm on every partition: one task each, whichever process holds it
        first = [BY_PARTITION[k][0] for k in range(P)]
        for dev in first:
            devices.alarm(dev)
        wait_for(lambda: set(_tasks(conn)) >= set(first), 90, "a task for the alarm on every partition")
        wait_for(lambda: {c.get("device_id") for c in listener.of("/alerts")} >= set(first), 60,
                 "the alert changes published on the hub's account")
        # readings go through the telemetry process's sessions of every partition
        flat = [BY_PARTITION[k][2] for k in range(P)]
        for dev in flat:
            devices.low_battery(dev)
        wait_for(lambda: _active(conn, "low_battery") >= set(flat), 90, "low_battery from a reading on every partition")

        # alarms on every partition, and the holder of two of them killed right after their PUBACKs
        victim, survivor = (a, b) if held[a.name] else (b, a)
        taken = held[victim.name]
        second = [BY_PARTITION[k][1] for k in range(P)]
        for dev in second:
            devices.alarm(dev)
        before = survivor.connections()
        killed = time.monotonic()
        victim.kill()
        wait_for(lambda: _holders(conn).get(survivor.name) == set(range(P)), 120,
                 f"{survivor.name} to hold every partition")
        held_after = time.monotonic() - killed
        wait_for(lambda: survivor.connections() >= before + 2 * len(taken), 120,
                 "the dead holder's sessions resumed by the survivor")
        resumed_after = time.monotonic() - killed
        wait_for(lambda: set(_tasks(conn)) >= set(first + second), 120, "a task for every alarm")
        tasks_after = time.monotonic() - killed
        wait_for(lambda: survivor.text().count("backlog drained") >= 2, 120, "the survivor's backlog taken")
        tasks = _tasks(conn)
        assert {d: tasks.get(d) for d in first + second} == dict.fromkeys(first + second, 1)
        # the dead holder's own sessions, resumed (not new ones)
        text = survivor.text()
        for k in taken:
            assert f"p{k}-events" in text and f"p{k}-telemetry" in text
        assert text.count("session resumed") >= 2 * len(taken)
        print(json.dumps({"killed": victim.name, "partitions_taken_over": sorted(taken),
                          "all_held_after_s": round(held_after, 1),
                          "sessions_resumed_after_s": round(resumed_after, 1),
                          "every_alarm_a_task_after_s": round(tasks_after, 1)}))
    assert survivor.stop() == 0


def test_a_holder_stopped_past_its_leases_acknowledges_nothing_and_does_not_take_its_sessions_back(
        hub: NatsHub, devices: Devices, pair: list[Alerts], tmp_path: Path) -> None:
    a, b = _start_pair(hub, tmp_path, pair)
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        held = _shared(conn, a, b)
        wait_for(lambda: a.text().count("backlog drained") >= 1 and "backlog drained" in b.text(), 120,
                 "both processes' backlogs taken")
        stalled, other = a, b
        mine = held[stalled.name]
        stall_epochs = _epochs(conn)
        stalled_connections = stalled.connections()
        other_before = other.connections()
        stopped = time.monotonic()
        stalled.signal_group(signal.SIGSTOP)  # a stall: connections kept, nothing done
        during = [BY_PARTITION[k][1] for k in range(P)]
        for dev in during:  # half of them to the stalled holder's sessions, never acknowledged by it
            devices.alarm(dev)
        wait_for(lambda: _holders(conn).get(other.name) == set(range(P)), 120,
                 f"{other.name} to hold every partition")
        taken_after = time.monotonic() - stopped
        wait_for(lambda: other.connections() >= other_before + 2 * len(mine), 120,
                 "the stalled holder's sessions taken over")
        wait_for(lambda: set(_tasks(conn)) >= set(during), 120, "a task for every alarm of the stall")
        tasks_after = time.monotonic() - stopped
        stalled.signal_group(signal.SIGCONT)
        wait_for(lambda: stalled.text().count("acknowledging nothing more") >= len(mine), 60,
                 "the woken holder to find its leases lost")
        after = [BY_PARTITION[k][2] for k in range(P)]
        for dev in after:  # the new holder keeps working
            devices.alarm(dev)
        wait_for(lambda: set(_tasks(conn)) >= set(during + after), 120, "a task for every alarm after SIGCONT")
        time.sleep(2 * float(LEASE_S))  # room for a doubled task or a reconnection to show
        tasks = _tasks(conn)
        assert {d: tasks.get(d) for d in during + after} == dict.fromkeys(during + after, 1)
        assert stalled.proc.poll() is None
        assert set().union(*_holders(conn).values()) == set(range(P))
        # nobody fought over the client ids: the woken holder connected under none of them with the leases it had
        # lost, only (once live again, for its fair share) under leases taken anew; the other's were never dropped
        for k in mine:
            assert f"lost partition {k}" in stalled.text()
        again = _session_connections(stalled.text())[stalled_connections:]
        assert all(k is not None and epoch > stall_epochs[k] for k, epoch in again), again
        assert "connection lost" not in other.text()
        print(json.dumps({"stopped": stalled.name, "partitions": sorted(mine),
                          "all_held_by_the_other_after_s": round(taken_after, 1),
                          "every_alarm_of_the_stall_a_task_after_s": round(tasks_after, 1)}))
    assert stalled.stop() == 0 and other.stop() == 0
