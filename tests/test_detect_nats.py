"""`gridhub detect` and the worker apps' task push on a real 3-node NATS cluster (issue 15, CONTRACT §8).

- A camera publishes its frames to one node over MQTT 3.1.1 (`frame/{ts}`, as its own device account); the frames
  reach a `gridhub detect` process (GRIDHUB_BROKER=nats, a multi-host URL) on the partitions' topics; a blocked exit
  becomes an `exit_blocked` event that a subscriber with alerts' own partition-session subscriptions and user
  receives on the camera's partition, on the very topic a camera's own event arrives on; its evidence is stored; a
  real `gridhub alerts` process (holding every partition) makes it a task, whose push reaches the assignee's app
  over the WORKERS account. The detector user cannot publish another device's (a smoke alarm's) event.
- detect's /healthz says 503 `waiting_for: broker` while the broker refuses it (a wrong password), 200 once
  connected; the refused one leases no camera (it started first: before, it took the camera and the frames went
  unjudged).
- A worker app's user (WORKERS account) receives the hub's push on its own `workers/{id}/tasks`, also after being
  offline (persistent session), and is refused another worker's topic and the alerts topic; the bureau reads the
  alerts topic.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from alerts_processes import Alerts
from faults import health
from ingest_env import SECRET, wait_until
from nats_support import HUB_USER, NatsHub, nats_hub
from paho.mqtt.enums import CallbackAPIVersion
from polling import wait_for
from psycopg.types.json import Jsonb

from gridhub.accounts import derived_password
from gridhub.alerts.partitions import session_subscriptions, session_url
from gridhub.mqtt import MqttConnection
from gridhub.protocol import alerts_topic, worker_tasks_topic
from gridhub.services.nats import (
    WORKERS_ACCOUNT,
    NatsUser,
    contract_topic,
    detector_user,
    device_partition,
    registry_users,
    status_reader,
)
from gridhub.services.process import free_port
from gridhub.settings import DEFAULT_TOPIC_PREFIX as PREFIX
from gridhub.simulators.scenes import Obstacle, generate_scene

P = 4
CAMERA = "cam-0001"  # a camera of tests/data/registry.yaml (building b-12, grid g-xg-01): the detector user may
# publish its events
SMOKE = "sa-0001"  # not a camera: the detector user may not publish its events
ROI = [[0.41, 0.52], [0.59, 0.52], [0.93, 0.99], [0.07, 0.99]]


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[NatsHub]:
    with nats_hub(make_database, tmp_path, P, dead_first_host=True) as h:
        yield h


class Inbox:
    """A connected MQTT 3.1.1 client that keeps what it receives, and the SUBACK codes of its subscriptions."""

    def __init__(self, port: int, user: str, password: str, *, client_id: str | None = None,
                 clean: bool = True) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.granted: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"in-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv311, clean_session=clean)
        self.client.username_pw_set(user, password)
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(30), f"{user} not connected to 127.0.0.1:{port}"

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, rcs: Any, props: Any) -> None:
        with self.lock:
            self.granted[mid] = [rc.value for rc in rcs]

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK's codes (0x80: refused)."""
        rc, mid = self.client.subscribe(topic, qos=1)
        assert rc == paho.MQTT_ERR_SUCCESS and mid is not None, f"SUBSCRIBE to {topic} not sent ({rc})"
        wait_until(lambda: mid in self.granted, 30, f"SUBACK for {topic}")
        return self.granted[mid]

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _start_detect(hub: NatsHub, instance: str, log: Path, health_port: int, **env: str) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "gridhub.cli", "detect"],
                            env={**hub.env(instance), "GRIDHUB_HEALTH_PORT": str(health_port), **env},
                            stdout=out, stderr=out, cwd=str(hub.settings.data_dir))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _health_is(port: int, status: int) -> Callable[[], bool]:
    def check() -> bool:
        got = health(port)
        return got is not None and got[0] == status
    return check


