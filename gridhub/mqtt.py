"""The hub's one MQTT adapter: `MqttConnection`, a paho client with everything every part needs around it, and a
broker health check (`check_broker`) built on it.

Every part that talks to the broker (alerts, ingest, detectors, the API's command publisher) opens its connection
here, so that connecting, waiting for CONNACK, refused accounts, reconnecting, resubscribing, persistent sessions,
manual acknowledgement, confirmed QoS 1 publishing and the backlog marker are written once. What it guarantees:

- **Connect.** `connect(wait_s)` opens the TCP connection at once (`BrokerUnreachable` when that fails) and waits
  up to `wait_s` for CONNACK: an account the broker refuses (bad user name or password, not authorised) is an
  `AccountRefused` that names the user and the fix, not a retry loop; any other refusal a `BrokerRefused`, no answer
  a `NoAnswer`. After such an error the connection is stopped. `start()` connects in the background instead (the
  broker need not be up yet); a refusal then goes to `on_refused` and paho tries again with backoff (the broker may
  be re-reading its password file).
- **Reconnect.** paho's loop thread reconnects with backoff (`reconnect_delay`, paho's `reconnect_delay_set`). On
  every successful (re)connection, in this order and on paho's network thread: a new backlog marker is drawn,
  `generation` goes up by one, `on_connected(Connack)` runs, and every subscription is made again in one
  SUBSCRIBE; when its SUBACK arrives the marker is published (if any) and `on_subscribed()` runs.
- **Persistent sessions** (`persistent=True`): clean session off on MQTT 3.1.1; clean start off with a session
  expiry (`session_expiry_s`) on MQTT 5. The client id names the session.
- **Manual acknowledgement** (`manual_ack=True`): paho acknowledges nothing; the owner calls `ack(mid, qos)` once
  the message's work is done (after a reconnect, the broker redelivers what was not acknowledged; `generation`
  tells an old packet id from a new one). Pass the message's `generation` to `ack` (or use `ack_many`): then an
  old connection's packet id is never written on a new connection, where it would acknowledge another message.
- **Confirmed publish.** `publish_confirmed()` publishes at QoS 1 and returns only after the broker's PUBACK, or
  raises a `PublishNotConfirmed` that says why (`NotConnected`, `PublishRejected`, `PublishTimeout`).
- **Backlog marker** (`marker_topic`): after subscribing, the connection publishes a fresh token to that topic,
  which it also subscribes to. The broker delivers it after everything it had queued for the session, so when the
  owner has processed a message on that topic for which `is_current_marker(payload)` holds, it has processed the
  backlog of the current connection (a marker of an earlier connection does not count).
- **Several nodes.** A URL may name several brokers of one cluster (`mqtt://user:pass@h1:1883,h2:1883,h3:1883`,
  as NATS's MQTT gateway nodes; `broker_addresses`): `connect()` tries them in turn until one accepts the TCP
  connection, and after a lost connection or a failed attempt paho's next attempt goes to the next node. A
  persistent session is the cluster's, so the next node resumes it. With one host nothing changes.
- **TLS.** A `mqtts://` URL connects over TLS, checking the broker's certificate and host name against the system's
  CAs, or against the CA file the URL names (`mqtts://user:pass@host:8883?cafile=/etc/gridhub/ca.crt`).
- **Stop.** `stop()` disconnects and ends the loop thread; `end_session=True` also ends a persistent session (MQTT 5:
  session expiry 0 on DISCONNECT; MQTT 3.1.1: one clean-session connection with the same client id).

All callbacks run on paho's network thread: keep them short (put work on a queue). `client` is the underlying paho
client, for `gridhub/mqtt_fastpath.py` (the only module that touches paho's internals; call `receive_directly` on it
before connecting and `buffer_reads` from `on_connected`) and for code that publishes many messages and waits for
them together (`alerts/publish.py`).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gridhub.protocol import BrokerAddress, BrokerURLError

__all__ = [
    "AccountRefused", "BrokerAddress", "BrokerError", "BrokerRefused", "BrokerUnreachable", "Connack",
    "MqttConnection", "NoAnswer", "NotConnected", "PublishNotConfirmed", "PublishRejected", "PublishTimeout",
    "broker_addresses", "check_broker", "make_client", "single_host_urls", "tls_cafile",
]

log = logging.getLogger("gridhub.mqtt")

REFUSED_ACCOUNT = frozenset({4, 5, 134, 135})  # bad user name or password, not authorised (MQTT 3.1.1 and 5 codes)
DEFAULT_SESSION_EXPIRY_S = 14 * 86400  # as long as mosquitto keeps a 3.1.1 session (persistent_client_expiration)


class BrokerError(RuntimeError):
    """The broker did not accept a connection; the message says why and what to do. `reason`: the broker's
    reason code (or the disconnect reason) where there was one."""

    def __init__(self, message: str, reason: ReasonCode | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class BrokerUnreachable(BrokerError):
    """No TCP connection to the broker."""


class NoAnswer(BrokerError):
    """Connected, but no CONNACK came: none in time, or the broker closed the connection first (a broker that does
    not speak the MQTT version asked for may do that)."""


class BrokerRefused(BrokerError):
    """The broker refused the connection (CONNACK with a failure code)."""


class AccountRefused(BrokerRefused):
    """The broker refused the account: bad user name or password, or not authorised."""


class PublishNotConfirmed(RuntimeError):
    """A QoS 1 publish the broker has not acknowledged; the message says why."""


class NotConnected(PublishNotConfirmed):
    """Not connected to the broker within the time allowed."""


class PublishRejected(PublishNotConfirmed):
    """paho did not take the message (its queue is full, or the connection failed under it); `detail` says which."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class PublishTimeout(PublishNotConfirmed):
    """No PUBACK within the time allowed."""


