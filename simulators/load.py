"""The load generator: valid telemetry for registered devices at a total rate, with live progress and a summary.

Each device has its own connection and account when device accounts are known; otherwise the devices are
multiplexed over a few connections of the account in the broker URL (the hub's, for benchmarks). asyncio on
epoll, so thousands of connections do not meet select()'s limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import random
import resource
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.protocol import BrokerAddress, DeviceKind, device_topic
from gridhub.settings import DEFAULT_TIMEZONE, DEFAULT_TOPIC_PREFIX
from gridhub.simulators.behaviour import steady_metrics
from gridhub.simulators.fleet import DeviceAccounts, DeviceSpec

log = logging.getLogger("gridhub.simulators.load")

DRAIN_TIMEOUT_S = 15.0


@dataclass
class LoadPlan:
    target: BrokerAddress
    devices: list[DeviceSpec]
    rate: float  # messages per second, all devices together
    duration_s: float
    accounts: DeviceAccounts | None  # None: multiplex over the URL's account
    connections: int = 4
    window: int = 64  # unacknowledged messages per connection
    qos: int = 1
    v5: bool = True
    prefix: str = DEFAULT_TOPIC_PREFIX
    timezone: str = DEFAULT_TIMEZONE


@dataclass
class LoadTally:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    connect_errors: int = 0
    connected: int = 0
    last_ack: float = 0.0
    first_error: str | None = None

    def error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{what}: {exc}"


@dataclass
class _Lane:
    """One connection and the devices it speaks for."""

    client_id: str
    target: BrokerAddress
    devices: list[DeviceSpec]
    rate: float
    seq: dict[str, int] = field(default_factory=dict)


def telemetry_devices(devices: list[DeviceSpec]) -> list[DeviceSpec]:
    """The devices that report metrics (cameras send frames, not telemetry)."""
    return [d for d in devices if not d.retired and d.kind != DeviceKind.CAMERA]


def plan_lanes(plan: LoadPlan) -> list[_Lane]:
    n = len(plan.devices)
    if plan.accounts is not None:
        return [_Lane(f"sim-load-{d.id}", plan.target.as_account(d.id, plan.accounts.password(d.id)), [d],
                      plan.rate / n) for d in plan.devices]
    k = max(1, min(plan.connections, n))
    groups: list[list[DeviceSpec]] = [plan.devices[i::k] for i in range(k)]
    return [_Lane(f"sim-load-{i}-{random.randrange(1 << 30):x}", plan.target, g, plan.rate * len(g) / n)
            for i, g in enumerate(groups)]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class PahoOnLoop:
    """A paho client driven by the asyncio loop (epoll): socket callbacks add readers and writers, and
    `on_publish` counts acknowledgements, so a publish costs one paho call and no task or future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: BrokerAddress, client_id: str, *, v5: bool,
                 window: int, tally: LoadTally):
        self.loop = loop
        self.tally = tally
        self.acked = 0
        self._thread = threading.get_ident()
        self.connected: asyncio.Future[None] = loop.create_future()
        kwargs: dict[str, Any] = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": client_id,
                                  "protocol": paho.MQTTv5 if v5 else paho.MQTTv311}
        self.client = paho.Client(**kwargs)
        if target.username:
            self.client.username_pw_set(target.username, target.password)
        if target.tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.max_inflight_messages_set(window)
        self.client.on_socket_open = self._on_open
        self.client.on_socket_close = self._on_close
        self.client.on_socket_register_write = self._on_want_write
        self.client.on_socket_unregister_write = self._on_done_write
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._target = target
        self._misc: asyncio.Task[None] | None = None

    def _soon(self, fn: Any, *args: Any) -> None:
        if threading.get_ident() == self._thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _on_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._soon(self.loop.add_reader, sock, client.loop_read)

    def _on_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._soon(self.loop.remove_reader, sock)

    def _on_want_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._soon(self.loop.add_writer, sock, client.loop_write)

    def _on_done_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._soon(self.loop.remove_writer, sock)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if self.connected.done():
            return
        if getattr(rc, "is_failure", False):
            self.connected.set_exception(ConnectionRefusedError(f"the broker refused the log-in: {rc}"))
        else:
            self.connected.set_result(None)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError(f"disconnected before the log-in completed: {rc}"))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            self.tally.error("publish refused by the broker", RuntimeError(str(rc)))
        else:
            self.acked += 1
            self.tally.acked += 1
            self.tally.last_ack = time.monotonic()

    async def connect(self) -> None:
        await self.loop.run_in_executor(None, self.client.connect, self._target.host, self._target.port, 60)
        self._misc = asyncio.create_task(self._housekeeping())
        await asyncio.wait_for(self.connected, 30)

    async def _housekeeping(self) -> None:
        while self.client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    async def close(self) -> None:
        """DISCONNECT, give the loop a moment to send it, then detach from the loop for good."""
        self.client.disconnect()
        for _ in range(100):
            if self.client.socket() is None:
                break
            await asyncio.sleep(0.01)
        if self._misc:
            self._misc.cancel()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(sock)
                self.loop.remove_writer(sock)
        for callback in ("on_socket_open", "on_socket_close", "on_socket_register_write",
                         "on_socket_unregister_write"):
            setattr(self.client, callback, None)


