"""Helpers for the alerts tests: devices that publish with their own broker accounts, a notification listener,
extra registry rows, and waiting on the database."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.accounts import derived_password
from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.mqtt import BrokerAddress
from gridhub.settings import Settings


def now_ms() -> int:
    return int(time.time() * 1000)


def add_devices(db_url: str, settings: Settings, broker: Any, building: str, grid: str,
                devices: list[tuple[str, str, int | None]]) -> None:
    """Add a building (in an existing grid) with devices (id, kind, heartbeat_s) and give them broker accounts."""
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO buildings (id, grid_id, name, floors) VALUES (%s, %s, %s, 6) ON CONFLICT DO NOTHING",
                     (building, grid, f"{building}号楼"))
        for dev, kind, hb in devices:
            conn.execute("INSERT INTO devices (id, kind, building_id, floor, place, heartbeat_s) VALUES"
                         " (%s, %s, %s, 1, '一楼', %s) ON CONFLICT (id) DO NOTHING", (dev, kind, building, hb))
        conn.commit()
        accounts, workers, hub = build_accounts(conn, settings)
    broker.apply_accounts(passwd_text(accounts), acl_text(settings.topic_prefix, hub.username, workers))


class Device:
    """A device on the broker with its own account and its last will (`offline`, retained)."""

    def __init__(self, settings: Settings, device_id: str, *, will: bool = True) -> None:
        self.id = device_id
        self.prefix = settings.topic_prefix
        addr = BrokerAddress.parse(settings.mqtt_url or "")
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{device_id}-{time.monotonic_ns()}",
                                  protocol=paho.MQTTv311)
        self.client.username_pw_set(device_id, derived_password(settings.signing_key(), "device", device_id))
        if will:
            self.client.will_set(f"{self.prefix}/devices/{device_id}/status", "offline", qos=1, retain=True)
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: connected.set() if not rc.is_failure else None
        self.client.connect(addr.host, addr.port, keepalive=5)
        self.client.loop_start()
        if not connected.wait(10):
            raise AssertionError(f"device {device_id} could not log in to the broker")
        self.seq = 0

    def send(self, channel: str, payload: Any, *, retain: bool = False) -> None:
        body = payload if isinstance(payload, str | bytes) else json.dumps(payload)
        info = self.client.publish(f"{self.prefix}/devices/{self.id}/{channel}", body, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"{self.id}: broker did not acknowledge {channel}"

    def event(self, typ: str, ts: int | None = None, **detail: Any) -> None:
        self.seq += 1
        self.send("event", {"ts": ts or now_ms(), "seq": self.seq, "type": typ, "detail": detail})

    def reading(self, ts: int, **metrics: Any) -> None:
        self.seq += 1
        self.send("telemetry", {"ts": ts, "seq": self.seq, "metrics": metrics})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def vanish(self) -> None:
        """Drop the connection without DISCONNECT, so the broker publishes the last will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


class Listener:
    """Collects task notifications (worker topics) and alert changes from the broker."""

    def __init__(self, url: str, topics: list[str]) -> None:
        addr = BrokerAddress.parse(url)
        self.messages: list[tuple[str, dict[str, Any], float]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"listener-{time.monotonic_ns()}")
        if addr.username:
            self.client.username_pw_set(addr.username, addr.password)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p=None: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(addr.host, addr.port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("listener could not subscribe")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), time.monotonic()))

    def of(self, topic_end: str, **match: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(topic_end)
                    and all(p.get(k) == v for k, v in match.items())]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
