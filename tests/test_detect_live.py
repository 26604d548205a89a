"""The live detector on the real broker and database: MQTT frames, a pulled video file, evidence, quarantine."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as paho
import psycopg
import pytest
from ingest_env import Hub, Publisher, make_hub, topic, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from psycopg.types.json import Jsonb

from gridhub.detectors.live import DetectService, expand_source
from gridhub.simulators.scenes import Obstacle, generate_scene

ROI = [[0.41, 0.52], [0.59, 0.52], [0.93, 0.99], [0.07, 0.99]]


class EventListener:
    """Collects the camera events the detector publishes."""

    def __init__(self, hub: Hub) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listen-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set("gridhub-hub", hub.broker.hub_password())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", hub.broker.port)
        self.client.subscribe("gridhub/v1/devices/+/event", qos=1)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        device = msg.topic.split("/")[3]
        with self.lock:
            self.events.append((device, json.loads(msg.payload)))

    def of(self, device: str, type_: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [e for d, e in self.events if d == device and (type_ is None or e["type"] == type_)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def live(
    make_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Hub, DetectService, EventListener, Path]]:
    video = tmp_path / "corridor.avi"
    scene = generate_scene(3, 40.0, 1.0, lighting=False, obstacles=0, short_obstacles=0)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 1.0, (640, 360))
    for _, img in scene.frames():
        writer.write(img)
    writer.release()
    hub = make_hub(make_database, tmp_path)
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        for device_id, block in (
            ("cam-mq", {"roi": ROI, "min_blocked_s": 60}),
            ("cam-file", {"roi": ROI, "source": "${GH_TEST_VIDEO}", "interval_s": 1}),
        ):
            conn.execute(
                "INSERT INTO devices (id, kind, building_id, camera) VALUES (%s, 'camera', 'b-12', %s)",
                (device_id, Jsonb(block)),
            )
    monkeypatch.setenv("GH_TEST_VIDEO", str(video))
    listener = EventListener(hub)
    # the video is a file: camera sources read files under GRIDHUB_CAMERA_FILES_DIR only
    service = DetectService(hub.with_instance("detect-test").model_copy(update={"camera_files_dir": tmp_path}))
    service.start()
    try:
        yield hub, service, listener, video
    finally:
        service.stop()
        listener.close()
        hub.broker.stop()


def test_a_pulled_video_file_keeps_its_camera_alive(
    live: tuple[Hub, DetectService, EventListener, Path],
) -> None:
    hub, service, listener, video = live
    assert expand_source("${GH_TEST_VIDEO}") == str(video)
    wait_until(lambda: len(listener.of("cam-file", "heartbeat")) >= 1, 30, "a heartbeat of the pulled camera")
    wait_until(lambda: service.processed >= 6, 30, "frames pulled from the video file")
    assert listener.of("cam-file", "video_loss") == []


def test_mqtt_frames_raise_exit_blocked_with_evidence_and_bad_frames_are_quarantined(
    live: tuple[Hub, DetectService, EventListener, Path],
) -> None:
    hub, service, listener, _ = live
    scene = generate_scene(4, 220.0, 5.0, lighting=False, crowd=False, obstacles=0, short_obstacles=0)
    scene.obstacles = [Obstacle("ebike", 30.0, 400.0, 4.5, 0.3, (40, 40, 200), 1.6, 1.0)]
    pub = Publisher(hub)
    try:
        pub.send((topic("cam-mq", f"frame/{ts}"), data) for ts, data in scene.jpeg_frames())
        pub.send([(topic("cam-mq", f"frame/{scene.start_ms + 500_000}"), b"\xff\xd8 broken")])
    finally:
        pub.close()
    wait_until(lambda: len(listener.of("cam-mq", "exit_blocked")) == 1, 60, "exit_blocked from cam-mq")
    (event,) = listener.of("cam-mq", "exit_blocked")
    assert event["detail"]["occupancy"] > 0
    assert listener.of("cam-mq", "heartbeat")
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT device_id, kind, data FROM evidence WHERE id = %s", (event["detail"]["evidence_id"],)
        ).fetchone()
        assert row is not None and row[0] == "cam-mq" and row[1] == "detection"
        assert bytes(row[2][:2]) == b"\xff\xd8"

        def quarantined() -> bool:
            r = conn.execute(
                "SELECT count(*) FROM quarantine WHERE device_id = 'cam-mq' AND reason = 'bad_frame'"
            ).fetchone()
            return bool(r and r[0] == 1)

        wait_until(quarantined, 30, "the broken frame quarantined as bad_frame")


def test_a_restarted_detector_keeps_its_learned_clear_scene(
    live: tuple[Hub, DetectService, EventListener, Path],
) -> None:
    hub, service, listener, _ = live
    scene = generate_scene(5, 60.0, 5.0, lighting=False, crowd=False, obstacles=0, short_obstacles=0)
    frames = list(scene.jpeg_frames())
    pub = Publisher(hub)
    try:
        pub.send((topic("cam-mq", f"frame/{ts}"), data) for ts, data in frames)
    finally:
        pub.close()
    with psycopg.connect(hub.db_url, autocommit=True) as conn:

        def kept() -> bool:
            row = conn.execute("SELECT count(*) FROM detector_scenes WHERE camera_id = 'cam-mq'").fetchone()
            return bool(row and row[0] == 1)

        wait_until(kept, 60, "the learned clear scene of cam-mq kept in detector_scenes")
    service.stop()

    again = DetectService(hub.with_instance("detect-test-2"))
    again.start()
    try:
        later = scene.start_ms + 3_600_000
        pub = Publisher(hub)
        try:

            def judged() -> bool:
                # until the new instance has subscribed, a frame may go to no one: send another
                nonlocal later
                later += 5_000
                pub.send([(topic("cam-mq", f"frame/{later}"), frames[0][1])])
                return again.processed >= 1 and again.cameras["cam-mq"].detector is not None

            wait_until(judged, 60, "a frame judged after the restart")
        finally:
            pub.close()
        detector = again.cameras["cam-mq"].detector
        assert detector is not None and not detector.learning
    finally:
        again.stop()


def test_frames_waiting_to_be_judged_are_bounded_in_bytes(tmp_path: Path) -> None:
    """On NATS (MQTT 3.1.1, no Receive Maximum) the broker may send a session up to its max_ack_pending frames at
    once: what waits to be judged stays under MAX_QUEUED_BYTES, the rest is dropped (and would be acknowledged)."""
    from ingest_env import SECRET

    from gridhub.detectors.live import MAX_QUEUED_BYTES, Frame
    from gridhub.protocol import MAX_FRAME
    from gridhub.settings import Settings

    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", mqtt_url="mqtt://u:p@127.0.0.1:1",
                        data_dir=tmp_path, secret_key=SECRET, broker="nats", partitions=4)
    service = DetectService(settings)  # not started: nothing takes frames out
    frame = b"\xff\xd8" + bytes(MAX_FRAME - 2)
    total = 2 * MAX_QUEUED_BYTES // MAX_FRAME
    for i in range(total):
        service._enqueue(Frame("cam-x", i, frame, topic="gridhub/v1/devices/cam-x/frame", mid=i + 1, qos=1))
    queued = service.frames.qsize()
    print(f"{queued} of {total} frames of {MAX_FRAME} bytes queued, {service.dropped} dropped")
    assert queued * MAX_FRAME == service.queued_bytes <= MAX_QUEUED_BYTES
    assert queued + service.dropped == total and service.dropped > 0
    service._taken(service.frames.get_nowait())  # the worker takes one: room for one more
    service._enqueue(Frame("cam-x", total, frame, topic="gridhub/v1/devices/cam-x/frame", mid=total + 1, qos=1))
    assert service.frames.qsize() == queued


def test_a_refused_frame_subscription_is_waited_for_and_asked_again(tmp_path: Path) -> None:
    """NATS's gateway may answer SUBACK 0x80 for a filter whose JetStream consumer it could not make, keeping the
    connection: detect says it waits for the broker until a SUBACK grants every frame filter."""
    from ingest_env import SECRET
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from gridhub.detectors.live import BROKER, frame_subscriptions
    from gridhub.mqtt import MqttConnection
    from gridhub.settings import Settings
    from gridhub.waiting import WAITS

    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", mqtt_url="mqtt://u:p@127.0.0.1:1",
                        data_dir=tmp_path, secret_key=SECRET, broker="nats", partitions=4)
    service = DetectService(settings)  # not started: its connection never connects
    subs = frame_subscriptions(settings.topic_prefix, nats=True)
    mqtt = MqttConnection(settings.mqtt_url or "", "detect-suback-test", subscriptions=subs)
    granted, refused = ReasonCode(PacketTypes.SUBACK, identifier=1), ReasonCode(PacketTypes.SUBACK, identifier=0x80)
    service._suback(mqtt, 7, [granted, refused, granted, refused])
    assert service.refused_subs == {subs[1][0], subs[3][0]}
    assert BROKER in WAITS.waiting()
    service._retries[8] = [subs[1][0]]  # asked again for one of them (what _resubscribe records): granted
    service._suback(mqtt, 8, [granted])
    assert service.refused_subs == {subs[3][0]}
    assert BROKER in WAITS.waiting()
    service._suback(mqtt, 9, [granted] * len(subs))  # a new connection's SUBACK grants every filter
    assert service.refused_subs == set()
    assert BROKER not in WAITS.waiting()
