"""The broker's doors, tried as an attacker would (issue 13): a device account using the hub's client id, a 10 MB
publish, TLS with and without the broker's CA, a device subscribing to another device's topics; on a private
mosquitto as `gridhub up` and the tests start it (gridhub/services/mosquitto.py), on the production configuration
(deploy/mosquitto/mosquitto.conf), and on the embedded amqtt broker. The configuration text itself is
tests/unit/test_broker_config.py."""

from __future__ import annotations

import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from ingest_env import Hub, make_hub, wait_received, wait_until
from paho.mqtt.reasoncodes import ReasonCode

from gridhub.accounts import mosquitto_hash
from gridhub.broker import acl_text, build_accounts
from gridhub.ingest.service import IngestService
from gridhub.mqtt import MqttConnection
from gridhub.services.certs import CertFiles, make_certs
from gridhub.services.embedded_broker import EmbeddedMqttBroker
from gridhub.services.mosquitto import HUB_MQTT_USER, LocalMosquitto, find_mosquitto, start_private_mosquitto
from gridhub.services.process import free_port, make_service_tmpdir, port_open

P = "gridhub/v1"
DEVICES = {"sa-0001": "pw-sa-0001", "sa-0002": "pw-sa-0002"}
ACL = acl_text(P, HUB_MQTT_USER, [])  # the ACL `gridhub devices credentials` writes
HUB_CLIENT_ID = "gridhub-ingest-testhost"  # what Settings.client_id("ingest") looks like
NO_MOSQUITTO = "mosquitto is not installed: run `bash scripts/install-services.sh` as root"


def _passwd(accounts: dict[str, str]) -> str:
    return "".join(f"{user}:{mosquitto_hash(pw)}\n" for user, pw in accounts.items())


class Client:
    """A paho client that records its CONNACK, its disconnections and what it receives."""

    def __init__(self, port: int, username: str, password: str, client_id: str, *, clean: bool = True,
                 protocol: int = mqtt.MQTTv311, ca: Path | None = None) -> None:
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(60, 120)  # a knocked-off client must not come back by itself in a test
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.connack: ReasonCode | None = None
        self.disconnects: list[ReasonCode] = []
        self.received: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._answered = threading.Event()
        self._subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p=None: self.disconnects.append(rc)
        self.client.on_message = lambda _c, _u, msg: self.received.put((msg.topic, msg.payload))
        self.client.on_subscribe = lambda _c, _u, _mid, rcs, _p=None: self._subacks.put(list(rcs))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self._answered.wait(10), f"no CONNACK from the broker on port {port}"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any = None) -> None:
        self.connack = rc
        self._answered.set()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic_filter: str) -> ReasonCode:
        self.client.subscribe(topic_filter, qos=1)
        return self._subacks.get(timeout=10)[0]

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def expect(received: queue.Queue[tuple[str, bytes]], topic: str, payload: bytes) -> None:
    """The next message `received` is this one (anything else first fails)."""
    assert received.get(timeout=10) == (topic, payload)


def check_hub_keeps_its_session(hub_port: int, device_port: int, hub_password: str,
                                device_connects: Callable[[], Client]) -> list[tuple[str, bytes]]:
    """The hub's consumer (persistent session, a hub client id) stays connected and keeps receiving while a device
    account connects with the hub's client id; returns what the hub received before the check's own message."""
    hub = Client(hub_port, HUB_MQTT_USER, hub_password, HUB_CLIENT_ID, clean=False)
    assert hub.accepted, hub.connack
    try:
        assert not hub.subscribe(f"{P}/devices/+/telemetry").is_failure
        device = device_connects()
        try:
            owner = Client(device_port, "sa-0002", DEVICES["sa-0002"], f"sim-sa-0002-{uuid.uuid4().hex[:6]}")
            assert owner.accepted
            owner.publish(f"{P}/devices/sa-0002/telemetry", b"after the attempt").wait_for_publish(10)
            before: list[tuple[str, bytes]] = []
            while (got := hub.received.get(timeout=10)) != (f"{P}/devices/sa-0002/telemetry", b"after the attempt"):
                before.append(got)
            owner.close()
        finally:
            device.close()
        time.sleep(0.3)
        assert hub.disconnects == [] and hub.client.is_connected(), hub.disconnects
    finally:
        hub.close()
    return before


