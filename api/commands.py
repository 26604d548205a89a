"""The API's own MQTT connection, used to publish device commands (QoS 1) to `{prefix}/devices/{id}/command`."""

from __future__ import annotations

import logging
import os
import threading

import paho.mqtt.client as paho

from gridhub.mqtt import BrokerAddress, make_client
from gridhub.settings import Settings

log = logging.getLogger("gridhub.api.commands")


class CommandNotDelivered(RuntimeError):
    """The broker did not take the command; the message says why and what to do."""


class CommandPublisher:
    """A paho client connected in the app's lifespan; reconnects by itself while the app runs."""

    def __init__(self, settings: Settings) -> None:
        if not settings.mqtt_url:
            raise ValueError("GRIDHUB_MQTT_URL is not set")
        self._url = settings.mqtt_url
        self._addr = BrokerAddress.parse(settings.mqtt_url)
        self._client = make_client(settings.mqtt_url, settings.client_id(f"api-{os.getpid()}"),
                                   protocol=paho.MQTTv311)
        self._connected = threading.Event()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(1, 10)

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: object,
                    props: object = None) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("broker at %s:%s refused the API's connection: %s", self._addr.host, self._addr.port, rc)
            return
        self._connected.set()

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, rc: object,
                       props: object = None) -> None:
        self._connected.clear()

    def start(self, wait_s: float = 5.0) -> None:
        self._client.connect_async(self._addr.host, self._addr.port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(wait_s):
            log.warning("the API is not yet connected to the broker at %s:%s; commands wait for it",
                        self._addr.host, self._addr.port)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, timeout_s: float = 5.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK (blocking: call it from a thread)."""
        if not self._connected.wait(timeout_s):
            raise CommandNotDelivered(
                f"the API is not connected to the broker at {self._addr.host}:{self._addr.port}; "
                "check that the broker runs and GRIDHUB_MQTT_URL is right, then retry")
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise CommandNotDelivered(f"the broker did not take the command: {exc}; retry") from exc
        if not info.is_published():
            raise CommandNotDelivered(f"the broker did not acknowledge the command within {timeout_s:.0f} s; retry")
