"""``gridhub detect``: the live detectors. Camera frames in, the camera's events out.

Frames arrive on ``{prefix}/devices/{id}/frame`` (capture time in the MQTT 5 user property
``ts``, else the receive time) and ``{prefix}/devices/{id}/frame/{ts}``, or are pulled from a
camera's ``source`` URL (RTSP, HTTP snapshot, video file; ``${NAME}`` taken from the environment)
every ``interval_s``. Each camera's frames go, in order, through one ``ExitDetector`` (the same
code as ``gridhub detect replay``); a change of state is published as the camera's ``event``
(CONTRACT §1) with ``detail.occupancy`` and ``detail.evidence_id``, the evidence JPEG stored in
the ``evidence`` table first. While frames arrive the camera is kept alive with a ``heartbeat``
event; a pulled source that stops giving frames raises ``video_loss`` (``video_restored`` when
it comes back). Undecodable frames are quarantined as ``bad_frame``, frames over 2 MiB as
``oversize``, frames of cameras not in the registry as ``unregistered_device``.

Each camera is run by one instance: instances lease cameras in ``detector_leases`` and renew
the leases; a camera whose lease has expired is taken over by another instance. An instance leases cameras only
while it is connected to the broker (its events could not go out otherwise, and the frames of a camera it held would
be judged by nobody): without the broker it renews nothing, so its leases run out and another instance takes the
cameras; once it has been away a whole lease it lets go of them (and stops pulling) too.

On a NATS cluster (``GRIDHUB_BROKER=nats``, CONTRACT §8) detect speaks MQTT 3.1.1, logs in as the hub's detector user
in the devices' account (``gridhub.services.nats.detector_user``) under a client id no device can guess, reads the
frames where the account's mapping put them, on the partitions' topics
(``{prefix}/part/{k}/devices/{id}/frame[/{ts}]``, turned back into the camera's own topic) and on the devices' own
topics (where nats-server 2.9.10 leaves some QoS 1 publishes unmapped), and publishes each camera's event on the
camera's partition's event topic: stored in the very stream alerts' and ingest's partition sessions read, on the
partition the camera's own messages are on, as if the camera had published it. That user may publish nothing else.

A frame received over MQTT is acknowledged only once it has been judged (its evidence stored, or it was
quarantined). Through a database outage every database round trip of the worker waits and tries again
(``gridhub.waiting.keep_trying``) rather than failing: frames stay in order, unacknowledged, and are judged
when the database is back; the part's health endpoint says it is waiting for the database meanwhile. The
broker likewise: until the first CONNACK, and whenever the connection is lost or refused (an unreachable node, a
refused account or protocol), the health endpoint answers 503 ``waiting_for: broker``; paho reconnects with backoff,
going on to the next node of a multi-host URL.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import paho.mqtt.client as paho
import psycopg
from pydantic import ValidationError

from gridhub import envref
from gridhub.db import DatabaseUnavailable, LazyConnection
from gridhub.images import FRAME_MAX_PIXELS
from gridhub.mqtt import Connack, MqttConnection
from gridhub.protocol import MAX_FRAME, Reason, TopicError, device_topic, parse_topic
from gridhub.quarantine import quarantine
from gridhub.registry import CameraBlock, check_camera_source
from gridhub.runtime import run_until_signalled
from gridhub.services.nats import (
    PARTITION_LEVEL,
    camera_event_topic,
    contract_topic,
    detector_user_url,
    session_client_id_on_nats,
)
from gridhub.settings import Settings
from gridhub.waiting import WAITS, GaveUp, keep_trying

from .config import CameraConfig
from .evidence import render_evidence
from .model import ExitDetector, decode_frame, frame_problem

log = logging.getLogger("gridhub.detect")

LEASE_S = 30.0
RENEW_S = 10.0
REGISTRY_REFRESH_S = 30.0
DEFAULT_HEARTBEAT_S = 60
VIDEO_LOSS_AFTER = 3  # failed pulls in a row
SCENE_SAVE_S = 600.0  # the clear scene is kept at least this often (frame time), and on each change
RECEIVE_MAXIMUM = 32  # frames the broker may send before we acknowledge (each up to 2 MiB); MQTT 5 only
# frames received and not judged yet, at most: MQTT 5's Receive Maximum bounds them on mosquitto; on NATS (MQTT 3.1.1)
# the gateway may send a session up to its max_ack_pending (1,024 by default) frames of up to 2 MiB each. Beyond this
# a frame is dropped (acknowledged unjudged, logged): a live detector needs the newest frames, not a backlog.
MAX_QUEUED_BYTES = RECEIVE_MAXIMUM * MAX_FRAME
BROKER = "broker"  # what the health endpoint says the part waits for while the broker is away or refuses us
BROKER_WAITER = "detect-mqtt"
SUBSCRIBE_WAITER = "detect-subscriptions"
RESUBSCRIBE_S = (2.0, 30.0)  # a refused subscription is asked for again after 2 s, doubling up to 30 s

T = TypeVar("T")


@dataclass
class Camera:
    """A registered camera and its detector."""

    config: CameraConfig
    source: str = "mqtt"
    interval_s: float = 5.0
    heartbeat_s: int = DEFAULT_HEARTBEAT_S
    detector: ExitDetector | None = None
    last_ts: int | None = None
    last_heartbeat_ms: int | None = None
    seq: int = 0
    video_lost: bool = False
    saved_version: int = 0
    saved_ms: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def id(self) -> str:
        return self.config.camera_id

    @property
    def pulled(self) -> bool:
        return self.source != "mqtt"


@dataclass
class Frame:
    camera_id: str
    ts_ms: int
    payload: bytes | None  # JPEG bytes from MQTT
    image: np.ndarray | None = None  # a pulled frame, already decoded
    topic: str = ""
    reject: tuple[Reason, str] | None = None  # quarantine it: reason and detail
    mid: int = 0  # MQTT: acknowledged once judged
    qos: int = 0
    generation: int = 0  # the connection it came on: an old packet id is not acknowledged on a new one


def expand_source(source: str) -> str:
    """``${NAME}`` taken from the environment (``gridhub.envref``, the resolver of the notify file: never the
    hub's own ``GRIDHUB_…`` settings); a missing variable is an EnvRefError (a ValueError) that names it."""
    return envref.expand(source, where="a camera source")


def open_source(source: str, files_dir: Path | None) -> str:
    """The source as the reader opens it: expanded, then checked against the allow-list of the registry
    (``check_camera_source``: rtsp, rtsps, http, https, files under GRIDHUB_CAMERA_FILES_DIR only) again, since a
    ``${NAME}`` may have said anything. ValueError says why not."""
    return check_camera_source(expand_source(source), files_dir)


def frame_subscriptions(prefix: str, nats: bool) -> list[tuple[str, int]]:
    """The frame topics detect subscribes to (QoS 1): the devices' own; on NATS also the partitions' topics, where
    the devices' account maps every frame (gridhub/services/nats.py `device_mappings`)."""
    own = [(f"{prefix}/devices/+/frame", 1), (f"{prefix}/devices/+/frame/+", 1)]
    if not nats:
        return own
    part = f"{prefix}/{PARTITION_LEVEL}/+/devices/+"
    return [(f"{part}/frame", 1), (f"{part}/frame/+", 1), *own]


def camera_from_row(device_id: str, block: dict[str, Any], heartbeat_s: int | None) -> Camera:
    """A ``Camera`` from the registry's ``camera:`` block; ValueError names the field."""
    data = {k: v for k, v in block.items() if v is not None}
    try:
        cfg = CameraConfig.model_validate({**data, "camera_id": device_id})
        block_in = CameraBlock.model_validate(data)  # source and interval_s, with the registry's defaults
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise ValueError(
            f"camera {device_id}: bad camera block ({fields}): {exc.errors()[0]['msg']}"
        ) from None
    return Camera(
        config=cfg,
        source=block_in.source,
        interval_s=float(block_in.interval_s),
        heartbeat_s=int(heartbeat_s or DEFAULT_HEARTBEAT_S),
    )


class DetectService:
    """The detectors of the cameras this instance holds, fed by MQTT and by pulled sources."""

    def __init__(self, settings: Settings) -> None:
        assert settings.database_url and settings.mqtt_url
        self.settings = settings
        self.prefix = settings.topic_prefix
        self.nats = settings.broker == "nats"
        self.partitions = settings.partitions
        self.instance = settings.client_id("detect")
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=10_000)
        self.queued_bytes = 0  # MQTT payload bytes in `frames` (MAX_QUEUED_BYTES)
        self.dropped = 0
        self._queued_lock = threading.Lock()
        self.cameras: dict[str, Camera] = {}
        self.held: set[str] = set()
        self.pullers: dict[str, threading.Thread] = {}
        self.stop_event = threading.Event()
        self.failed = threading.Event()
        self.db = LazyConnection(settings.database_url, application_name="gridhub-detect", autocommit=True)
        self.mqtt: MqttConnection | None = None
        self.worker: threading.Thread | None = None
        self.processed = 0
        self.published = 0
        self.broker_away_since: float | None = time.monotonic()  # None while connected
        self.renew_soon = threading.Event()  # connected again: take camera leases without waiting a round
        self.refused_subs: set[str] = set()  # frame filters the broker refused in its last SUBACK for them
        self._retries: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> the refused filters asked for again
        self._resubscribe_s = RESUBSCRIBE_S[0]
        self._retry_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the broker in the background (waiting for it, and saying so on the health endpoint, while it is
        away or refuses us) and start the worker, which reads the registry first (waiting for the database if it is
        away); frames wait unacknowledged until then."""
        assert self.settings.database_url and self.settings.mqtt_url
        url, client_id = self.settings.mqtt_url, self.instance
        if self.nats:  # MQTT 3.1.1 as the detector user in DEVICES, under a client id no device can guess
            url = detector_user_url(self.settings.mqtt_url)
            client_id = session_client_id_on_nats(self.instance, self.settings.mqtt_url)
        mqtt = MqttConnection(
            url, client_id, protocol=paho.MQTTv311 if self.nats else paho.MQTTv5, keepalive=30,
            reconnect_delay=(1, 30 if self.nats else 120), manual_ack=True,
            receive_maximum=None if self.nats else RECEIVE_MAXIMUM,
            subscriptions=frame_subscriptions(self.prefix, self.nats),
            on_connected=self._on_connected, on_message=self._on_message, on_refused=self._on_refused,
            on_disconnected=self._on_disconnected,
        )
        WAITS.begin(BROKER, BROKER_WAITER, "connecting")
        self._watch_subacks(mqtt)
        self.mqtt = mqtt
        mqtt.start()  # CONNACK, refusals and reconnects in the background: an absent broker is waited for
        self.worker = threading.Thread(target=self._work, name="detect-worker", daemon=True)
        self.worker.start()

    def stop(self) -> None:
        self.stop_event.set()
        for cam in self.cameras.values():
            cam.stop.set()
        if self.worker is not None:
            self.worker.join(timeout=10)
        for t in self.pullers.values():
            t.join(timeout=5)
        if self.mqtt is not None:
            self.mqtt.stop()
        try:
            self.db.forget_if_broken()
            self.db.get().execute("DELETE FROM detector_leases WHERE holder = %s", (self.instance,))
        except (psycopg.Error, DatabaseUnavailable):
            log.warning("could not release camera leases; they expire in %s s", LEASE_S)
        self.db.close()

    def _with_db(self, what: Callable[[psycopg.Connection[Any]], T]) -> T | GaveUp:
        """`what(connection)`, waiting through database outages (GaveUp.STOPPING when stopping first)."""
        return keep_trying(lambda: what(self.db.get()), waiter="detect-worker", stopping=self.stop_event,
                           on_error=self.db.forget_if_broken, grace_s=None, url=self.db.url)

    # -- MQTT in ---------------------------------------------------------------------------

    def _broker_away(self) -> None:
        if self.broker_away_since is None:
            self.broker_away_since = time.monotonic()

    def _on_refused(self, rc: Any) -> None:
        WAITS.begin(BROKER, BROKER_WAITER, f"refused: {rc}")
        self._broker_away()
        log.error("broker refused the detector's connection: %s", rc)

    def _on_disconnected(self, rc: Any) -> None:
        mqtt = self.mqtt
        if mqtt is not None and not mqtt.stopping:
            WAITS.begin(BROKER, BROKER_WAITER, f"connection lost: {rc}")
            self._broker_away()

    def _on_connected(self, connack: Connack) -> None:
        # the connection subscribes to the frame topics right after this, on every (re)connection
        WAITS.end(BROKER, BROKER_WAITER)
        self.broker_away_since = None
        self.renew_soon.set()
        log.info("detect: subscribed to camera frames under %s (%s)", self.prefix,
                 "NATS, MQTT 3.1.1, partitions' topics" if self.nats else "MQTT 5")

    def _watch_subacks(self, mqtt: MqttConnection) -> None:
        """See every SUBACK before the connection does: NATS's gateway answers a subscription whose JetStream consumer
        it could not make (seen after a node's SIGKILL: "Unable to add JetStream consumer for subscription ...
        timeout") with a refusal (0x80) and keeps the connection, so those frames would never come."""
        inner = mqtt.client.on_subscribe

        def on_subscribe(client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
            self._suback(mqtt, mid, list(rcs))
            if inner is not None:
                inner(client, userdata, mid, rcs, props)  # type: ignore[call-arg]  # VERSION2's five arguments

        mqtt.client.on_subscribe = on_subscribe

    def _suback(self, mqtt: MqttConnection, mid: int, rcs: list[Any]) -> None:
        with self._retry_lock:  # _resubscribe records its packet id before this can run for it
            asked = self._retries.pop(mid, None)
        filters = asked if asked is not None else [f for f, _ in mqtt.subscriptions]
        refused = {f for f, rc in zip(filters, rcs, strict=False) if getattr(rc, "is_failure", rc == 0x80)}
        if asked is None:  # every filter, on a (re)connection
            self.refused_subs = refused
        else:
            self.refused_subs = (self.refused_subs - set(asked)) | refused
        if not self.refused_subs:
            self._resubscribe_s = RESUBSCRIBE_S[0]
            WAITS.end(BROKER, SUBSCRIBE_WAITER)
            return
        WAITS.begin(BROKER, SUBSCRIBE_WAITER, "a frame subscription refused")
        log.error("the broker refused detect's subscription to %s; asking again in %.0f s",
                  ", ".join(sorted(self.refused_subs)), self._resubscribe_s)
        timer = threading.Timer(self._resubscribe_s, self._resubscribe, args=(mqtt, mqtt.generation))
        timer.daemon = True
        timer.start()
        self._resubscribe_s = min(self._resubscribe_s * 2, RESUBSCRIBE_S[1])

    def _resubscribe(self, mqtt: MqttConnection, generation: int) -> None:
        """Ask again for the refused filters, on the same connection only (a new one subscribes to all anyway)."""
        failed = sorted(self.refused_subs)
        if not failed or self.stop_event.is_set() or mqtt.stopping or mqtt.generation != generation \
                or not mqtt.is_connected():
            return
        with self._retry_lock:
            rc, mid = mqtt.client.subscribe([(f, 1) for f in failed])
            if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
                self._retries[mid] = failed

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        now_ms = int(time.time() * 1000)
        # on NATS a partition's topic back as the camera published it (CONTRACT §1)
        received = contract_topic(self.prefix, msg.topic) if self.nats else msg.topic
        try:
            topic = parse_topic(received, self.prefix)
        except TopicError as exc:
            self._enqueue(
                Frame("", now_ms, bytes(msg.payload), topic=received, reject=(Reason.BAD_TOPIC, str(exc)))
            )
            return
        ts = now_ms
        if topic.frame_ts is not None:
            ts = int(topic.frame_ts)
        else:
            for key, value in getattr(msg.properties, "UserProperty", None) or []:
                if key == "ts" and str(value).isdigit():
                    ts = int(value)
        self._enqueue(Frame(topic.device_id, ts, bytes(msg.payload), topic=received, mid=msg.mid, qos=msg.qos,
                            generation=self._generation()))

    def _generation(self) -> int:
        return self.mqtt.generation if self.mqtt is not None else 0

    def _enqueue(self, frame: Frame) -> None:
        size = len(frame.payload) if frame.payload is not None else 0
        with self._queued_lock:
            room = self.queued_bytes + size <= MAX_QUEUED_BYTES
            if room:
                self.queued_bytes += size
        if room:
            try:
                self.frames.put_nowait(frame)
                return
            except queue.Full:
                self._taken(frame)
        self.dropped += 1
        if self.dropped % 100 == 1:  # the first, then every hundredth
            log.warning("detect: %d frames wait to be judged (%.0f MiB); frame of %s at %s dropped unjudged (%d so "
                        "far)", self.frames.qsize(), self.queued_bytes / 2**20, frame.camera_id, frame.ts_ms,
                        self.dropped)
        self._ack(frame)

    def _taken(self, frame: Frame) -> None:
        if frame.payload is not None:
            with self._queued_lock:
                self.queued_bytes -= len(frame.payload)

    def _ack(self, frame: Frame) -> None:
        """Acknowledge an MQTT frame once judged (a pulled frame has nothing to acknowledge)."""
        mqtt = self.mqtt
        if mqtt is not None and frame.qos > 0 and frame.generation == mqtt.generation:
            mqtt.ack(frame.mid, frame.qos)

    # -- the worker: registry, leases, frames ------------------------------------------------

    def _work(self) -> None:
        try:
            self._refresh()
            next_refresh = time.monotonic() + REGISTRY_REFRESH_S
            next_renew = time.monotonic() + RENEW_S
            while not self.stop_event.is_set():
                try:
                    item = self.frames.get(timeout=0.5)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._taken(item)
                if self.renew_soon.is_set():  # connected again: lease before judging (a frame may be here first)
                    self.renew_soon.clear()
                    self._renew()
                    next_renew = time.monotonic() + RENEW_S
                if item is not None and item.reject is not None:
                    reason, detail = item.reject
                    if self._quarantine(item.topic, item.camera_id or None, reason, detail, item.payload or b""):
                        self._ack(item)
                elif item is not None and self._handle(item):
                    self._ack(item)
                now = time.monotonic()
                if now >= next_refresh:
                    self._refresh()
                    next_refresh = now + REGISTRY_REFRESH_S
                    next_renew = now + RENEW_S
                elif now >= next_renew:
                    self._renew()
                    next_renew = now + RENEW_S
        except Exception:
            log.exception("the detector worker failed")
            self.failed.set()

    def _refresh(self) -> None:
        """Reload the cameras from the registry, take free camera leases, start pulling sources."""
        rows = self._with_db(lambda conn: conn.execute(
            "SELECT id, camera, heartbeat_s FROM devices WHERE kind = 'camera' AND NOT retired"
        ).fetchall())
        if rows is GaveUp.STOPPING:
            return
        seen: set[str] = set()
        for device_id, block, heartbeat_s in rows:
            seen.add(device_id)
            if not block:
                continue
            try:
                fresh = camera_from_row(device_id, block, heartbeat_s)
            except ValueError as exc:
                log.error("%s", exc)
                continue
            old = self.cameras.get(device_id)
            if old is not None and old.config == fresh.config and old.source == fresh.source:
                old.interval_s, old.heartbeat_s = fresh.interval_s, fresh.heartbeat_s
                continue
            if old is not None:
                old.stop.set()
            self.cameras[device_id] = fresh
        for gone in set(self.cameras) - seen:
            self.cameras.pop(gone).stop.set()
        self._renew()

    def _renew(self) -> None:
        ids = sorted(self.cameras)
        away = self.broker_away_since
        if away is not None:
            # no broker: renew nothing (the leases run out for another instance); a whole lease away, let go here too
            if self.held and time.monotonic() - away >= LEASE_S:
                log.warning("detect: the broker has been away %.0f s; letting go of %d cameras", LEASE_S,
                            len(self.held))
                self._let_go(self.held)
                self.held = set()
            return
        if not ids:
            self.held = set()
            return
        rows = self._with_db(lambda conn: conn.execute(
            "INSERT INTO detector_leases AS l (camera_id, holder, expires_at)"
            " SELECT unnest(%s::text[]), %s, now() + make_interval(secs => %s)"
            " ON CONFLICT (camera_id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
            " WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()"
            " RETURNING camera_id",
            (ids, self.instance, LEASE_S),
        ).fetchall())
        if rows is GaveUp.STOPPING:
            return
        held = {r[0] for r in rows}
        self._let_go(self.held - held)
        self.held = held
        for cid in held:
            cam = self.cameras[cid]
            t = self.pullers.get(cid)
            if cam.pulled and (t is None or not t.is_alive() or cam.stop.is_set()):
                cam.stop = threading.Event()
                t = threading.Thread(target=self._pull, args=(cam,), name=f"pull-{cid}", daemon=True)
                self.pullers[cid] = t
                t.start()

    def _let_go(self, cameras: set[str]) -> None:
        for lost in cameras:
            cam = self.cameras.get(lost)
            if cam is not None:
                cam.detector = None  # another instance runs it now; start afresh if it comes back
                cam.stop.set()

    def _handle(self, frame: Frame) -> bool:
        """Judge one frame (or quarantine it); False only when stopping before the database let us."""
        cam = self.cameras.get(frame.camera_id)
        if cam is None:
            if frame.payload is not None:
                return self._quarantine(
                    frame.topic,
                    frame.camera_id,
                    Reason.UNREGISTERED_DEVICE,
                    f"camera {frame.camera_id} is not registered (or retired): import it with "
                    "gridhub registry import",
                    frame.payload,
                )
            return True
        if cam.id not in self.held:
            return True  # another instance runs this camera
        if frame.payload is not None and len(frame.payload) > MAX_FRAME:
            return self._quarantine(
                frame.topic,
                cam.id,
                Reason.OVERSIZE,
                f"frame of {len(frame.payload)} bytes is over the 2 MiB limit",
                frame.payload,
            )
        image = frame.image
        if image is None and frame.payload is not None:
            problem = frame_problem(frame.payload)  # from the header: nothing decoded yet
            image = decode_frame(frame.payload) if problem is None else None
            if image is None:
                return self._quarantine(
                    frame.topic,
                    cam.id,
                    Reason.BAD_FRAME,
                    f"frame of {len(frame.payload)} bytes is not a decodable image"
                    + (f": {problem}" if problem else ""),
                    frame.payload,
                )
        elif image is not None and image.shape[0] * image.shape[1] > FRAME_MAX_PIXELS:
            # a pulled frame, decoded by the source's reader: too large to work on
            h, w = image.shape[:2]
            return self._quarantine(frame.topic, cam.id, Reason.BAD_FRAME,
                                    f"pulled frame of {w}×{h} pixels is over {FRAME_MAX_PIXELS:,}", b"")
        if image is None:
            return True
        if cam.last_ts is not None and frame.ts_ms <= cam.last_ts:
            log.info("camera %s: frame at %s is not newer than %s; skipped", cam.id, frame.ts_ms, cam.last_ts)
            return True
        if cam.detector is None:
            detector = self._new_detector(cam)
            if detector is None:
                return False
            cam.detector = detector
        result = cam.detector.process(image, frame.ts_ms)
        self._keep_scene(cam, frame.ts_ms)
        cam.last_ts = frame.ts_ms
        self.processed += 1
        for event in result.events:
            evidence_id = self._store_evidence(cam, frame, image, event.boxes, event.type)
            detail: dict[str, Any] = {"occupancy": round(event.occupancy, 4)}
            if evidence_id:
                detail["evidence_id"] = evidence_id
            self._publish(cam, frame.ts_ms, event.type, detail)
        if cam.last_heartbeat_ms is None or frame.ts_ms - cam.last_heartbeat_ms >= cam.heartbeat_s * 500:
            self._publish(cam, frame.ts_ms, "heartbeat", {"source": "pulled" if cam.pulled else "mqtt"})
            cam.last_heartbeat_ms = frame.ts_ms
        return True

    # -- the learned clear scene, kept across restarts -------------------------------------------

    def _new_detector(self, cam: Camera) -> ExitDetector | None:
        """The camera's detector with its kept clear scene; None when stopping before the database answered."""
        detector = ExitDetector(cam.config)
        row = self._with_db(lambda conn: conn.execute("SELECT data FROM detector_scenes WHERE camera_id = %s",
                                                      (cam.id,)).fetchone())
        if row is GaveUp.STOPPING:
            return None
        if row is not None:
            detector.restore_scene(bytes(row[0]))
        cam.saved_version = 0
        cam.saved_ms = 0
        return detector

    def _keep_scene(self, cam: Camera, ts_ms: int) -> None:
        det = cam.detector
        assert det is not None
        if det.scene_version == 0:
            return
        if det.scene_version == cam.saved_version and ts_ms - cam.saved_ms < SCENE_SAVE_S * 1000:
            return
        data = det.saved_scene()
        fingerprint = det.fingerprint()
        cam.saved_version, cam.saved_ms = det.scene_version, ts_ms
        if data is None or fingerprint is None:
            return
        try:
            self._with_db(lambda conn: conn.execute(
                "INSERT INTO detector_scenes (camera_id, fingerprint, data) VALUES (%s, %s, %s)"
                " ON CONFLICT (camera_id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
                " data = EXCLUDED.data, saved_at = now()",
                (cam.id, fingerprint, data),
            ))
        except psycopg.Error as exc:
            log.error("camera %s: clear scene not kept (%s); a restart would learn it again", cam.id, exc)

    # -- out -------------------------------------------------------------------------------

    def _publish(self, cam: Camera, ts_ms: int, type_: str, detail: dict[str, Any]) -> None:
        assert self.mqtt is not None
        cam.seq += 1
        payload = json.dumps({"ts": ts_ms, "seq": cam.seq, "type": type_, "detail": detail})
        # on NATS: the camera's partition's event topic, where its own events are mapped (the detector user may
        # publish there only, for registered cameras)
        where = (camera_event_topic(self.prefix, cam.id, self.partitions) if self.nats
                 else device_topic(self.prefix, cam.id, "event"))
        self.mqtt.publish(where, payload, qos=1)
        self.published += 1
        if type_ != "heartbeat":
            log.info("camera %s: %s at %s %s", cam.id, type_, ts_ms, detail)

    def _store_evidence(
        self, cam: Camera, frame: Frame, image: np.ndarray, boxes: list[Any], type_: str
    ) -> str | None:
        full = decode_frame(frame.payload, reduced=False) if frame.payload is not None else image
        if full is None:
            full = image
        jpeg = render_evidence(full, cam.config.roi, boxes, label=f"{cam.id} {type_}")
        evidence_id = f"ev-{uuid.uuid4().hex}"
        try:
            stored = self._with_db(lambda conn: conn.execute(
                "INSERT INTO evidence (id, device_id, kind, content_type, data, created_by)"
                " VALUES (%s, %s, 'detection', 'image/jpeg', %s, 'detector')",
                (evidence_id, cam.id, jpeg),
            ))
        except psycopg.Error as exc:
            log.error("camera %s: evidence not stored (%s); the event goes out without it", cam.id, exc)
            return None
        return None if stored is GaveUp.STOPPING else evidence_id

    def _quarantine(
        self, topic: str, device_id: str | None, reason: Reason, detail: str, payload: bytes
    ) -> bool:
        """Keep a refused frame in the quarantine; False when stopping before the database let us."""
        if self._with_db(lambda conn: quarantine(conn, topic, device_id, reason, detail, payload)) is GaveUp.STOPPING:
            return False
        log.warning("quarantined a frame on %s: %s (%s)", topic, reason.value, detail)
        return True

    # -- pulled sources ----------------------------------------------------------------------

    def _pull(self, cam: Camera) -> None:
        """Read a frame from the camera's source every ``interval_s`` until told to stop."""
        try:
            url = open_source(cam.source, self.settings.camera_files_dir)
        except ValueError as exc:
            log.error("camera %s: %s; not pulling", cam.id, exc)
            return
        reader = SourceReader(url)
        failures = 0
        while not cam.stop.is_set() and not self.stop_event.is_set():
            started = time.monotonic()
            image = reader.read(cam.interval_s)
            now_ms = int(time.time() * 1000)
            if image is None:
                failures += 1
                if failures == VIDEO_LOSS_AFTER and not cam.video_lost:
                    cam.video_lost = True
                    self._queue_event(cam, now_ms, "video_loss", {"source": _redact(url)})
            else:
                if cam.video_lost:
                    cam.video_lost = False
                    self._queue_event(cam, now_ms, "video_restored", {})
                failures = 0
                self._enqueue(Frame(cam.id, now_ms, None, image=image, topic=f"pull:{cam.id}"))
            cam.stop.wait(max(0.0, cam.interval_s - (time.monotonic() - started)))
        reader.close()

    def _queue_event(self, cam: Camera, ts_ms: int, type_: str, detail: dict[str, Any]) -> None:
        # published from the puller thread: paho's publish is thread-safe, the seq is per camera
        self._publish(cam, ts_ms, type_, detail)


class SourceReader:
    """Frames from an OpenCV source: a video file is read at ``interval_s`` of its own time and
    looped; a stream is kept open and its latest frame taken; an HTTP snapshot is fetched anew."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_file = "://" not in url or url.startswith("file://")
        self.snapshot = url.startswith(("http://", "https://")) and not url.endswith((".mjpg", ".mjpeg"))
        self.cap: cv2.VideoCapture | None = None
        self.pos_ms = 0.0

    def _open(self) -> cv2.VideoCapture | None:
        path = self.url.removeprefix("file://")
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def read(self, interval_s: float) -> np.ndarray | None:
        if self.snapshot:
            cap = self._open()
            if cap is None:
                return None
            ok, img = cap.read()
            cap.release()
            return img if ok else None
        if self.cap is None:
            self.cap = self._open()
            if self.cap is None:
                return None
        if self.is_file:
            self.cap.set(cv2.CAP_PROP_POS_MSEC, self.pos_ms)
            ok, img = self.cap.read()
            if not ok:  # the end: start again, the camera stays alive
                self.pos_ms = 0.0
                self.cap.set(cv2.CAP_PROP_POS_MSEC, 0.0)
                ok, img = self.cap.read()
            self.pos_ms += interval_s * 1000
            return img if ok else None
        ok, img = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = None
            return None
        return img

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def run(settings: Settings) -> None:
    """Run the detectors until SIGTERM or SIGINT."""
    service = DetectService(settings)

    def report(elapsed: float) -> None:
        log.info("detect: %d cameras held, %d frames judged, %d events published",
                 len(service.held), service.processed, service.published)

    run_until_signalled(service, "detect", report=report, report_every_s=60, log=log)
