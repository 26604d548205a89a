"""Virtual devices of every kind living their normal life: log in, report at their interval, cameras send frames.

A `DevicePool` owns the devices' connections; a scenario may hold some devices for a while, and their normal
life pauses until it lets them go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt

from gridhub.protocol import BrokerAddress, DeviceKind
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings
from gridhub.simulators.behaviour import steady_metrics
from gridhub.simulators.fleet import DeviceAccounts, DeviceSpec
from gridhub.simulators.link import DeviceLink

log = logging.getLogger("gridhub.simulators.devices")

CONNECT_CONCURRENCY = 64


def now_ms() -> int:
    return int(time.time() * 1000)


class DevicePool:
    """The connections of the virtual devices, opened on first use, shared by normal life and scenarios."""

    def __init__(self, target: BrokerAddress, accounts: DeviceAccounts, *, prefix: str = DEFAULT_TOPIC_PREFIX,
                 v5: bool = True):
        self.target = target
        self.accounts = accounts
        self.prefix = prefix
        self.v5 = v5
        self.links: dict[str, DeviceLink] = {}
        self.held: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self._gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    def existing(self, device_id: str) -> DeviceLink:
        link = self.links.get(device_id)
        if link is None:
            link = DeviceLink(self.target, device_id, self.accounts.password(device_id), prefix=self.prefix,
                              v5=self.v5)
            self.links[device_id] = link
        return link

    async def link(self, device_id: str, *, announce: bool = True) -> DeviceLink:
        """The device's connection, logged in (with `online` announced) if it was not."""
        link = self.existing(device_id)
        if not link.connected:
            async with self._gate:
                await link.connect(announce=announce)
            self.counts["connects"] += 1
        return link

    def hold(self, ids: Iterable[str]) -> None:
        for i in ids:
            self.held[i] += 1

    def release(self, ids: Iterable[str]) -> None:
        for i in ids:
            self.held[i] -= 1
            if self.held[i] <= 0:
                del self.held[i]

    def is_held(self, device_id: str) -> bool:
        return self.held[device_id] > 0

    async def close_all(self, *, say_offline: bool = True) -> None:
        """Every device logs off: `offline` (retained), then a clean DISCONNECT."""

        async def bye(link: DeviceLink) -> None:
            if say_offline and link.connected:
                with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                    await link.status("offline")
            await link.close()

        await asyncio.gather(*(bye(link) for link in self.links.values()), return_exceptions=True)


CLEAR_START_S = 40.0


def camera_scene(device: DeviceSpec, duration_s: float = 600.0, *, obstacles: int = 0) -> Any:
    """The camera's corridor (same seed, same corridor every time), or None without the scene generator.
    Nobody walks through it in the first `CLEAR_START_S` seconds: a detector without a reference image learns
    the clear corridor from its first frames (CONTRACT §3), which must then be clear."""
    try:
        from gridhub.simulators import scenes
    except ImportError:
        return None
    cam = device.camera or {}
    seed = zlib.crc32(device.id.encode()) % 100_000
    scene = scenes.generate_scene(seed, duration_s=duration_s, fps_interval_s=float(cam.get("interval_s", 5)),
                                  min_blocked_s=float(cam.get("min_blocked_s", 60)), lighting=False, crowd=False,
                                  obstacles=obstacles, short_obstacles=0, roi=cam.get("roi"))
    scene.walkers = [w for w in scene.walkers if w.start_s > CLEAR_START_S]
    return scene


def encode_jpeg(scene: Any, t_s: float) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", scene.render(t_s), [cv2.IMWRITE_JPEG_QUALITY, scene.jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf.tobytes())


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep; True when asked to stop meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    return stop.is_set()