def test_camera_frames_on_a_node_become_an_event_on_the_cameras_partition(hub: NatsHub, tmp_path: Path) -> None:
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET camera = %s WHERE id = %s", (Jsonb({"roi": ROI, "min_blocked_s": 60}),
                                                                      CAMERA))
    # a subscriber as alerts' events session of the camera's partition is: its user (the hub's subscribe-only user
    # in DEVICES) and its subscriptions
    k = device_partition(CAMERA, P)
    settings = hub.settings
    events: list[tuple[str, dict[str, Any]]] = []
    listener = MqttConnection(session_url(settings), f"gridhub-test-{uuid.uuid4().hex[:8]}",
                              protocol=paho.MQTTv311, subscriptions=session_subscriptions(settings, k, "events"),
                              on_message=lambda m: events.append((m.topic, json.loads(m.payload))))
    listener.connect(wait_s=30)

    # a detect that the broker refuses (a wrong password) says so on its health endpoint
    bad_port = free_port()
    bad_url = (settings.mqtt_url or "").replace(hub.hub_password, "wrong-" + hub.hub_password)
    bad = _start_detect(hub, "detect-refused", tmp_path / "detect-refused.log", bad_port, GRIDHUB_MQTT_URL=bad_url)
    port = free_port()
    proc = _start_detect(hub, "detect-1", tmp_path / "detect-1.log", port)
    alerts = Alerts(hub, "alerts-1", tmp_path, "4")
    workers = _workers(hub)
    apps = {w: Inbox(hub.cluster.nodes[1].mqtt_port, f"worker.{w}", workers[w]) for w in ("w-001", "w-002")}
    try:
        for w, app in apps.items():
            assert app.subscribe(worker_tasks_topic(PREFIX, w)) == [1]
        # alerts' sessions are new: what is published before they are subscribed is not theirs
        wait_for(lambda: alerts.connections() >= 2 * P, 180, "alerts connected as its eight partition sessions")
        wait_until(_health_is(bad_port, 503), 60, "the refused detect's /healthz answering 503")
        code, body = health(bad_port) or (0, {})
        assert (code, body.get("waiting_for")) == (503, "broker"), body
        wait_until(lambda: "refused" in (tmp_path / "detect-refused.log").read_text(errors="replace"), 60,
                   "the refused detect logging the refusal")
        wait_until(_health_is(port, 200), 60, "detect connected to the cluster (/healthz 200)")
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            # the camera is leased by the connected detect, never by the one the broker refuses
            wait_until(lambda: conn.execute("SELECT holder FROM detector_leases WHERE camera_id = %s",
                                            (CAMERA,)).fetchall() == [("gridhub-detect-detect-1",)], 60,
                       "the connected detect holding the camera's lease")

        # the camera's own event first, as a device: where does it arrive?
        camera_pw = derived_password(SECRET, "device", CAMERA)
        cam = Inbox(hub.cluster.nodes[2].mqtt_port, CAMERA, camera_pw)
        scene = generate_scene(4, 220.0, 5.0, lighting=False, crowd=False, obstacles=0, short_obstacles=0)
        scene.obstacles = [Obstacle("ebike", 30.0, 400.0, 4.5, 0.3, (40, 40, 200), 1.6, 1.0)]
        try:
            own = cam.client.publish(f"{PREFIX}/devices/{CAMERA}/event",
                                     json.dumps({"ts": scene.start_ms - 1000, "seq": 1, "type": "heartbeat",
                                                 "detail": {"own": True}}), qos=1)
            own.wait_for_publish(60)
            assert own.is_published()
            wait_until(lambda: any(e["detail"].get("own") for _, e in events), 60, "the camera's own event")
            started = time.monotonic()
            infos = [cam.client.publish(f"{PREFIX}/devices/{CAMERA}/frame/{ts}", data, qos=1)
                     for ts, data in scene.jpeg_frames()]
            for info in infos:
                info.wait_for_publish(60)
                assert info.is_published(), "a frame was not PUBACKed"
            print(f"{len(infos)} frames PUBACKed by node n3 in {time.monotonic() - started:.1f} s")
        finally:
            cam.close()
        wait_until(lambda: any(e["type"] == "exit_blocked" for _, e in events), 120,
                   "exit_blocked from detect on the camera's partition")
        print(f"exit_blocked received {time.monotonic() - started:.1f} s after the first frame was published")
        topics = {t for t, _ in events}
        own_topic = next(t for t, e in events if e["detail"].get("own"))
        (blocked_topic, blocked) = next((t, e) for t, e in events if e["type"] == "exit_blocked")
        # exactly as from the camera: the same (partition) topic, the camera's own topic once translated back
        assert blocked_topic == own_topic == f"{PREFIX}/part/{k}/devices/{CAMERA}/event", topics
        assert contract_topic(PREFIX, blocked_topic) == f"{PREFIX}/devices/{CAMERA}/event"
        assert blocked["detail"]["occupancy"] > 0
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            row = conn.execute("SELECT device_id, kind FROM evidence WHERE id = %s",
                               (blocked["detail"]["evidence_id"],)).fetchone()
        assert row == (CAMERA, "detection")
        log = (tmp_path / "detect-1.log").read_text(errors="replace")
        assert "MQTT 3.1.1" in log and "Unsupported protocol" not in log

        # alerts' real sessions got it: a task, pushed to its assignee's app over the WORKERS account
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            task = wait_for(lambda: conn.execute(
                "SELECT id, assignee FROM tasks WHERE device_id = %s AND type = 'exit_blocked'", (CAMERA,)).fetchone(),
                120, "alerts' task for the blocked exit")
        task_id, assignee = task
        print(f"task {task_id} for {assignee} {time.monotonic() - started:.1f} s after the first frame")
        assert assignee in apps, assignee
        wait_until(lambda: any(json.loads(m).get("id") == task_id
                               for m in apps[assignee].got(worker_tasks_topic(PREFIX, assignee))), 60,
                   f"the task push on {assignee}'s app")
        print(f"pushed to {assignee}'s app {time.monotonic() - started:.1f} s after the first frame")
    finally:
        _stop(proc)
        _stop(bad)
        alerts.stop()
        listener.stop()
        for app in apps.values():
            app.close()


