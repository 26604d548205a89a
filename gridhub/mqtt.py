"""MQTT connection settings shared by every part: URL parsing, paho clients, a broker health check."""

from __future__ import annotations

import ssl
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.protocol import BrokerAddress

__all__ = ["BrokerAddress", "make_client", "check_broker"]


def make_client(url: str, client_id: str, *, protocol: int = paho.MQTTv5, clean: bool = True,
                manual_ack: bool = False) -> paho.Client:
    """A paho client configured from the URL (credentials, TLS); not yet connected."""
    addr = BrokerAddress.parse(url)
    kwargs: dict[str, object] = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": client_id,
                                 "protocol": protocol, "manual_ack": manual_ack}
    if protocol != paho.MQTTv5:
        kwargs["clean_session"] = clean
    client = paho.Client(**kwargs)  # type: ignore[arg-type]
    if addr.username:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    return client


def check_broker(url: str, timeout: float = 3.0) -> str | None:
    """None when the broker accepts our credentials, else what went wrong."""
    addr = BrokerAddress.parse(url)
    done = threading.Event()
    result: list[str | None] = ["no answer from the broker"]

    def on_connect(client: paho.Client, userdata: object, flags: object, rc: object, props: object = None) -> None:
        result[0] = None if not getattr(rc, "is_failure", False) else f"broker refused: {rc}"
        done.set()

    client = make_client(url, f"gridhub-health-{threading.get_ident()}", protocol=paho.MQTTv311)
    client.on_connect = on_connect
    try:
        client.connect(addr.host, addr.port, keepalive=10)
    except OSError as exc:
        return f"cannot reach the broker at {addr.host}:{addr.port}: {exc}"
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return result[0]
