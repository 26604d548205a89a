"""A hub-account subscriber on the real broker that records every device message, for the simulator tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from polling import poll

from gridhub.mqtt import BrokerAddress, make_client


@dataclass(frozen=True)
class Heard:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    user_properties: tuple[tuple[str, str], ...]
    received_ms: int


class HubListener:
    """Subscribes to `<prefix>/devices/#` as the hub and keeps what arrives, in order."""

    def __init__(self, url: str, prefix: str = "gridhub/v1", name: str = "test-listener"):
        self.messages: list[Heard] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = make_client(url, f"{name}-{threading.get_ident()}-{time.monotonic_ns()}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a, **k: self._ready.set()
        self._client.on_connect = lambda c, *a, **k: c.subscribe(f"{prefix}/devices/#", qos=1)
        addr = BrokerAddress.parse(url)
        self._client.connect(addr.host, addr.port)
        self._client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("the test listener could not subscribe on the broker")

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        up = tuple(getattr(props, "UserProperty", None) or ()) if props is not None else ()
        with self._lock:
            self.messages.append(Heard(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, up,
                                       int(time.time() * 1000)))

    def snapshot(self, live_only: bool = True) -> list[Heard]:
        with self._lock:
            return [m for m in self.messages if not (live_only and m.retain)]

    def wait_for(self, predicate: Callable[[list[Heard]], bool], timeout: float = 20.0) -> list[Heard]:
        """Wait until the messages so far satisfy the predicate; returns them either way."""
        _, got = poll(lambda: self.snapshot(live_only=False), predicate, timeout=timeout)
        assert isinstance(got, list)
        return got

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