def test_the_detector_user_publishes_only_cameras_events(hub: NatsHub) -> None:
    nodes = hub.cluster.nodes
    hub_user = NatsUser(HUB_USER, hub.hub_password)
    # the hub's subscribe-only user in DEVICES (what alerts' and ingest's partition sessions log in as)
    reader = Inbox(nodes[0].mqtt_port, status_reader(hub_user).user, hub.hub_password)
    detector = Inbox(nodes[1].mqtt_port, detector_user(hub_user).user, hub.hub_password)
    try:
        assert reader.subscribe(f"{PREFIX}/part/+/devices/+/event") == [1]
        smoke_topic = f"{PREFIX}/part/{device_partition(SMOKE, P)}/devices/{SMOKE}/event"
        camera_topic = f"{PREFIX}/part/{device_partition(CAMERA, P)}/devices/{CAMERA}/event"
        body = json.dumps({"ts": 1_790_000_000_000, "seq": 1, "type": "alarm", "detail": {}})
        detector.client.publish(smoke_topic, body, qos=1)
        barrier = detector.client.publish(camera_topic, body.replace("alarm", "heartbeat"), qos=1)
        barrier.wait_for_publish(60)
        assert barrier.is_published()
        wait_until(lambda: bool(reader.got(camera_topic)), 60, "the camera's event from the detector user")
        assert reader.got(smoke_topic) == [], "the detector user published a smoke alarm's event"
    finally:
        detector.close()
        reader.close()


def _workers(hub: NatsHub) -> dict[str, str]:
    """Worker id -> its app password, as the accounts file has them."""
    # gridhub.broker.build_accounts parses a one-host URL only (as tests/nats_support.py passes it)
    one_host = hub.settings.model_copy(
        update={"mqtt_url": f"mqtt://gridhub-hub:{hub.hub_password}@127.0.0.1:{hub.cluster.nodes[0].mqtt_port}"})
    with psycopg.connect(hub.db_url) as conn:
        _hub_users, users, _rows = registry_users(conn, one_host, P)
    return {u.user.removeprefix("worker."): u.password for u in users if u.account == WORKERS_ACCOUNT}


def test_a_worker_app_receives_its_own_task_push_only(hub: NatsHub) -> None:
    workers = _workers(hub)
    assert {"w-001", "w-003", "b-001"} <= set(workers), workers
    nodes = hub.cluster.nodes
    mine, theirs = worker_tasks_topic(PREFIX, "w-001"), worker_tasks_topic(PREFIX, "w-003")
    # the hub publishes as alerts/publish.py does: its own user (HUB account), QoS 1, to the recipient's topic
    publisher = MqttConnection(hub.settings.mqtt_url or "", f"gridhub-test-pub-{uuid.uuid4().hex[:6]}",
                               protocol=paho.MQTTv311)
    publisher.connect(wait_s=30)
    w1_id = f"app-w-001-{uuid.uuid4().hex[:6]}"
    w1 = Inbox(nodes[1].mqtt_port, "worker.w-001", workers["w-001"], client_id=w1_id, clean=False)
    w3 = Inbox(nodes[2].mqtt_port, "worker.w-003", workers["w-003"])
    bureau = Inbox(nodes[0].mqtt_port, "worker.b-001", workers["b-001"])
    try:
        assert w1.subscribe(mine) == [1]
        assert w1.subscribe(theirs) == [0x80], "a worker subscribed to another worker's task topic"
        assert w1.subscribe(alerts_topic(PREFIX)) == [0x80], "a grid worker subscribed to the alerts topic"
        assert w3.subscribe(theirs) == [1]
        assert bureau.subscribe(alerts_topic(PREFIX)) == [1]

        publisher.publish_confirmed(theirs, b'{"id": "t-theirs"}', timeout_s=30)
        publisher.publish_confirmed(mine, b'{"id": "t-1"}', timeout_s=30)
        publisher.publish_confirmed(alerts_topic(PREFIX), b'{"id": "a-1"}', timeout_s=30)
        wait_until(lambda: w1.got(mine) == [b'{"id": "t-1"}'], 60, "w-001's task push")
        wait_until(lambda: w3.got(theirs) == [b'{"id": "t-theirs"}'], 60, "w-003's task push")
        wait_until(lambda: bureau.got(alerts_topic(PREFIX)) == [b'{"id": "a-1"}'], 60, "the bureau's alert")

        # offline, the app's persistent session keeps its push; back on another node it gets it
        w1.close()
        publisher.publish_confirmed(theirs, b'{"id": "t-theirs-2"}', timeout_s=30)
        publisher.publish_confirmed(mine, b'{"id": "t-2"}', timeout_s=30)
        w1 = Inbox(nodes[0].mqtt_port, "worker.w-001", workers["w-001"], client_id=w1_id, clean=False)
        wait_until(lambda: w1.got(mine) == [b'{"id": "t-2"}'], 60, "w-001's task push kept while it was offline")
        wait_until(lambda: len(w3.got(theirs)) == 2, 60, "w-003's second push")
        assert [t for t, _ in w1.messages] == [mine], w1.messages
        # a worker's app publishes nothing (its account may not): a fake task push to another worker is not delivered
        w1.client.publish(theirs, b'{"id": "fake"}', qos=1)
        publisher.publish_confirmed(theirs, b'{"id": "t-theirs-3"}', timeout_s=30)
        wait_until(lambda: len(w3.got(theirs)) == 3, 60, "w-003's third push")
        assert b'{"id": "fake"}' not in w3.got(theirs)
    finally:
        for inbox in (w1, w3, bureau):
            inbox.close()
        publisher.stop()