# ------------------------------------------------------------------ mosquitto, as `gridhub up` and the tests run it


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, certs: CertFiles) -> Iterator[LocalMosquitto]:
    if find_mosquitto() is None:
        pytest.skip(NO_MOSQUITTO)
    broker = start_private_mosquitto(tmp_path_factory.mktemp("mosquitto-doors"), passwd_text=_passwd(DEVICES),
                                     acl_text=ACL, tls=(certs.server_cert, certs.server_key))
    yield broker
    broker.stop()


def test_a_device_with_the_hubs_client_id_does_not_knock_the_hub_off(mosquitto: LocalMosquitto) -> None:
    assert mosquitto.device_port is not None

    def impostor() -> Client:
        device = Client(mosquitto.device_port or 0, "sa-0001", DEVICES["sa-0001"], HUB_CLIENT_ID, clean=True)
        assert device.accepted  # taken in, but under its own name: the client id is replaced by the user name
        device.publish(f"{P}/devices/sa-0001/telemetry", b"as myself").wait_for_publish(10)
        return device

    before = check_hub_keeps_its_session(mosquitto.port, mosquitto.device_port, mosquitto.hub_password(), impostor)
    assert before == [(f"{P}/devices/sa-0001/telemetry", b"as myself")]


def test_over_tls_the_device_listener_replaces_client_ids_too(mosquitto: LocalMosquitto, certs: CertFiles) -> None:
    assert mosquitto.tls is not None

    def impostor() -> Client:
        device = Client(mosquitto.tls.port if mosquitto.tls else 0, "sa-0001", DEVICES["sa-0001"], HUB_CLIENT_ID,
                        clean=False, ca=certs.ca_cert)
        assert device.accepted
        return device

    check_hub_keeps_its_session(mosquitto.port, mosquitto.device_port or 0, mosquitto.hub_password(), impostor)


def test_tls_connects_with_the_brokers_ca_and_not_without_it(mosquitto: LocalMosquitto, certs: CertFiles) -> None:
    assert mosquitto.tls is not None
    device = Client(mosquitto.tls.port, "sa-0001", DEVICES["sa-0001"], "sa-0001", ca=certs.ca_cert)
    assert device.accepted, device.connack
    device.close()
    stranger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="no-ca", protocol=mqtt.MQTTv311)
    stranger.username_pw_set("sa-0001", DEVICES["sa-0001"])
    stranger.tls_set(cert_reqs=ssl.CERT_REQUIRED)  # the system's CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.connect("127.0.0.1", mosquitto.tls.port)
    # plain MQTT on the TLS port: a CONNECT (MQTT 3.1.1, client id "plain") gets no CONNACK (0x20)
    with socket.create_connection(("127.0.0.1", mosquitto.tls.port), timeout=5) as sock:
        sock.sendall(bytes.fromhex("1011" "00044d515454" "04" "02" "003c" "0005" "706c61696e"))
        try:
            answer = sock.recv(16)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert not answer.startswith(b"\x20"), answer


def test_the_hub_connects_over_tls_with_the_ca_named_in_its_url(mosquitto: LocalMosquitto, certs: CertFiles) -> None:
    assert mosquitto.tls is not None
    url = f"mqtts://{HUB_MQTT_USER}:{mosquitto.hub_password()}@127.0.0.1:{mosquitto.tls.port}?cafile={certs.ca_cert}"
    conn = MqttConnection(url, "gridhub-tls-check")
    assert conn.connect(wait_s=10) is not None
    conn.stop()
    without_ca = MqttConnection(url.partition("?")[0], "gridhub-tls-check-2")
    with pytest.raises(Exception, match="certificate verify failed"):
        without_ca.connect(wait_s=10)


def test_a_10_mb_publish_disconnects_its_sender_and_reaches_nobody(mosquitto: LocalMosquitto) -> None:
    hub = Client(mosquitto.port, HUB_MQTT_USER, mosquitto.hub_password(), "gridhub-size-check")
    try:
        assert not hub.subscribe(f"{P}/devices/#").is_failure
        for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
            device = Client(mosquitto.device_port or 0, "sa-0001", DEVICES["sa-0001"], "sa-0001", protocol=protocol)
            try:
                info = device.publish(f"{P}/devices/sa-0001/frame", b"\xff" * 10_000_000)
                wait_until(lambda d=device: bool(d.disconnects), 20, "the broker disconnecting the sender")
                assert not info._published  # noqa: SLF001 - is_published() raises once the connection is gone
            finally:
                device.close()
        assert hub.received.empty(), hub.received.get_nowait()[0]
        assert hub.disconnects == []
    finally:
        hub.close()


