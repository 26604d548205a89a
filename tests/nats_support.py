"""A hub of a test's own on a real 3-node NATS cluster (gridhub/services/nats.py): a database with
tests/data/registry.yaml, the cluster's accounts written from that registry (the devices in DEVICES with their
derived passwords, the hub's user in HUB and its subscribe-only user in DEVICES), and the settings and environment
of hub parts that use it (`GRIDHUB_BROKER=nats`, `GRIDHUB_PARTITIONS`, a multi-host `GRIDHUB_MQTT_URL`). Its
`broker.port` is the node devices publish to, so tests/faults.py's `ResendingDevice` and `stream` work on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from ingest_env import DATA, SECRET

from gridhub.db import migrate
from gridhub.registry import import_registry, load_file
from gridhub.services.nats import (
    NatsCluster,
    NatsNode,
    NatsUser,
    accounts_conf,
    device_permissions,
    find_nats_server,
    free_layout,
    registry_users,
)
from gridhub.services.process import free_port, make_service_tmpdir
from gridhub.settings import DEFAULT_TOPIC_PREFIX, Settings

HUB_USER = "gridhub-hub"


def require_nats_server() -> None:
    """make test installs nats-server (make services-install): without it the NATS tests fail, they never skip."""
    assert find_nats_server() is not None, "nats-server is not installed: run make services-install"


@dataclass
class DevicePort:
    """What tests/faults.py's devices read of a hub's broker: the port they publish to."""

    port: int


@dataclass
class NatsHub:
    settings: Settings
    cluster: NatsCluster
    db_url: str
    partitions: int
    hub_password: str
    broker: DevicePort
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, instance_id: str) -> dict[str, str]:
        """A hub part's environment (for tests/ingest_env.py's start_ingest_process)."""
        assert self.settings.mqtt_url
        return {**os.environ, "GRIDHUB_DATABASE_URL": self.db_url, "GRIDHUB_MQTT_URL": self.settings.mqtt_url,
                "GRIDHUB_SECRET_KEY": SECRET, "GRIDHUB_INSTANCE_ID": instance_id,
                "GRIDHUB_DATA_DIR": str(self.settings.data_dir), "GRIDHUB_BROKER": "nats",
                "GRIDHUB_PARTITIONS": str(self.partitions), **self.extra_env}

    def with_instance(self, instance_id: str) -> Settings:
        return self.settings.model_copy(update={"instance_id": instance_id})


def hub_url(password: str, nodes: list[NatsNode], *, dead_port: int | None = None) -> str:
    """The hub's multi-host URL naming every node's MQTT port (after a port nobody listens on, when given: a
    connection then has to go on to the next node)."""
    ports = ([dead_port] if dead_port else []) + [n.mqtt_port for n in nodes]
    return f"mqtt://{HUB_USER}:{password}@" + ",".join(f"127.0.0.1:{p}" for p in ports)


@contextlib.contextmanager
def nats_hub(make_database: Callable[[], str], tmp_path: Path, partitions: int, *,
             extra_devices: tuple[str, ...] = (), dead_first_host: bool = False) -> Iterator[NatsHub]:
    """A database with the test registry and a 3-node NATS cluster whose accounts come from it (plus
    `extra_devices`: accounts of devices the registry does not know), stopped and removed at the end."""
    require_nats_server()
    url = make_database()
    migrate(url)
    with psycopg.connect(url) as conn:
        import_registry(conn, load_file(DATA / "registry.yaml"))
    root = Path(make_service_tmpdir("gridhub-nats-"))
    cluster = NatsCluster(root, free_layout())
    password = "hub-" + uuid.uuid4().hex
    single = Settings(database_url=url, mqtt_url=f"mqtt://{HUB_USER}:{password}@127.0.0.1:1", data_dir=tmp_path,
                      secret_key=SECRET, broker="nats", partitions=partitions)
    with psycopg.connect(url) as conn:
        hub_users, devices, _rows = registry_users(conn, single, partitions)
    devices += [NatsUser(d, "pw-" + d, device_permissions(DEFAULT_TOPIC_PREFIX, d, partitions)) for d in extra_devices]
    cluster.write_config(accounts_conf(DEFAULT_TOPIC_PREFIX, partitions, hub_users, devices,
                                       NatsUser("sys", uuid.uuid4().hex)))
    try:
        cluster.start(timeout=90)
        mqtt_url = hub_url(password, cluster.nodes, dead_port=free_port() if dead_first_host else None)
        settings = single.model_copy(update={"mqtt_url": mqtt_url, "instance_id": f"it-{uuid.uuid4().hex[:6]}"})
        # GRIDHUB_BROKER_CHECK stays as a part would have it: the check itself says it skips a NATS cluster
        yield NatsHub(settings, cluster, url, partitions, password, DevicePort(cluster.nodes[0].mqtt_port))
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