async def _run_lane(lane: _Lane, plan: LoadPlan, tally: LoadTally, start: asyncio.Event, stop_at: list[float],
                    connect_gate: asyncio.Semaphore) -> None:
    tz = ZoneInfo(plan.timezone)
    rng = random.Random(lane.client_id)
    topics = {d.id: device_topic(plan.prefix, d.id, "telemetry") for d in lane.devices}
    conn = PahoOnLoop(asyncio.get_running_loop(), lane.target, lane.client_id, v5=plan.v5, window=plan.window,
                      tally=tally)
    try:
        async with connect_gate:
            await conn.connect()
    except (TimeoutError, OSError, ConnectionError) as exc:
        tally.connect_errors += 1
        if tally.first_error is None:
            tally.first_error = f"connect as {lane.target.username}: {exc}"
        await conn.close()
        return
    tally.connected += 1
    backlog = plan.window * 4  # queued beyond the in-flight window before the lane waits for acks
    try:
        await start.wait()
        t0 = time.monotonic()
        issued = 0
        i = 0
        tick = min(0.02, max(0.002, 1.0 / lane.rate)) if lane.rate > 0 else 0.02
        while True:
            now = time.monotonic()
            if now >= stop_at[0]:
                break
            due = int((now - t0) * lane.rate) + 1 - issued
            room = backlog - (issued - conn.acked) if plan.qos else due
            for _ in range(max(0, min(due, room))):
                dev = lane.devices[i % len(lane.devices)]
                i += 1
                seq = lane.seq.get(dev.id, 0) + 1
                lane.seq[dev.id] = seq
                ts = int(time.time() * 1000)
                payload = orjson.dumps({"ts": ts, "seq": seq, "metrics": steady_metrics(dev, ts, rng, tz)})
                info = conn.client.publish(topics[dev.id], payload, qos=plan.qos)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    tally.error("publish", RuntimeError(paho.error_string(info.rc)))
                    continue
                tally.sent += 1
                issued += 1
                if plan.qos == 0:
                    conn.acked += 1
                    tally.acked += 1
            await asyncio.sleep(tick)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while plan.qos and conn.acked < issued and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if conn.acked < issued:
            tally.error("no acknowledgement", TimeoutError(f"{issued - conn.acked} messages unacknowledged after "
                                                           f"{DRAIN_TIMEOUT_S:.0f} s"))
    finally:
        await conn.close()


async def _report(tally: LoadTally, lanes: int, out: TextIO, done: asyncio.Event) -> None:
    tty = out.isatty()
    last_sent, last_t = 0, time.monotonic()
    every = 1.0 if tty else 5.0
    while not done.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), every)
        now = time.monotonic()
        rate = (tally.sent - last_sent) / max(1e-6, now - last_t)
        last_sent, last_t = tally.sent, now
        line = (f"sent {tally.sent} acked {tally.acked} rate {rate:.0f}/s errors {tally.errors + tally.connect_errors}"
                f" connections {tally.connected}/{lanes}")
        out.write(("\r" + line + "   ") if tty else line + "\n")
        out.flush()
    if tty:
        out.write("\n")


async def _mirror(tally: LoadTally, shared: Any, done: asyncio.Event) -> None:
    """Copy the tally into a shared array (for the parent of several load processes)."""
    while True:
        shared[:] = [tally.sent, tally.acked, tally.errors, tally.connect_errors, tally.connected]
        if done.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), 0.25)