@dataclass(frozen=True)
class Connack:
    """A successful CONNACK: whether the broker kept our session, and its MQTT 5 properties (None on 3.1.1)."""

    session_present: bool
    properties: Properties | None


MAX_HOSTS = 16


def single_host_urls(url: str) -> list[str]:
    """A broker URL naming one host or several (`mqtt://user:pass@h1:p1,h2:p2,h3:p3?cafile=...`), as one URL per
    host with the same scheme, credentials and query. A `BrokerURLError` for an empty host or more than
    `MAX_HOSTS`."""
    parts = urlsplit(url)
    creds, at, hosts = parts.netloc.rpartition("@")
    names = hosts.split(",")
    if len(names) > MAX_HOSTS or any(not h.strip() for h in names):
        raise BrokerURLError(f"the broker URL names {len(names)} hosts, some empty or more than {MAX_HOSTS}: give "
                             "mqtt://user:pass@host:port or mqtt://user:pass@h1:p1,h2:p2,h3:p3")
    return [urlunsplit(parts._replace(netloc=f"{creds}{at}{h.strip()}")) for h in names]


def broker_addresses(url: str) -> list[BrokerAddress]:
    """Every broker a URL names (one, or the nodes of a cluster), in order."""
    return [BrokerAddress.parse(u) for u in single_host_urls(url)]


def make_client(url: str, client_id: str, *, protocol: int = paho.MQTTv5, clean: bool = True,
                manual_ack: bool = False) -> paho.Client:
    """A bare paho client configured from the URL (credentials, TLS); not yet connected. Parts use
    `MqttConnection`; this is for tests and tools that want plain paho."""
    addr = broker_addresses(url)[0]
    kwargs: dict[str, object] = {"callback_api_version": CallbackAPIVersion.VERSION2, "client_id": client_id,
                                 "protocol": protocol, "manual_ack": manual_ack}
    if protocol != paho.MQTTv5:
        kwargs["clean_session"] = clean
    client = paho.Client(**kwargs)  # type: ignore[arg-type]
    if addr.username:
        client.username_pw_set(addr.username, addr.password)
    if addr.tls:
        client.tls_set(ca_certs=tls_cafile(url), cert_reqs=ssl.CERT_REQUIRED)
    return client


