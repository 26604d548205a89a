"""One virtual device's own broker connection: last will, retained `online`, `seq`, and every channel of CONTRACT §1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import Any

import aiomqtt
import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridhub.protocol import BrokerAddress, device_topic
from gridhub.settings import DEFAULT_TOPIC_PREFIX

log = logging.getLogger("gridhub.simulators")


def mqtt_client(target: BrokerAddress, client_id: str, *, v5: bool = True, will: aiomqtt.Will | None = None,
                max_inflight: int | None = None, keepalive: int = 60) -> aiomqtt.Client:
    """An aiomqtt client (not yet connected) for an account on the target broker."""
    return aiomqtt.Client(
        target.host, target.port, username=target.username, password=target.password, identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311, will=will,
        keepalive=keepalive, timeout=30, max_inflight_messages=max_inflight,
        tls_context=ssl.create_default_context() if target.tls else None,
    )


class DeviceLink:
    """A device logged in with its own account. `seq` counts every telemetry and event message sent."""

    def __init__(self, target: BrokerAddress, device_id: str, password: str, *, prefix: str = DEFAULT_TOPIC_PREFIX,
                 v5: bool = True, seq_start: int = 0):
        self.device_id = device_id
        self.prefix = prefix
        self.v5 = v5
        self.seq = seq_start
        self._target = target.as_account(device_id, password)
        self._client: aiomqtt.Client | None = None

    @property
    def connected(self) -> bool:
        c = self._client
        return c is not None and not c._disconnected.done()  # noqa: SLF001

    def topic(self, channel: str) -> str:
        return device_topic(self.prefix, self.device_id, channel)

    async def connect(self, *, announce: bool = True) -> None:
        """Log in with the last will `offline` (retained, QoS 1), then publish retained `online`."""
        if self.connected:
            return
        will = aiomqtt.Will(self.topic("status"), b"offline", qos=1, retain=True)
        self._client = mqtt_client(self._target, f"sim-{self.device_id}", v5=self.v5, will=will, keepalive=30)
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            self._client = None
            raise aiomqtt.MqttError(f"device {self.device_id} could not log in to {self._target.host}:"
                                    f"{self._target.port}: {exc} (check its credentials: "
                                    "`gridhub devices credentials`)") from exc
        if announce:
            await self.status("online")

    async def status(self, text: str) -> None:
        await self._publish(self.topic("status"), text.encode(), qos=1, retain=True)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def reading(self, ts_ms: int, metrics: dict[str, Any], *, qos: int = 1) -> int:
        seq = self.next_seq()
        await self._publish(self.topic("telemetry"), orjson.dumps({"ts": ts_ms, "seq": seq, "metrics": metrics}),
                            qos=qos)
        return seq

    async def event(self, ts_ms: int, type_: str, detail: dict[str, Any] | None = None) -> int:
        seq = self.next_seq()
        body = {"ts": ts_ms, "seq": seq, "type": type_, "detail": detail or {}}
        await self._publish(self.topic("event"), orjson.dumps(body), qos=1)
        return seq

    async def frame(self, ts_ms: int, jpeg: bytes, *, qos: int = 0) -> None:
        """A camera frame: capture time in the MQTT 5 user property `ts`, or as the topic's last level on 3.1.1."""
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("ts", str(ts_ms))]
            await self._publish(self.topic("frame"), jpeg, qos=qos, properties=props)
        else:
            await self._publish(f"{self.topic('frame')}/{ts_ms}", jpeg, qos=qos)

    async def raw(self, topic: str, payload: bytes, *, qos: int = 1, properties: Properties | None = None) -> None:
        """Anything at all on any topic (the garbage scenario); the broker's ACL still applies."""
        await self._publish(topic, payload, qos=qos, properties=properties)

    async def _publish(self, topic: str, payload: bytes, *, qos: int, retain: bool = False,
                       properties: Properties | None = None) -> None:
        if self._client is None or not self.connected:
            raise aiomqtt.MqttError(f"device {self.device_id} is not connected")
        await self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    async def close(self) -> None:
        """Log off cleanly (MQTT DISCONNECT: the broker discards the will)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError, OSError):
                await client.__aexit__(None, None, None)

    async def vanish(self) -> None:
        """Drop off the network without a DISCONNECT (a power cut): the broker delivers the last will."""
        client, self._client = self._client, None
        if client is None:
            return
        sock = client._client.socket()  # noqa: SLF001
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        gone = client._disconnected  # noqa: SLF001
        for _ in range(100):
            if gone.done():
                gone.exception()  # the expected "unexpected disconnection": seen, not an error
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError, OSError, Exception):
            await client.__aexit__(None, None, None)
