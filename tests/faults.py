"""Helpers for the fault tests: a TCP proxy of PostgreSQL that a test cuts and restores (a database outage of the
real database, not a stand-in for it), consecutive free ports for `gridhub up`'s health endpoints, and a part's
health answer; a hub on a private mosquitto (persistence on) that a test stops, restarts and stops at the end,
devices streaming readings at QoS 1 that resend what the broker has not acknowledged, and what of their stream is
stored (the distinct (device, seq), the rows, what is missing)."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import paho.mqtt.client as paho
import psycopg
from ingest_env import SECRET, Hub, make_hub, topic
from paho.mqtt.enums import CallbackAPIVersion
from polling import wait_for

from gridhub.accounts import derived_password

CONFIRM_S = 15.0  # how long a device waits for a chunk's PUBACKs before it sends the rest again
STALL_S = 45.0  # how long the stored count may stand still before the test counts what is missing
BROKER_DOWN_S = 3.0  # a restart that takes a moment: the devices' and ingest's reconnect attempts fail meanwhile
# the devices of tests/data/registry.yaml that `stream` publishes from, each with the metric it reports
STREAM_METRICS = {"sa-0001": "battery_pct", "sa-0002": "battery_pct", "sa-0201": "temperature_c",
                  "sp-0001": "pressure_mpa", "sp-0201": "pressure_mpa"}
STREAM_CHUNK = 500  # readings a `stream` device publishes before it waits for their PUBACKs


class DbProxy:
    """A TCP relay to PostgreSQL on a port of its own; `cut()` closes every relayed connection and stops listening
    (new connections are refused), `restore()` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self.port = lst.getsockname()[1]
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Carry one connection both ways (a subclass may carry it otherwise)."""
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() in progress, which close() alone leaves running
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def url(self, db_url: str) -> str:
        parts = urlsplit(db_url)
        creds = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{creds}127.0.0.1:{self.port}"))

    @classmethod
    def of(cls, db_url: str) -> DbProxy:
        """A proxy of the PostgreSQL that `db_url` names."""
        target = urlsplit(db_url)
        return cls((target.hostname or "127.0.0.1", target.port or 5432))


def free_ports(n: int) -> int:
    """The first of `n` consecutive free ports, below the kernel's ephemeral range (from 32768): a port taken from
    that range can be handed to an outgoing connection (the test's own, the proxy's) before the part binds it."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        held: list[socket.socket] = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise AssertionError("no run of free ports")


def health(port: int) -> tuple[int, dict[str, Any]] | None:
    """(status, body) of a part's /healthz, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:  # noqa: S310 - local
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def private_hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    """A hub of the test's own (database, and a private mosquitto with persistence), its broker stopped at the end."""
    hub = make_hub(make_database, tmp_path)
    try:
        yield hub
    finally:
        hub.broker.stop()


def restart_broker(hub: Hub, down_s: float = BROKER_DOWN_S, while_down: Callable[[], object] = lambda: None) -> None:
    """A graceful restart of the hub's mosquitto: SIGTERM (it writes its persistence file and exits), `while_down`,
    down for `down_s`, started again on the same port."""
    hub.broker.stop()
    while_down()
    time.sleep(down_s)
    hub.broker.ensure_started()


class ResendingDevice(threading.Thread):
    """One device publishing readings seq 0, 1, ... of `metric` (`value(seq)`) at QoS 1 on its own account, `chunk`
    at a time, until `count` or `stop`, like the firmware: a reading counts as sent only once the broker has
    acknowledged it; what was not acknowledged (the connection dropped, the broker went away) is sent again after
    reconnecting. With a `rate` (readings/s) a chunk's first round is spread over its time (a fault finds some in
    flight, some not yet sent); what is sent again is sent at once. `sent`: the readings (seq 0 .. sent - 1) the
    device has begun to publish; `confirmed`: the distinct readings acknowledged; `resent`: publishes sent again."""

    def __init__(self, hub: Hub, device: str, metric: str, value: Callable[[int], float], base_ms: int, *,
                 chunk: int, count: int, rate: float | None = None, stop: threading.Event | None = None) -> None:
        super().__init__(name=f"device-{device}", daemon=True)
        self.device, self.metric, self.value, self.base_ms = device, metric, value, base_ms
        self.chunk, self.count, self.rate = chunk, count, rate
        self.stop = stop or threading.Event()
        self.sent = 0
        self.confirmed = 0
        self.resent = 0
        self.error: BaseException | None = None
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device}-{uuid.uuid4().hex[:6]}",
                             protocol=paho.MQTTv311)
        client.username_pw_set(device, derived_password(SECRET, "device", device))
        client.max_inflight_messages_set(chunk)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(1, 2)
        client.connect("127.0.0.1", hub.broker.port, keepalive=10)
        client.loop_start()
        self.client = client

    def _payload(self, seq: int) -> bytes:
        return orjson.dumps({"ts": self.base_ms + 2 * seq, "seq": seq, "metrics": {self.metric: self.value(seq)}})

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.sent < self.count:
                began = time.monotonic()
                pending = list(range(self.sent, min(self.sent + self.chunk, self.count)))
                self.sent = pending[-1] + 1
                first = True
                while pending:
                    wait_for(self.client.is_connected, 120, f"{self.device} connected to the broker", interval=0.05)
                    if not first:
                        self.resent += len(pending)
                    infos = []
                    for n, seq in enumerate(pending):
                        infos.append((seq, self.client.publish(topic(self.device), self._payload(seq), qos=1)))
                        if first and self.rate:
                            time.sleep(max(0.0, began + (n + 1) / self.rate - time.monotonic()))
                    first = False
                    deadline = time.monotonic() + CONFIRM_S
                    left = [seq for seq, info in infos if not _acknowledged(info, deadline)]
                    self.confirmed += len(pending) - len(left)
                    pending = left
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.client.disconnect()
            self.client.loop_stop()


