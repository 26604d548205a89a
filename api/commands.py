"""The API's own MQTT connection, used to publish device commands (QoS 1) to `{prefix}/devices/{id}/command`."""

from __future__ import annotations

import logging
import os

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from gridhub.mqtt import MqttConnection, NotConnected, PublishRejected, PublishTimeout
from gridhub.settings import Settings

log = logging.getLogger("gridhub.api.commands")


class CommandNotDelivered(RuntimeError):
    """The broker did not take the command; the message says why and what to do."""


class CommandPublisher:
    """An MQTT connection opened in the app's lifespan; reconnects by itself while the app runs."""

    def __init__(self, settings: Settings) -> None:
        if not settings.mqtt_url:
            raise ValueError("GRIDHUB_MQTT_URL is not set")
        self._mqtt = MqttConnection(settings.mqtt_url, settings.client_id(f"api-{os.getpid()}"),
                                    protocol=paho.MQTTv311, keepalive=30, reconnect_delay=(1, 10),
                                    on_refused=self._on_refused)

    def _on_refused(self, rc: ReasonCode) -> None:
        addr = self._mqtt.address
        log.warning("broker at %s:%s refused the API's connection: %s", addr.host, addr.port, rc)

    def start(self, wait_s: float = 5.0) -> None:
        self._mqtt.start()
        if not self._mqtt.wait_connected(wait_s):
            addr = self._mqtt.address
            log.warning("the API is not yet connected to the broker at %s:%s; commands wait for it",
                        addr.host, addr.port)

    def stop(self) -> None:
        self._mqtt.stop()

    def publish(self, topic: str, payload: bytes, timeout_s: float = 5.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK (blocking: call it from a thread)."""
        addr = self._mqtt.address
        try:
            self._mqtt.publish_confirmed(topic, payload, timeout_s=timeout_s)
        except NotConnected as exc:
            raise CommandNotDelivered(
                f"the API is not connected to the broker at {addr.host}:{addr.port}; "
                "check that the broker runs and GRIDHUB_MQTT_URL is right, then retry") from exc
        except PublishRejected as exc:
            raise CommandNotDelivered(f"the broker did not take the command: {exc.detail}; retry") from exc
        except PublishTimeout as exc:
            raise CommandNotDelivered(
                f"the broker did not acknowledge the command within {timeout_s:.0f} s; retry") from exc