def test_a_frame_of_2_mib_still_passes(mosquitto: LocalMosquitto) -> None:
    hub = Client(mosquitto.port, HUB_MQTT_USER, mosquitto.hub_password(), "gridhub-frame-check")
    device = Client(mosquitto.device_port or 0, "sa-0001", DEVICES["sa-0001"], "sa-0001")
    try:
        assert not hub.subscribe(f"{P}/devices/+/frame").is_failure
        frame = b"\xff\xd8" + b"\x00" * (2 * 1024 * 1024 - 4) + b"\xff\xd9"
        device.publish(f"{P}/devices/sa-0001/frame", frame).wait_for_publish(20)
        expect(hub.received, f"{P}/devices/sa-0001/frame", frame)
        assert device.disconnects == []
    finally:
        device.close()
        hub.close()


# ------------------------------------------------------------------ the production configuration on this mosquitto


def test_the_production_configuration_starts_and_opens_its_three_doors(certs: CertFiles) -> None:
    """deploy/mosquitto/mosquitto.conf with its paths and ports moved to a private directory: the options are all
    ones this mosquitto accepts, and the hub's, the devices' and the TLS listeners answer."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip(NO_MOSQUITTO)
    root = make_service_tmpdir("gridhub-prodconf-")
    ports = {1884: free_port(), 1883: free_port(), 8883: free_port()}
    try:
        (root / "passwd").write_text(_passwd({HUB_MQTT_USER: "hub-pw", **DEVICES}))
        (root / "acl").write_text(ACL)
        for f in (root / "passwd", root / "acl"):
            f.chmod(0o600)
        shutil.copy(certs.server_cert, root / "server.crt")
        shutil.copy(certs.server_key, root / "server.key")
        text = (Path(__file__).resolve().parents[1] / "deploy/mosquitto/mosquitto.conf").read_text()
        text = (text.replace("/mosquitto/accounts/", f"{root}/").replace("/mosquitto/data/", f"{root}/")
                .replace("/mosquitto/certs/", f"{root}/"))
        for port, private in ports.items():
            text = text.replace(f"listener {port}\n", f"listener {private} 127.0.0.1\n")
        (root / "mosquitto.conf").write_text(text + "user root\n")
        proc = subprocess.Popen([str(binary), "-c", str(root / "mosquitto.conf")], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=str(root))
        try:
            wait_until(lambda: proc.poll() is not None or all(port_open(p) for p in ports.values()), 15,
                       "the production configuration listening")
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            hub = Client(ports[1884], HUB_MQTT_USER, "hub-pw", HUB_CLIENT_ID, clean=False)
            device = Client(ports[8883], "sa-0001", DEVICES["sa-0001"], HUB_CLIENT_ID, ca=certs.ca_cert)
            plain = Client(ports[1883], "sa-0002", DEVICES["sa-0002"], HUB_CLIENT_ID)
            assert hub.accepted and device.accepted and plain.accepted
            time.sleep(0.3)
            assert hub.disconnects == [] and device.disconnects == [] and plain.disconnects == []
            for c in (plain, device, hub):
                c.close()
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ the hub never stores an oversize publish


@pytest.fixture(scope="module")
def hub_with_ingest(make_database: Callable[[], str],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, dict[str, str]]]:
    if find_mosquitto() is None:
        pytest.skip(NO_MOSQUITTO)
    hub = make_hub(make_database, tmp_path_factory.mktemp("size-hub"))
    with psycopg.connect(hub.db_url) as conn:
        accounts, _, _ = build_accounts(conn, hub.settings)
    passwords = {a.username: a.password for a in accounts if a.kind == "device"}
    svc = IngestService(hub.settings)
    svc.start()
    try:
        wait_until(svc.connected.is_set, 30, "ingest connected")
        yield hub, passwords
    finally:
        svc.stop(end_session=True)
        hub.broker.stop()


def test_the_hub_never_stores_a_10_mb_publish(hub_with_ingest: tuple[Hub, dict[str, str]]) -> None:
    hub, passwords = hub_with_ingest
    device_port = hub.broker.device_port or 0
    topic = f"{P}/devices/sa-0001/telemetry"
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        before = conn.execute("SELECT value FROM counters WHERE name = 'gridhub_messages_received_total' "
                              "AND labels = ''").fetchone()
        big = Client(device_port, "sa-0001", passwords["sa-0001"], "sa-0001")
        big.publish(topic, b"TEN-MB" + b"x" * 10_000_000)
        wait_until(lambda: bool(big.disconnects), 20, "the broker disconnecting the sender")
        big.close()
        # what ingest does get from the same device: a 100 KiB message (quarantined as oversize) and a reading
        after = Client(device_port, "sa-0001", passwords["sa-0001"], "sa-0001")
        now = int(time.time() * 1000)
        after.publish(topic, b"HUNDRED-KB" + b"x" * 100_000).wait_for_publish(10)
        after.publish(topic, f'{{"ts": {now}, "seq": 1, "metrics": {{"battery_pct": 80}}}}'.encode()
                      ).wait_for_publish(10)
        after.close()
        wait_received(hub.db_url, (float(before[0]) if before else 0.0) + 2)
        rows = conn.execute("SELECT reason, left(payload, 12) FROM quarantine WHERE topic = %s", (topic,)).fetchall()
        assert rows == [("oversize", "HUNDRED-KBxx")]
        assert conn.execute("SELECT count(*) FROM readings WHERE device_id = 'sa-0001'").fetchone() == (1,)


# ------------------------------------------------------------------ the embedded broker (amqtt)


@pytest.fixture(scope="module")
def amqtt_broker() -> Iterator[EmbeddedMqttBroker]:
    root = make_service_tmpdir("gridhub-amqtt-doors-")
    broker = EmbeddedMqttBroker(root / "amqtt", free_port())
    broker.apply_accounts(_passwd(DEVICES), ACL)
    broker.ensure_started()
    yield broker
    broker.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("topic_filter", [f"{P}/devices/sa-0002/command", f"{P}/devices/+/command", f"{P}/#",
                                          f"{P}/devices/sa-0002/#", "#", f"{P}/alerts"])
def test_embedded_broker_refuses_a_devices_subscription_to_others_topics(amqtt_broker: EmbeddedMqttBroker,
                                                                        topic_filter: str) -> None:
    device = Client(amqtt_broker.port, "sa-0001", DEVICES["sa-0001"], f"sub-{uuid.uuid4().hex[:6]}")
    try:
        assert device.accepted
        assert device.subscribe(topic_filter).value == 0x80
        assert device.subscribe(f"{P}/devices/sa-0001/command").value == 1  # its own commands: granted, QoS 1
    finally:
        device.close()


def test_embedded_broker_lets_the_hub_subscribe_to_everything(amqtt_broker: EmbeddedMqttBroker) -> None:
    hub = Client(amqtt_broker.port, HUB_MQTT_USER, amqtt_broker.hub_password(), "gridhub-sub-check")
    try:
        for topic_filter in (f"{P}/#", f"{P}/devices/+/telemetry", f"$share/g/{P}/devices/+/event"):
            assert not hub.subscribe(topic_filter).is_failure, topic_filter
    finally:
        hub.close()


@pytest.mark.parametrize("clean", [True, False], ids=["clean-session", "persistent-session"])
@pytest.mark.parametrize("password", [DEVICES["sa-0001"], "a-wrong-password"], ids=["device", "wrong-password"])
def test_embedded_broker_refuses_the_hubs_client_id_to_others_and_the_hub_stays(
        amqtt_broker: EmbeddedMqttBroker, clean: bool, password: str) -> None:
    def impostor() -> Client:
        device = Client(amqtt_broker.port, "sa-0001", password, HUB_CLIENT_ID, clean=clean)
        assert device.connack is not None and device.connack.is_failure
        return device

    check_hub_keeps_its_session(amqtt_broker.port, amqtt_broker.port, amqtt_broker.hub_password(), impostor)