def test_detect_waits_for_its_lost_node_and_judges_on_the_next(hub: NatsHub, tmp_path: Path) -> None:
    """SIGKILL of the node detect is connected to: its health says it waits for the broker, it goes on to the next
    node of the URL and judges the camera's frames published to a surviving node again."""
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET camera = %s WHERE id = %s", (Jsonb({"roi": ROI, "min_blocked_s": 60}),
                                                                      CAMERA))
    port = free_port()
    log = tmp_path / "detect-1.log"
    proc = _start_detect(hub, "detect-1", log, port)
    cam: Inbox | None = None
    try:
        wait_until(_health_is(port, 200), 60, "detect connected to the cluster (/healthz 200)")
        # the URL's first host is dead: detect went on to the next one, whose port its log names
        on = [int(m) for m in re.findall(r"connecting to the next broker node, 127\.0\.0\.1:(\d+)", log.read_text())]
        node = next(n for n in hub.cluster.nodes if n.mqtt_port == on[-1])
        survivor = next(n for n in hub.cluster.nodes if n.name != node.name)
        cam = Inbox(survivor.mqtt_port, CAMERA, derived_password(SECRET, "device", CAMERA))
        camera = cam
        with psycopg.connect(hub.db_url, autocommit=True) as conn:

            def judged(at_least: int) -> Callable[[], bool]:
                """A camera sends frames on and on: one broken frame a second, until detect has judged (quarantined)
                `at_least` (a clean session's new subscription takes what is published once the gateway made it)."""
                def check() -> bool:
                    info = camera.client.publish(f"{PREFIX}/devices/{CAMERA}/frame/{int(time.time() * 1000)}",
                                                 b"\xff\xd8 broken", qos=1)
                    info.wait_for_publish(60)
                    assert info.is_published(), "a frame was not PUBACKed"
                    time.sleep(1)
                    row = conn.execute("SELECT count(*) FROM quarantine WHERE device_id = %s AND reason ="
                                       " 'bad_frame'", (CAMERA,)).fetchone()
                    return bool(row and row[0] >= at_least)
                return check

            wait_until(judged(1), 120, "a broken frame judged (quarantined as bad_frame) before the kill")
            killed = time.monotonic()
            hub.cluster.signal_node(node, signal.SIGKILL)
            wait_until(lambda: "waiting for the broker (connection lost" in log.read_text(errors="replace"), 60,
                       "detect saying it waits for the broker")
            wait_until(_health_is(port, 200), 240, "detect connected again (/healthz 200)")
            print(f"detect connected again {time.monotonic() - killed:.1f} s after SIGKILL of {node.name}")
            before = conn.execute("SELECT count(*) FROM quarantine WHERE device_id = %s", (CAMERA,)).fetchone()
            assert before is not None
            wait_until(judged(before[0] + 1), 180, "a broken frame judged after the failover")
            print(f"a frame judged again {time.monotonic() - killed:.1f} s after the kill")
    finally:
        if cam is not None:
            cam.close()
        _stop(proc)
        for n in hub.cluster.nodes:  # kept for a failure's diagnosis (the cluster's directory is removed)
            with contextlib.suppress(OSError):
                shutil.copy(hub.cluster.log_file(n), tmp_path / f"nats-{n.name}.log")
