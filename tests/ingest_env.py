"""Helpers for the ingest tests: an isolated hub (own database and broker), device publishers, waiting on the
database, and `gridhub ingest` as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from polling import wait_for

from gridhub.accounts import derived_password
from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.db import migrate
from gridhub.registry import import_registry, load_file
from gridhub.services.mosquitto import LocalMosquitto, start_private_mosquitto
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings

DATA = Path(__file__).parent / "data"
SECRET = "ingest-test-secret-" + "y" * 32
PREFIX = DEFAULT_TOPIC_PREFIX


@dataclass
class Hub:
    """A database and a broker of the test's own, with the registry's accounts."""

    settings: Settings
    broker: LocalMosquitto
    db_url: str

    def with_instance(self, instance_id: str) -> Settings:
        return self.settings.model_copy(update={"instance_id": instance_id})

    def env(self, instance_id: str) -> dict[str, str]:
        assert self.settings.mqtt_url
        return {**os.environ, "GRIDHUB_DATABASE_URL": self.db_url, "GRIDHUB_MQTT_URL": self.settings.mqtt_url,
                "GRIDHUB_SECRET_KEY": SECRET, "GRIDHUB_INSTANCE_ID": instance_id,
                "GRIDHUB_DATA_DIR": str(self.settings.data_dir)}


def make_hub(make_database: Callable[[], str], tmp: Path, registry: Path = DATA / "registry.yaml") -> Hub:
    url = make_database()
    migrate(url)
    with psycopg.connect(url) as conn:
        import_registry(conn, load_file(registry))
    broker = start_private_mosquitto(tmp, passwd_text="", acl_text="")
    hub_url = f"mqtt://gridhub-hub:{broker.hub_password()}@127.0.0.1:{broker.port}"
    settings = Settings(database_url=url, mqtt_url=hub_url, data_dir=tmp, secret_key=SECRET,
                        instance_id=f"it-{uuid.uuid4().hex[:6]}")
    with psycopg.connect(url) as conn:
        accounts, workers, hub = build_accounts(conn, settings)
    broker.apply_accounts(passwd_text(accounts), acl_text(settings.topic_prefix, hub.username, workers))
    return Hub(settings, broker, url)


class Publisher:
    """A connected MQTT 3.1.1 client as a device (its own account) or as the hub (any topic)."""

    def __init__(self, hub: Hub, device_id: str | None = None, *, client_id: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv311)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if device_id is None:
            self.client.username_pw_set("gridhub-hub", hub.broker.hub_password())
        else:
            self.client.username_pw_set(device_id, derived_password(SECRET, "device", device_id))
        self.client.connect("127.0.0.1", hub.broker.port, keepalive=30)
        self.client.loop_start()

    def send(self, messages: Iterable[tuple[str, bytes | str]], *, qos: int = 1, retain: bool = False) -> int:
        infos = [self.client.publish(t, p, qos=qos, retain=retain) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published(), "the broker did not acknowledge a publish"
        return len(infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def topic(device_id: str, channel: str = "telemetry") -> str:
    return f"{PREFIX}/devices/{device_id}/{channel}"


def counter(conn: psycopg.Connection[Any], name: str, labels: str = "") -> float:
    row = conn.execute("SELECT value FROM counters WHERE name = %s AND labels = %s", (name, labels)).fetchone()
    return float(row[0]) if row else 0.0


def wait_until(check: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    wait_for(check, timeout, what)


def wait_received(db_url: str, at_least: float, timeout: float = 60) -> None:
    """Wait until ingest has committed at least this many messages in total (stored or quarantined)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        wait_until(lambda: counter(conn, "gridhub_messages_received_total") >= at_least, timeout,
                   f"{at_least:.0f} messages received by ingest")


def start_ingest_process(hub: Hub, instance_id: str, log_path: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = hub.env(instance_id)
    env.update(extra_env)
    log = Path(log_path).open("ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", "gridhub.cli", "ingest"], env=env, stdout=log, stderr=log,
                            cwd=str(hub.settings.data_dir))


def wait_connected(log_path: Path, times: int = 1, timeout: float = 60) -> None:
    wait_until(lambda: log_path.read_text(errors="replace").count(" connected (MQTT") >= times, timeout,
               f"ingest connected ({log_path})")