def _acknowledged(info: paho.MQTTMessageInfo, deadline: float) -> bool:
    """Whether the broker acknowledged the publish by `deadline` (False when paho could not send it: not connected,
    or the connection dropped under it)."""
    try:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


def stream(hub: Hub, total: int, base_ms: int) -> list[ResendingDevice]:
    """`total` readings from the devices of STREAM_METRICS (as many each), publishing as fast as acknowledged."""
    devices = [ResendingDevice(hub, device, metric, lambda seq: (seq % 90) / 100, base_ms, chunk=STREAM_CHUNK,
                               count=total // len(STREAM_METRICS)) for device, metric in STREAM_METRICS.items()]
    for dev in devices:
        dev.start()
    return devices


def join_devices(devices: list[ResendingDevice], timeout: float = 600) -> None:
    """The devices done publishing (within `timeout` each), none failed."""
    for dev in devices:
        dev.join(timeout)
        assert not dev.is_alive(), f"{dev.device} still publishing after {timeout:.0f} s"
        assert dev.error is None, f"{dev.device}: {dev.error!r}"


def one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def distinct(conn: psycopg.Connection[Any]) -> int:
    """The distinct readings stored: (device, seq) once each."""
    return one(conn, "SELECT count(DISTINCT (device_id, seq)) FROM readings")


def rows(conn: psycopg.Connection[Any]) -> int:
    return one(conn, "SELECT count(*) FROM readings")


def wait_stored(conn: psycopg.Connection[Any], total: int) -> int:
    """The distinct readings stored once all `total` are, or once none has been added for STALL_S."""
    stored, since = distinct(conn), time.monotonic()
    while stored < total and time.monotonic() - since < STALL_S:
        time.sleep(0.5)
        if (now := distinct(conn)) != stored:
            stored, since = now, time.monotonic()
    return stored


def missing(conn: psycopg.Connection[Any], devices: list[ResendingDevice]) -> dict[str, str]:
    """The sequence numbers sent and not stored, by device, as ranges (the first 20 ranges of each)."""
    out: dict[str, str] = {}
    for dev in devices:
        found = conn.execute(
            "SELECT min(s), max(s) FROM (SELECT s, s - row_number() OVER (ORDER BY s) AS grp FROM generate_series(0, "
            "%s - 1) s WHERE NOT EXISTS (SELECT 1 FROM readings WHERE device_id = %s AND seq = s)) m "
            "GROUP BY grp ORDER BY 1 LIMIT 20", (dev.sent, dev.device)).fetchall()
        if found:
            out[dev.device] = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in found)
    return out


def published_is_stored(conn: psycopg.Connection[Any], devices: list[ResendingDevice], total: int,
                        logs: list[Path]) -> None:
    """Once the devices are done: they published `total`, and exactly that is stored, every (device, seq) once (on
    failure, what is missing and the tails of `logs`)."""
    join_devices(devices)
    published = sum(dev.confirmed for dev in devices)
    assert published == total
    stored = wait_stored(conn, total)
    resent = sum(dev.resent for dev in devices)
    tails = "\n".join(f"--- {lg.name}\n{lg.read_text(errors='replace')[-3000:]}" for lg in logs)
    assert stored == published, (f"published {published}, stored {stored} (resent {resent}); missing by device: "
                                 f"{missing(conn, devices)}\n{tails}")
    assert rows(conn) == stored, "a reading was stored twice"


def stop_ingest(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    """The exit code of an ingest process stopped with SIGTERM (woken first, should it be stopped with
    SIGSTOP); it fails the test if the process does not exit within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"ingest (pid {proc.pid}) did not stop within {timeout:.0f} s") from None
