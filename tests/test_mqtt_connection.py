"""`gridhub.mqtt.MqttConnection` against a real mosquitto: connect and wait for CONNACK, a refused account is a
clear error, confirmed QoS 1 publish, manual acknowledgement with redelivery on a persistent session, resubscribe
after the broker drops the connection, and the backlog marker."""

from __future__ import annotations

import queue
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from polling import wait_for

from gridhub.mqtt import (
    AccountRefused,
    BrokerUnreachable,
    Connack,
    MqttConnection,
    NotConnected,
    check_broker,
)
from gridhub.services.embedded_broker import EmbeddedMqttBroker
from gridhub.services.mosquitto import LocalMosquitto, start_private_mosquitto
from gridhub.services.process import free_port

PROTOCOLS = [pytest.param(paho.MQTTv311, id="mqtt311"), pytest.param(paho.MQTTv5, id="mqtt5")]


def _topic(name: str) -> str:
    return f"gridhub/v1/test-mqtt/{uuid.uuid4().hex[:8]}/{name}"


def _cid(name: str) -> str:
    return f"test-mqtt-{name}-{uuid.uuid4().hex[:8]}"


class Inbox:
    """Messages a connection received, as (topic, payload, mid, qos, dup)."""

    def __init__(self) -> None:
        self.q: queue.Queue[tuple[str, bytes, int, int, bool]] = queue.Queue()

    def __call__(self, msg: paho.MQTTMessage) -> None:
        self.q.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos, bool(msg.dup)))

    def take(self, n: int, timeout: float = 15.0) -> list[tuple[str, bytes, int, int, bool]]:
        return [self.q.get(timeout=timeout) for _ in range(n)]

    def nothing_more(self, wait_s: float = 0.5) -> bool:
        try:
            self.q.get(timeout=wait_s)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[LocalMosquitto, str]]:
    """A mosquitto of this test's own (it gets restarted), with the hub account."""
    mq = start_private_mosquitto(tmp_path, passwd_text="", acl_text="")
    yield mq, f"mqtt://gridhub-hub:{mq.hub_password()}@127.0.0.1:{mq.port}"
    mq.stop()


def test_connect_waits_for_connack_and_stops_cleanly(broker: Any) -> None:
    seen: list[Connack] = []
    conn = MqttConnection(broker.test_url, _cid("connect"), on_connected=seen.append)
    try:
        connack = conn.connect(wait_s=10)
        assert connack is not None and connack.session_present is False
        assert conn.is_connected() and conn.generation == 1
        assert seen == [connack]  # the owner was told, before connect() returned
    finally:
        conn.stop()
    assert not conn.is_connected()
    assert check_broker(broker.test_url) is None


def test_a_refused_account_is_a_clear_error_not_a_retry_loop(broker: Any) -> None:
    url = broker.test_url.replace("gridhub-hub:", "gridhub-hub:wrong", 1)
    conn = MqttConnection(url, _cid("refused"))
    with pytest.raises(AccountRefused) as err:
        conn.connect(wait_s=10)
    assert "gridhub-hub" in str(err.value) and "GRIDHUB_MQTT_URL" in str(err.value)
    assert err.value.reason is not None and err.value.reason.is_failure
    assert not conn.client.is_connected()
    assert (check_broker(url) or "").startswith("broker refused")


def test_an_unreachable_broker_names_the_address() -> None:
    port = free_port()
    conn = MqttConnection(f"mqtt://u:p@127.0.0.1:{port}", _cid("nowhere"))
    with pytest.raises(BrokerUnreachable) as err:
        conn.connect(wait_s=5)
    assert f"127.0.0.1:{port}" in str(err.value)
    assert (check_broker(f"mqtt://u:p@127.0.0.1:{port}") or "").startswith("cannot reach the broker")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_confirmed_qos1_publish(broker: Any, protocol: int) -> None:
    topic = _topic("confirmed")
    inbox = Inbox()
    subscribed = threading.Event()
    sub = MqttConnection(broker.test_url, _cid("sub"), protocol=protocol, subscriptions=[(topic, 1)],
                         on_message=inbox, on_subscribed=subscribed.set)
    pub = MqttConnection(broker.test_url, _cid("pub"), protocol=protocol)
    sub.connect()
    try:
        assert subscribed.wait(10)
        pub.start()
        pub.publish_confirmed(topic, b"hello", timeout_s=10)  # returns only after the PUBACK
        got = inbox.take(1)
        assert got[0][:2] == (topic, b"hello") and got[0][3] == 1
    finally:
        pub.stop()
        sub.stop()


