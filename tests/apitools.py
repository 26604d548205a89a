"""Fixtures for the API tests: the real app served by uvicorn on a free port, and a token per registry worker."""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from gridhub.api.app import create_app
from gridhub.settings import Settings

ROLES_BY_WORKER = {"w-001": "grid_worker", "w-002": "grid_head", "w-003": "grid_worker", "w-004": "grid_head",
                   "s-001": "street_officer", "b-001": "bureau", "a-001": "admin"}
ALL_WORKERS = tuple(ROLES_BY_WORKER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningApi:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve(settings: Settings, app: Any = None) -> RunningApi:
    """The app (default: `create_app(settings)`) under uvicorn in a thread, as `gridhub api` serves it
    (api/logredact.uvicorn_options: tokens out of the logs, proxy headers from GRIDHUB_TRUSTED_PROXIES only)."""
    from gridhub.api.logredact import uvicorn_options

    port = free_port()
    config = uvicorn.Config(app if app is not None else create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning", timeout_graceful_shutdown=2, lifespan="on",
                            **uvicorn_options(settings.trusted_proxies))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gridhub-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start; see the log above")
        time.sleep(0.05)
    return RunningApi(f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture(scope="session")
def api(settings: Settings, passwords: dict[str, str]) -> Iterator[RunningApi]:
    running = serve(settings)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tokens(api: RunningApi, passwords: dict[str, str]) -> dict[str, str]:
    out = {}
    with httpx.Client(base_url=api.url) as client:
        for wid in ALL_WORKERS:
            r = client.post("/api/v1/auth/token", data={"username": wid, "password": passwords[wid]})
            assert r.status_code == 200, r.text
            out[wid] = r.json()["access_token"]
    return out


@pytest.fixture
def client(api: RunningApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=30) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def as_(tokens: dict[str, str], wid: str) -> dict[str, Any]:
    return {"headers": bearer(tokens[wid])}


def all_pages(client: httpx.Client, path: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list, following `next`."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        r = client.get(path, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next"]
        if cursor is None:
            return items
    raise AssertionError(f"{path} pages never ended")


def make_incident(db_url: str, device_id: str, grid_id: str, building_id: str, assignee: str | None, *,
                  alert_type: str = "fire_alarm", severity: str = "critical", accept_in_s: int = 120,
                  resolve_in_s: int = 1800) -> tuple[str, str]:
    """An active alert with its open task on a new twin of `device_id`, in the shapes of the alerts migration,
    logged in `changes` by the alert engine's own change writer. Returns (alert id, task id)."""
    import uuid
    from datetime import UTC, datetime, timedelta

    import psycopg

    from gridhub.alerts import changes

    now = datetime.now(UTC)
    suffix = uuid.uuid4().hex[:10]
    alert_id, task_id = f"al-t{suffix}", f"tk-t{suffix}"
    with psycopg.connect(db_url) as conn:
        # a twin of the registry device (same kind and place) of its own, so that no other test's alert on the
        # same device and type collides with this one in the session's shared database
        twin = f"{device_id}-t{suffix[:6]}"
        conn.execute("INSERT INTO devices (id, kind, building_id, floor, place) SELECT %s, kind, building_id, floor,"
                     " place FROM devices WHERE id = %s", (twin, device_id))
        device_id = twin
        conn.execute(
            "INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, state, first_seen, last_seen,"
            " task_id) VALUES (%s, %s, %s, %s, %s, %s, 'active', %s, %s, %s)",
            (alert_id, device_id, building_id, grid_id, alert_type, severity, now, now, task_id))
        conn.execute(
            "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, device_id, assignee, accept_due,"
            " resolve_due, opened_at, last_seen, incident_key) VALUES (%s, %s, %s, 'open', %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s)",
            (task_id, alert_type, severity, grid_id, building_id, device_id, assignee,
             now + timedelta(seconds=accept_in_s), now + timedelta(seconds=resolve_in_s), now, now,
             f"test:{suffix}"))
        conn.execute("INSERT INTO task_alerts (task_id, alert_id) VALUES (%s, %s)", (task_id, alert_id))
        conn.execute("INSERT INTO task_history (task_id, at, actor, action, note) VALUES (%s, %s, 'system', 'open',"
                     " %s)", (task_id, now, f"assigned to {assignee}"))
        uow = changes.UnitOfWork(conn)
        uow.stage_alert(alert_id)
        uow.stage_task(task_id)
        uow.flush()
        conn.commit()
    return alert_id, task_id


def tiny_jpeg() -> bytes:
    import cv2
    import numpy as np

    image = np.zeros((48, 64, 3), np.uint8)
    image[:, 32:] = (0, 0, 255)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return bytes(buf)


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: str


class SseReader:
    """Reads a Server-Sent Events response in a thread; events land in `events` as they arrive."""

    def __init__(self, url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> None:
        import queue

        self.events: queue.Queue[SseEvent] = queue.Queue()
        self.status: int | None = None
        self._opened = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(url, params or {}, headers or {}), daemon=True)
        self._thread.start()
        if not self._opened.wait(15):
            raise AssertionError(f"the stream at {url} did not answer")

    def _run(self, url: str, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, params=params, headers=headers) as r:
                self.status = r.status_code
                self._opened.set()
                fields: dict[str, str] = {}
                for line in r.iter_lines():
                    if self._stop:
                        return
                    if line == "":
                        if "data" in fields:
                            self.events.put(SseEvent(fields.get("id"), fields.get("event", "message"), fields["data"]))
                        fields = {}
                    elif not line.startswith(":") and ":" in line:
                        name, _, value = line.partition(":")
                        fields[name] = value[1:] if value.startswith(" ") else value
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self._opened.set()

    def next(self, timeout: float = 20) -> SseEvent:
        return self.events.get(timeout=timeout)

    def until(self, predicate: Any, timeout: float = 30) -> list[SseEvent]:
        """Every event up to and including the first that satisfies `predicate`."""
        seen: list[SseEvent] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout} s; saw {[e.id for e in seen]}")
            import queue

            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            seen.append(event)
            if predicate(event):
                return seen

    def close(self) -> None:
        self._stop = True
        self._client.close()
        self._thread.join(timeout=1)  # a read blocked until the next keepalive ends on its own


@pytest.fixture(scope="module")
def command_listener(settings: Settings) -> Iterator[queue.Queue[tuple[str, bytes]]]:
    """Every command the hub publishes to a device, as (topic, payload), from a subscriber on the hub's account."""
    import paho.mqtt.client as paho

    from gridhub.mqtt import BrokerAddress, make_client

    assert settings.mqtt_url
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    sub = make_client(settings.mqtt_url, f"test-cmd-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
    sub.on_message = lambda c, u, m: received.put((m.topic, bytes(m.payload)))
    subscribed: queue.Queue[int] = queue.Queue()
    sub.on_subscribe = lambda c, u, mid, rc, p=None: subscribed.put(mid)
    addr = BrokerAddress.parse(settings.mqtt_url)
    sub.connect(addr.host, addr.port)
    sub.loop_start()
    sub.subscribe(f"{settings.topic_prefix}/devices/+/command", qos=1)
    subscribed.get(timeout=10)
    yield received
    sub.disconnect()
    sub.loop_stop()