async def run_load(plan: LoadPlan, progress: TextIO | None = None, *, quiet: bool = False,
                   shared: Any = None) -> dict[str, Any]:
    """Publish for `plan.duration_s` seconds; the summary counts sent, acknowledged and failed messages.
    Progress goes to `progress` (default stderr) unless `quiet`."""
    out = None if quiet else (progress or sys.stderr)
    if not plan.devices:
        raise ValueError("no devices to publish for")
    _raise_fd_limit()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="sim-connect"))
    lanes = plan_lanes(plan)
    tally = LoadTally()
    start = asyncio.Event()
    stop_at = [float("inf")]
    gate = asyncio.Semaphore(64)
    tasks = [asyncio.create_task(_run_lane(lane, plan, tally, start, stop_at, gate)) for lane in lanes]
    # all connections first, then the clock starts
    connect_started = time.monotonic()
    while tally.connected + tally.connect_errors < len(lanes) and time.monotonic() - connect_started < 120:
        await asyncio.sleep(0.05)
    connect_s = time.monotonic() - connect_started
    done = asyncio.Event()
    t0 = time.monotonic()
    stop_at[0] = t0 + plan.duration_s
    reporter = asyncio.create_task(_report(tally, len(lanes), out, done)) if out else None
    mirror = asyncio.create_task(_mirror(tally, shared, done)) if shared is not None else None
    start.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.monotonic() - t0
    done.set()
    if reporter:
        await reporter
    if mirror:
        await mirror
    publish_s = min(elapsed, plan.duration_s)
    ack_s = max(publish_s, tally.last_ack - t0)
    return {
        "mode": "per-device" if plan.accounts is not None else "multiplexed",
        "devices": len(plan.devices),
        "connections": len(lanes),
        "connected": tally.connected,
        "qos": plan.qos,
        "target_rate": plan.rate,
        "duration_s": plan.duration_s,
        "connect_s": round(connect_s, 3),
        "elapsed_s": round(elapsed, 3),
        "sent": tally.sent,
        "acked": tally.acked,
        "errors": tally.errors,
        "connect_errors": tally.connect_errors,
        "sent_per_s": round(tally.sent / publish_s, 1) if publish_s > 0 else 0.0,
        "acked_per_s": round(tally.acked / ack_s, 1) if ack_s > 0 else 0.0,
        "first_error": tally.first_error,
    }


def _load_process(plan: LoadPlan, shared: Any, results: Any) -> None:
    results.put(asyncio.run(run_load(plan, quiet=True, shared=shared)))


def run_load_processes(plan: LoadPlan, processes: int, progress: TextIO | None = None) -> dict[str, Any]:
    """The same load split over several processes (one Python process is the limit near 11k QoS 1 msgs/s),
    the devices dealt out round-robin; one progress line and one summary for all."""
    import multiprocessing as mp

    if processes <= 1:
        return asyncio.run(run_load(plan, progress))
    out = progress or sys.stderr
    ctx = mp.get_context("spawn")
    n = len(plan.devices)
    k = min(processes, n)
    arrays = [ctx.Array("q", 5) for _ in range(k)]
    results = ctx.Queue()
    procs = []
    for i in range(k):
        devices = plan.devices[i::k]
        sub = dataclasses.replace(plan, devices=devices, rate=plan.rate * len(devices) / n,
                                  connections=max(1, plan.connections // k))
        proc = ctx.Process(target=_load_process, args=(sub, arrays[i], results), name=f"gridhub-load-{i}")
        proc.start()
        procs.append(proc)
    tty = out.isatty()
    every = 1.0 if tty else 5.0
    last_sent, last_t = 0, time.monotonic()
    summaries: list[dict[str, Any]] = []
    while len(summaries) < k:
        try:
            summaries.append(results.get(timeout=every))
            continue
        except queue.Empty:
            pass
        if not any(p.is_alive() for p in procs):
            break
        sums = [sum(a[j] for a in arrays) for j in range(5)]
        now = time.monotonic()
        rate = (sums[0] - last_sent) / max(1e-6, now - last_t)
        last_sent, last_t = sums[0], now
        line = (f"sent {sums[0]} acked {sums[1]} rate {rate:.0f}/s errors {sums[2] + sums[3]} "
                f"connections {sums[4]} in {k} processes")
        out.write(("\r" + line + "   ") if tty else line + "\n")
        out.flush()
    if tty:
        out.write("\n")
    for proc in procs:
        proc.join(30)
    if len(summaries) < k:
        raise RuntimeError(f"{k - len(summaries)} of {k} load processes died without a summary")
    total: dict[str, Any] = dict(summaries[0])
    for key in ("devices", "connections", "connected", "sent", "acked", "errors", "connect_errors", "sent_per_s",
                "acked_per_s"):
        total[key] = round(sum(sm[key] for sm in summaries), 1) if "per_s" in key else sum(sm[key] for sm in summaries)
    for key in ("connect_s", "elapsed_s"):
        total[key] = max(sm[key] for sm in summaries)
    total["target_rate"] = plan.rate
    total["processes"] = k
    total["first_error"] = next((sm["first_error"] for sm in summaries if sm["first_error"]), None)
    return total