def test_publish_confirmed_without_a_connection_raises() -> None:
    conn = MqttConnection(f"mqtt://u:p@127.0.0.1:{free_port()}", _cid("offline"))
    with pytest.raises(NotConnected, match="not connected to the broker"):
        conn.publish_confirmed(_topic("x"), b"x", timeout_s=0.2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unacknowledged_messages_are_redelivered_to_the_persistent_session(broker: Any, protocol: int) -> None:
    topic = _topic("acks")
    cid = _cid("session")

    def session(inbox: Inbox, subscribed: threading.Event) -> MqttConnection:
        return MqttConnection(broker.test_url, cid, protocol=protocol, persistent=True, manual_ack=True,
                              subscriptions=[(topic, 1)], on_message=inbox, on_subscribed=subscribed.set)

    pub = MqttConnection(broker.test_url, _cid("pub"), protocol=protocol)
    pub.connect()
    first, sub1 = Inbox(), threading.Event()
    conn = session(first, sub1)
    connack = conn.connect()
    assert connack is not None and not connack.session_present
    try:
        assert sub1.wait(10)
        for i in range(3):
            pub.publish_confirmed(topic, f"m{i}".encode(), timeout_s=10)
        got = first.take(3)
        assert [p for _, p, _, _, _ in got] == [b"m0", b"m1", b"m2"]
        conn.ack(got[0][2], got[0][3])  # only the first is done
    finally:
        conn.stop()

    second, sub2 = Inbox(), threading.Event()
    conn = session(second, sub2)
    connack = conn.connect()
    try:
        assert connack is not None and connack.session_present  # the broker kept our session
        again = second.take(2)
        assert [p for _, p, _, _, _ in again] == [b"m1", b"m2"]  # not acknowledged: delivered again
        for _, _, mid, qos, _ in again:
            conn.ack(mid, qos)
        assert second.nothing_more()
    finally:
        conn.stop()

    third, sub3 = Inbox(), threading.Event()
    conn = session(third, sub3)
    conn.connect()
    try:
        assert sub3.wait(10)
        assert third.nothing_more(1.0)  # acknowledged: not delivered again
    finally:
        conn.stop(end_session=True)
    pub.stop()

    fresh = MqttConnection(broker.test_url, cid, protocol=protocol, persistent=True)
    connack = fresh.connect()
    fresh.stop(end_session=True)
    assert connack is not None and not connack.session_present  # end_session ended it


def test_resubscribes_and_tells_the_owner_after_the_broker_drops_the_connection(
        own_broker: tuple[LocalMosquitto, str]) -> None:
    mq, url = own_broker
    topic = _topic("again")
    inbox = Inbox()
    connected: list[Connack] = []
    subscribed: list[int] = []
    lost = threading.Event()
    # a clean session: after the broker's restart only a new SUBSCRIBE brings messages
    conn = MqttConnection(url, _cid("resub"), subscriptions=[(topic, 1)], reconnect_delay=(1, 2),
                          on_connected=connected.append, on_subscribed=lambda: subscribed.append(conn.generation),
                          on_message=inbox, on_disconnected=lambda rc: lost.set())
    conn.connect()
    pub: MqttConnection | None = None
    try:
        wait_for(lambda: subscribed == [1], 10, "the first subscription")
        mq.stop()
        assert lost.wait(10)
        mq.ensure_started()
        wait_for(lambda: subscribed == [1, 2], 30, "the subscription after the broker came back")
        assert len(connected) == 2 and conn.generation == 2
        pub = MqttConnection(url, _cid("pub"))
        pub.connect()
        pub.publish_confirmed(topic, b"after", timeout_s=10)
        assert inbox.take(1)[0][:2] == (topic, b"after")
    finally:
        if pub is not None:
            pub.stop()
        conn.stop()


def test_the_backlog_marker_comes_after_the_queued_backlog(broker: Any) -> None:
    topic = _topic("backlog")
    marker = _topic("marker")
    cid = _cid("marker")
    inbox = Inbox()
    subscribed = threading.Event()
    conn = MqttConnection(broker.test_url, cid, persistent=True, manual_ack=True, subscriptions=[(topic, 1)],
                          marker_topic=marker, on_message=inbox, on_subscribed=subscribed.set)
    assert (marker, 1) in conn.subscriptions
    conn.connect()
    assert subscribed.wait(10)
    got = inbox.take(1)  # the first connection's marker
    assert got[0][0] == marker and conn.is_current_marker(got[0][1])
    conn.ack(got[0][2], got[0][3])
    first_marker = got[0][1]
    conn.stop()

    pub = MqttConnection(broker.test_url, _cid("pub"))
    pub.connect()
    for i in range(20):
        pub.publish_confirmed(topic, f"b{i}".encode(), timeout_s=10)
    pub.stop()

    inbox2 = Inbox()
    conn = MqttConnection(broker.test_url, cid, persistent=True, manual_ack=True, subscriptions=[(topic, 1)],
                          marker_topic=marker, on_message=inbox2)
    conn.connect()
    try:
        got = inbox2.take(21)
        assert [p for _, p, _, _, _ in got[:20]] == [f"b{i}".encode() for i in range(20)]
        assert got[20][0] == marker and conn.is_current_marker(got[20][1])
        assert not conn.is_current_marker(first_marker)  # an earlier connection's marker does not count
        for _, _, mid, qos, _ in got:
            conn.ack(mid, qos)
    finally:
        conn.stop(end_session=True)


def test_in_the_background_a_refusal_goes_to_the_owner_and_paho_tries_again(broker: Any) -> None:
    url = broker.test_url.replace("gridhub-hub:", "gridhub-hub:wrong", 1)
    refusals: list[Any] = []
    conn = MqttConnection(url, _cid("background"), reconnect_delay=(1, 1), on_refused=refusals.append)
    conn.start()
    try:
        wait_for(lambda: len(refusals) >= 2, 20, "a refusal, then another after the backoff")
        assert all(rc.is_failure for rc in refusals) and not conn.is_connected()
    finally:
        conn.stop()


def test_tcp_nodelay_is_set_on_the_socket(broker: Any) -> None:
    conn = MqttConnection(broker.test_url, _cid("nodelay"), tcp_nodelay=True)
    plain = MqttConnection(broker.test_url, _cid("nagle"))
    conn.connect()
    plain.connect()
    try:
        sock, other = conn.client.socket(), plain.client.socket()
        assert isinstance(sock, socket.socket) and isinstance(other, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert other.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    finally:
        conn.stop()
        plain.stop()


def _drop(conn: MqttConnection) -> None:
    """Cut the connection under paho (as a network failure would): paho reconnects on its own."""
    sock = conn.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)


def test_an_old_connections_packet_id_is_never_acknowledged_on_the_new_one(broker: Any) -> None:
    """A message received on connection 1 and acknowledged (with its generation) only once connection 2 is up: the
    acknowledgement is refused, not written on connection 2, so the broker still holds the message and delivers it
    again after the next drop; acknowledged with the current generation, it is not delivered any more."""
    topic = _topic("generation")
    inbox = Inbox()
    generations: list[int] = []
    conn = MqttConnection(broker.test_url, _cid("generation"), persistent=True, manual_ack=True,
                          subscriptions=[(topic, 1)], reconnect_delay=(1, 2), on_subscribed=lambda: generations.append(
                              conn.generation),
                          on_message=lambda msg: inbox.q.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos,
                                                              bool(msg.dup))))
    pub = MqttConnection(broker.test_url, _cid("pub"))
    conn.connect()
    pub.connect()
    try:
        wait_for(lambda: generations == [1], 10, "the first subscription")
        pub.publish_confirmed(topic, b"once", timeout_s=10)
        (_, payload, mid, qos, dup), = inbox.take(1)
        assert (payload, qos, dup) == (b"once", 1, False)
        received_on = conn.generation

        _drop(conn)  # lost before its acknowledgement
        wait_for(lambda: generations == [1, 2], 30, "the connection to come back")
        again = inbox.take(1)[0]
        assert again[1] == b"once" and again[4]  # the broker delivers it again (DUP)
        assert conn.ack_many([mid], received_on) is False  # the old connection's packet id: not written
        conn.ack(mid, qos, received_on)  # nor through ack()
        conn.publish_confirmed(_topic("flush"), b"", timeout_s=10)  # had a PUBACK gone out, the broker has it now
        assert inbox.nothing_more(0.5)

        _drop(conn)
        wait_for(lambda: generations == [1, 2, 3], 30, "the connection to come back once more")
        third = inbox.take(1)[0]  # still unacknowledged: delivered once more
        assert third[1] == b"once" and third[4]
        assert conn.ack_many([third[2]], conn.generation) is True
        # a confirmed publish on the same connection after it: the broker has read the PUBACK once it answers
        conn.publish_confirmed(_topic("flush"), b"", timeout_s=10)

        _drop(conn)
        wait_for(lambda: generations == [1, 2, 3, 4], 30, "the connection to come back a third time")
        assert inbox.nothing_more(1.0)  # acknowledged on its own connection: done
    finally:
        pub.stop()
        conn.stop(end_session=True)