async def live(pool: DevicePool, device: DeviceSpec, stop: asyncio.Event, tz: ZoneInfo,
               spread_s: float = 20.0) -> None:
    """One device's normal life: report every interval (a reading, or a camera's `heartbeat` event); the
    first report comes within `spread_s`, so that a fleet does not log in all at once."""
    rng = random.Random(device.id)
    interval = device.interval_s
    if await _sleep_or_stop(stop, rng.uniform(0, min(interval, spread_s))):
        return
    backoff = 1.0
    while not stop.is_set():
        if not pool.is_held(device.id):
            try:
                link = await pool.link(device.id)
                ts = now_ms()
                if device.kind == DeviceKind.CAMERA:
                    await link.event(ts, "heartbeat")
                    pool.counts["events"] += 1
                else:
                    await link.reading(ts, steady_metrics(device, ts, rng, tz))
                    pool.counts["readings"] += 1
                backoff = 1.0
            except aiomqtt.MqttError as exc:
                pool.counts["errors"] += 1
                log.warning("%s: %s; retrying in %.0f s", device.id, exc, backoff)
                if await _sleep_or_stop(stop, backoff):
                    return
                backoff = min(backoff * 2, 60.0)
                continue
        if await _sleep_or_stop(stop, interval):
            return


async def film(pool: DevicePool, device: DeviceSpec, stop: asyncio.Event) -> None:
    """A camera's frames of its clear corridor, every `interval_s`, while no scenario holds it."""
    scene = await asyncio.to_thread(camera_scene, device)
    if scene is None:
        return
    interval = float((device.camera or {}).get("interval_s", 5))
    t0 = time.monotonic()
    while not stop.is_set():
        if not pool.is_held(device.id):
            try:
                link = await pool.link(device.id)
                jpeg = await asyncio.to_thread(encode_jpeg, scene, (time.monotonic() - t0) % scene.duration_s)
                await link.frame(now_ms(), jpeg)
                pool.counts["frames"] += 1
            except aiomqtt.MqttError as exc:
                pool.counts["errors"] += 1
                log.debug("%s: frame not sent: %s", device.id, exc)
        if await _sleep_or_stop(stop, interval):
            return


def films_cameras(device: DeviceSpec) -> bool:
    return device.kind == DeviceKind.CAMERA and (device.camera or {}).get("source", "mqtt") == "mqtt"


def scene_generator_available() -> bool:
    try:
        from gridhub.simulators import scenes  # noqa: F401
    except ImportError:
        return False
    return True


async def run_life(pool: DevicePool, devices: list[DeviceSpec], stop: asyncio.Event, *,
                   timezone: str | None = None, frames: bool = True, spread_s: float = 20.0) -> None:
    """Every device's normal life until `stop` is set."""
    tz = ZoneInfo(timezone or Settings().timezone)
    tasks = [asyncio.create_task(live(pool, d, stop, tz, spread_s)) for d in devices]
    cameras = [d for d in devices if films_cameras(d)]
    if cameras and frames:
        if scene_generator_available():
            tasks += [asyncio.create_task(film(pool, d, stop)) for d in cameras]
        else:
            log.info("no camera scene generator (simulators/scenes.py): %d cameras send heartbeats but no frames",
                     len(cameras))
    await asyncio.gather(*tasks)


async def run_fleet(target: BrokerAddress, accounts: DeviceAccounts, devices: list[DeviceSpec], *,
                    prefix: str = DEFAULT_TOPIC_PREFIX, v5: bool = True, duration_s: float | None = None,
                    spread_s: float = 20.0) -> dict[str, Any]:
    """`gridhub simulate devices`: play the devices until Ctrl-C or `duration_s`; a summary of what was sent."""
    pool = DevicePool(target, accounts, prefix=prefix, v5=v5)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if duration_s:
        loop.call_later(duration_s, stop.set)
    log.info("playing %d devices on %s:%d", len(devices), target.host, target.port)
    started = time.monotonic()
    await run_life(pool, devices, stop, spread_s=spread_s)
    await pool.close_all()
    return {"devices": len(devices), "connects": pool.counts["connects"], "readings": pool.counts["readings"],
            "events": pool.counts["events"], "frames": pool.counts["frames"], "errors": pool.counts["errors"],
            "elapsed_s": round(time.monotonic() - started, 1)}