def tls_cafile(url: str) -> str | None:
    """The CA file a `mqtts://` URL names in `?cafile=/path/ca.crt` (the broker's own CA, from `gridhub services
    certs`), None for the system's CAs. The broker's certificate and its host name are always checked."""
    values = parse_qs(urlsplit(url).query).get("cafile")
    if not values:
        return None
    cafile = values[-1]
    if not Path(cafile).is_file():
        raise BrokerURLError(f"the broker URL's cafile {cafile!r} is not a file: give the path of the CA certificate "
                             "(ca.crt from `gridhub services certs`)")
    return cafile


def _without_nagle(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Small packets (an acknowledgement, a notification) go out at once instead of waiting up to 40 ms for the
    peer's delayed ACK of the previous one."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _code(rc: object) -> int | None:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


class MqttConnection:
    """One connection to the broker for one part; see the module docstring for what it guarantees.

    `subscriptions` are (filter, QoS) pairs, made again on every (re)connection. `reconnect_delay` is paho's
    (min, max) backoff in seconds. `max_inflight` caps paho's unacknowledged outgoing QoS 1 messages.
    `receive_maximum` (MQTT 5) asks the broker for that many unacknowledged messages in flight to us.
    `tcp_nodelay` turns Nagle's algorithm off on the socket.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        protocol: int = paho.MQTTv311,
        persistent: bool = False,
        session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        keepalive: int = 30,
        reconnect_delay: tuple[int, int] = (1, 10),
        max_inflight: int | None = None,
        tcp_nodelay: bool = False,
        subscriptions: Sequence[tuple[str, int]] = (),
        marker_topic: str | None = None,
        on_connected: Callable[[Connack], None] | None = None,
        on_subscribed: Callable[[], None] | None = None,
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
        on_disconnected: Callable[[ReasonCode], None] | None = None,
        on_refused: Callable[[ReasonCode], None] | None = None,
    ) -> None:
        self.url = url
        self.addresses = broker_addresses(url)
        self._node = 0  # the index of the node the connection goes to (several nodes: the next after a failure)
        self._next_node = False  # a connection was lost, or an attempt failed: paho's next attempt goes elsewhere
        self.client_id = client_id
        self.protocol = protocol
        self.persistent = persistent
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.keepalive = keepalive
        self.marker_topic = marker_topic
        subs = list(subscriptions)
        if marker_topic is not None and all(f != marker_topic for f, _ in subs):
            subs.append((marker_topic, 1))
        self.subscriptions: tuple[tuple[str, int], ...] = tuple(subs)
        self.on_connected = on_connected
        self.on_subscribed = on_subscribed
        self.on_message = on_message
        self.on_disconnected = on_disconnected
        self.on_refused = on_refused
        self.generation = 0  # successful connections so far
        self.marker = ""  # the backlog marker token of the current connection
        self._connected = threading.Event()
        self._ack_lock = threading.Lock()  # acknowledgements against a connection going away (ack_many)
        self._answered = threading.Event()  # a CONNACK, or the connection closed, while connect() waits
        self._waiting = False
        self._answer: ReasonCode | None = None
        self._closed: ReasonCode | None = None
        self._connack: Connack | None = None
        self._sub_mid: int | None = None
        self._refused_subscribes = 0  # SUBACKs in a row on this connection that refused a filter
        self._stopping = False
        client = make_client(url, client_id, protocol=protocol, clean=not persistent, manual_ack=manual_ack)
        if max_inflight is not None:
            client.max_inflight_messages_set(max_inflight)
        if tcp_nodelay:
            client.on_socket_open = _without_nagle
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if len(self.addresses) > 1:
            client.on_pre_connect = self._on_pre_connect
            client.on_connect_fail = self._on_connect_fail
        client.reconnect_delay_set(*reconnect_delay)
        self._client = client

    # ------------------------------------------------------------------ what the owner uses

    @property
    def client(self) -> paho.Client:
        """The underlying paho client (for gridhub/mqtt_fastpath.py and batch publishers)."""
        return self._client

    @property
    def address(self) -> BrokerAddress:
        """The broker the connection goes to (with several nodes, the current one)."""
        return self.addresses[self._node]

    @property
    def where(self) -> str:
        """The broker's host:port, for messages."""
        return f"{self.address.host}:{self.address.port}"

    @property
    def stopping(self) -> bool:
        """Whether the owner has stopped this connection (a disconnect then is expected, not a loss)."""
        return self._stopping

    def connect(self, wait_s: float | None = 10.0) -> Connack | None:
        """Connect and start the loop thread; with `wait_s`, wait that long for CONNACK and return it, raising a
        `BrokerError` (and stopping) when the broker is unreachable, refuses us or does not answer. With None,
        return once the TCP connection is open (CONNACK and refusals are handled in the background)."""
        self._answered.clear()
        self._answer = self._closed = None
        self._connack = None
        self._waiting = wait_s is not None
        self._stopping = False
        self._next_node = False
        failures: list[str] = []
        for _ in self.addresses:
            try:
                self._client.connect(self.address.host, self.address.port, **self._connect_args())
                break
            except OSError as exc:
                failures.append(f"{self.where} ({exc})")
                self._node = (self._node + 1) % len(self.addresses)
        if len(failures) == len(self.addresses):
            self._waiting = False
            raise BrokerUnreachable(f"cannot reach the broker at {', '.join(failures)}: check GRIDHUB_MQTT_URL and "
                                    "that the broker runs")
        self._client.loop_start()
        if wait_s is None:
            return None
        answered = self._answered.wait(wait_s)
        self._waiting = False
        if answered and self._connack is not None:
            return self._connack
        rc, closed = self._answer, self._closed
        self._halt()
        if rc is not None and _code(rc) in REFUSED_ACCOUNT:
            raise AccountRefused(f"the broker at {self.where} refused user {self.address.username!r} ({rc}): check "
                                 "the user and password in GRIDHUB_MQTT_URL and the broker's password file", rc)
        if rc is not None:
            raise BrokerRefused(f"the broker at {self.where} refused the connection of {self.client_id} ({rc})", rc)
        if closed is not None:
            raise NoAnswer(f"the broker at {self.where} closed the connection before answering ({closed}): check "
                           "that it speaks this MQTT version", closed)
        raise NoAnswer(f"no answer from the broker at {self.where} within {wait_s:g} s: check that it is an MQTT "
                       "broker and that it runs")

    def start(self) -> None:
        """Connect in the background: paho's loop thread connects, and reconnects with backoff, by itself."""
        self._stopping = False
        self._next_node = False
        self._client.connect_async(self.address.host, self.address.port, **self._connect_args())
        self._client.loop_start()

    def wait_connected(self, timeout_s: float) -> bool:
        """Whether connected (CONNACK received) within `timeout_s`."""
        return self._connected.wait(timeout_s)

    def is_connected(self) -> bool:
        return self._connected.is_set() and self._client.is_connected()

    def is_current_marker(self, payload: bytes) -> bool:
        """Whether a message on `marker_topic` is this connection's marker (so the backlog before it is done)."""
        return bool(self.marker) and payload == self.marker.encode()

    def ack(self, mid: int, qos: int, generation: int | None = None) -> None:
        """Acknowledge a received message (with `manual_ack`); nothing to do at QoS 0. With `generation` (the
        connection the message came on), nothing is sent unless that connection is still the current one: see
        `ack_many`."""
        if qos > 0:
            if generation is None:
                self._client.ack(mid, qos)
            else:
                self.ack_many([mid], generation)

    def ack_many(self, mids: Sequence[int], generation: int) -> bool:
        """Acknowledge QoS 1 messages received on connection `generation`, in this order, as one write (see
        `gridhub.mqtt_fastpath.queue_pubacks`). Nothing is sent, and False returned, once that connection is gone: a
        packet id belongs to the connection it came on, and the old connection's id written on the new one would
        acknowledge whatever the broker sends there under that id (and paho queues writes made between the loss
        and the next CONNACK behind the new CONNECT). The broker redelivers what was not acknowledged."""
        from gridhub.mqtt_fastpath import queue_pubacks  # the fast path imports nothing of ours

        with self._ack_lock:
            if generation != self.generation or not self._connected.is_set():
                return False
            if not queue_pubacks(self._client, list(mids)):
                for mid in mids:
                    self._client.ack(mid, 1)
            return True

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, *, retain: bool = False,
                properties: Properties | None = None) -> paho.MQTTMessageInfo:
        """Publish without waiting (paho queues it while disconnected, up to its limits)."""
        return self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def publish_confirmed(self, topic: str, payload: bytes | str, *, timeout_s: float = 5.0, retain: bool = False,
                          properties: Properties | None = None) -> None:
        """Publish at QoS 1 and return once the broker has acknowledged it (blocking: not on paho's thread).
        Waits up to `timeout_s` for a connection, then up to `timeout_s` for the PUBACK."""
        if not self._connected.wait(timeout_s):
            raise NotConnected(f"not connected to the broker at {self.where}; check that the broker runs and "
                               "GRIDHUB_MQTT_URL is right, then retry")
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise PublishRejected(f"the message to {topic} was not sent: {exc}; retry", str(exc)) from exc
        if not info.is_published():
            raise PublishTimeout(f"the broker did not acknowledge the message to {topic} within {timeout_s:g} s; "
                                 "retry")

    def hold(self) -> None:
        """Do not reconnect until `start()` (or `connect()`) again: for `on_disconnected`, on paho's thread, when the
        owner may not reconnect under this client id now (a lease it cannot confirm). The paho client's own
        `disconnect()` is not enough there: paho 2.2 marks the connection lost after that callback returns and
        reconnects after its delay. Ending the loop thread is (paho's loop_stop() on its own thread does not wait)."""
        self._client.disconnect()
        self._client.loop_stop()

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect and end the loop thread. `end_session` also ends a persistent session: what the broker still
        holds for it is dropped (MQTT 5: session expiry 0 on DISCONNECT; 3.1.1: one clean-session connection)."""
        self._stopping = True
        props = None
        if end_session and self.protocol == paho.MQTTv5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()
        self._connected.clear()
        if end_session and self.persistent and self.protocol != paho.MQTTv5:
            cleaner = MqttConnection(self.url, self.client_id, protocol=self.protocol, keepalive=10)
            try:
                cleaner.connect(wait_s=10.0)
            finally:
                cleaner.stop()

    # ------------------------------------------------------------------ paho's callbacks

    def _connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"keepalive": self.keepalive}
        if self.protocol == paho.MQTTv5 and (self.persistent or self.receive_maximum is not None):
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self.persistent:
                props.SessionExpiryInterval = self.session_expiry_s
            if self.receive_maximum is not None:
                props.ReceiveMaximum = self.receive_maximum
            args["properties"] = props
        if self.protocol == paho.MQTTv5 and self.persistent:
            args["clean_start"] = False
        return args

    def _halt(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    props: Properties | None = None) -> None:
        if rc.is_failure:
            self._answer = rc
            if self._waiting:
                self._answered.set()  # connect() raises a clear error and stops
                return
            if self.on_refused is not None:
                self.on_refused(rc)
            elif _code(rc) in REFUSED_ACCOUNT:
                log.error("the broker at %s refused user %r for %s (%s): check the user and password in "
                          "GRIDHUB_MQTT_URL and the broker's password file; retrying", self.where,
                          self.address.username, self.client_id, rc)
            else:
                log.error("the broker at %s refused %s (%s); retrying", self.where, self.client_id, rc)
            return
        self.marker = uuid.uuid4().hex
        connack = Connack(bool(getattr(flags, "session_present", False)),
                          props if self.protocol == paho.MQTTv5 else None)
        self._connack = connack
        with self._ack_lock:
            self.generation += 1
            self._connected.set()
        if self.on_connected is not None:
            self.on_connected(connack)
        self._refused_subscribes = 0
        self._subscribe(client)
        self._answered.set()

    def _subscribe(self, client: paho.Client) -> None:
        if not self.subscriptions:
            return
        topics: list[tuple[str, Any]]
        if self.protocol == paho.MQTTv5:
            topics = [(f, SubscribeOptions(qos=q)) for f, q in self.subscriptions]
        else:
            topics = list(self.subscriptions)
        _, self._sub_mid = client.subscribe(topics)

    def _subscribe_again(self, generation: int) -> None:
        """A refused subscription asked for again, on the same connection only (a new one subscribes anew)."""
        with self._ack_lock:
            current = generation == self.generation and self._connected.is_set() and not self._stopping
        if current:
            self._subscribe(self._client)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        if mid != self._sub_mid:
            return
        refused = [f for (f, _q), rc in zip(self.subscriptions, rcs or (), strict=False)
                   if getattr(rc, "is_failure", False)]
        if refused:  # a SUBACK 0x80 keeps the connection: nothing would ever arrive on those filters. NATS answers so
            # for a filter whose JetStream consumer it could not make (after a node's death); mosquitto on an ACL
            # deny. Asked for again with backoff; no marker and no on_subscribed until every filter is granted.
            delay = min(60.0, 2.0 * 2 ** self._refused_subscribes)
            self._refused_subscribes += 1
            log.error("%s: the broker at %s refused the subscription to %s; subscribing again in %g s",
                      self.client_id, self.where, ", ".join(refused), delay)
            timer = threading.Timer(delay, self._subscribe_again, args=(self.generation,))
            timer.daemon = True
            timer.start()
            return
        self._refused_subscribes = 0
        if self.marker_topic is not None:
            client.publish(self.marker_topic, self.marker.encode(), qos=1)
        if self.on_subscribed is not None:
            self.on_subscribed()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(msg)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._next_node = True

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        """Right before paho's (re)connection attempt, on its thread: after a lost connection or a failed attempt,
        the next node (paho reads the host only here; connect_async is its public way to change it)."""
        if not self._next_node:
            return
        self._next_node = False
        self._node = (self._node + 1) % len(self.addresses)
        log.info("%s: connecting to the next broker node, %s", self.client_id, self.where)
        client.connect_async(self.address.host, self.address.port, **self._connect_args())

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                       props: Any = None) -> None:
        self._next_node = True
        with self._ack_lock:  # from here on, no acknowledgement of this connection's packet ids is queued
            self._connected.clear()
        if self._waiting and not self._answered.is_set():
            self._closed = rc
            self._answered.set()
        if self.on_disconnected is not None:
            self.on_disconnected(rc)


def check_broker(url: str, timeout: float = 3.0) -> str | None:
    """None when the broker accepts our credentials, else what went wrong."""
    conn = MqttConnection(url, f"gridhub-health-{threading.get_ident()}", protocol=paho.MQTTv311, keepalive=10)
    try:
        conn.connect(wait_s=timeout)
    except BrokerUnreachable as exc:
        return f"cannot reach the broker at {conn.where}: {exc.__cause__}"
    except NoAnswer:
        return "no answer from the broker"
    except BrokerRefused as exc:
        return f"broker refused: {exc.reason}"
    conn.stop()
    return None