def test_a_refused_subscription_is_asked_for_again_and_only_then_told(tmp_path: Path) -> None:
    """A SUBACK that refuses a filter (0x80: the embedded broker on an ACL deny, NATS when it cannot make the
    filter's JetStream consumer) keeps the connection, so nothing would ever arrive: the connection asks again with
    backoff, and tells its owner it has subscribed only once every filter is granted. (mosquitto grants a denied
    filter and delivers nothing, so the embedded broker, which refuses it, is the broker here.)"""
    from gridhub.accounts import mosquitto_hash
    from gridhub.broker import acl_text

    prefix = "gridhub/v1"
    passwd = f"sa-0001:{mosquitto_hash('pw-sa-0001')}\n"
    other = f"{prefix}/devices/sa-0002/command"  # another device's: refused to sa-0001 at first
    broker = EmbeddedMqttBroker(tmp_path / "amqtt", free_port())
    broker.apply_accounts(passwd, acl_text(prefix, "gridhub-hub", []))
    broker.ensure_started()
    inbox = Inbox()
    subscribed = threading.Event()
    conn = MqttConnection(f"mqtt://sa-0001:pw-sa-0001@127.0.0.1:{broker.port}", "sa-0001",
                          subscriptions=[(other, 1)], on_subscribed=subscribed.set, on_message=inbox)
    conn.connect()
    pub: MqttConnection | None = None
    try:
        assert not subscribed.wait(3), "told it had subscribed while the broker refused the filter"
        broker.apply_accounts(passwd, acl_text(prefix, "gridhub-hub", []) + f"user sa-0001\ntopic read {other}\n")
        assert subscribed.wait(60), "the refused subscription was never asked for again"
        assert conn.generation == 1  # on the same connection
        pub = MqttConnection(f"mqtt://gridhub-hub:{broker.hub_password()}@127.0.0.1:{broker.port}", _cid("pub"))
        pub.connect()
        pub.publish_confirmed(other, b"now", timeout_s=10)
        assert inbox.take(1, timeout=30)[0][:2] == (other, b"now")
    finally:
        if pub is not None:
            pub.stop()
        conn.stop()
        broker.stop()
