"""The broker check: before ingest and alerts start (and `gridhub up`, once, before the parts; `gridhub broker check` by
hand), ask the broker the hub is given whether it keeps what the hub cannot take at once, and refuse to start (exit 2,
one line naming the setting) when it would drop it (issue 15: a stock mosquitto, `max_queued_messages 1000`, silently
dropped half of 10,000 QoS 1 readings while ingest worked through its window of 20).

What the probe does, in well under 2 s on a healthy broker (0.4 to 1.3 s measured here; `probe_broker`):

1. **MQTT 5 CONNACK.** A throwaway MQTT 5 connection reads the broker's CONNACK properties: Receive Maximum (on
   mosquitto its `max_inflight_messages`, the window it also grants the hub's MQTT 3.1.1 consumers), Maximum QoS,
   Maximum Packet Size (a 2 MiB frame must fit), Retain Available. A broker without MQTT 5 (the embedded amqtt
   broker, NATS's MQTT gateway) is probed over MQTT 3.1.1 instead. This connection is the probe's publisher.
2. **The queue.** A persistent session of its own (`gridhub-probe-<random>`, one of the hub's client ids, which only
   the hub's account may use) subscribes at QoS 1 to a private topic under the hub's prefix
   (`<prefix>/hub/broker-probe/<random>`: the hub's account may use every topic, and no part subscribes there), and
   disconnects; the publisher sends N small QoS 1 messages (`needed_queue`: GRIDHUB_INGEST_WINDOW plus a margin, at
   least 5,000) and waits for their PUBACKs; the session comes back and counts what the broker kept. It acknowledges
   nothing at first: what arrives before the first acknowledgement is the broker's in-flight window. Then it
   acknowledges everything; once the deliveries stop, the publisher sends a marker, which arrives after everything
   the broker still holds (one publisher, one topic: MQTT keeps the order), so a pause of the machine is not
   mistaken for a loss. Fewer than N kept: the broker drops queued messages (mosquitto: `max_queued_messages`, or
   `max_queued_bytes`) and the check refuses.
3. **Clean up.** The session is ended whatever happened (MQTT 5: session expiry 0 on DISCONNECT; 3.1.1: a clean-session
   connection with the same client id); an MQTT 5 probe session also expires by itself 60 s after a probe that was
   killed half-way. Nothing is retained.

`check_at_start(settings, part)` applies GRIDHUB_BROKER_CHECK (`Settings.broker_check`): `on` (the default) returns
the refusal line, `warn` logs it loudly and starts, `off` skips the probe. A broker that cannot be reached is not a
refusal here: the part's own connection says what is wrong, as before. The local embedded amqtt broker is not probed
(`skip_reason`): it queues for a disconnected session in memory without limit (it passed the probe, kept 5,000 of
5,000, in about 7 s, amqtt being slow), and has no persistence, so a restart of that broker loses what it held whatever
the settings; the check logs that instead. What each finding means and which setting to change:
gridhub/services/README.md, "Pointing the hub at your own broker: the settings it checks".
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gridhub.mqtt import AccountRefused, BrokerError, BrokerUnreachable, MqttConnection, make_client
from gridhub.protocol import BrokerAddress
from gridhub.settings import Settings

__all__ = ["DOCS", "BrokerReport", "Finding", "ProbeFailed", "check_at_start", "needed_queue", "probe_broker"]

log = logging.getLogger("gridhub.brokercheck")

DOCS = "gridhub/services/README.md, \"Pointing the hub at your own broker\""
MIN_QUEUE = 5000  # messages the probe queues at least
QUEUE_MARGIN = 1000  # beyond the window: what arrives while a full window is being committed
RECOMMENDED_QUEUE = 1_000_000  # gridhub's own mosquitto.conf: a long database outage at a few thousand readings/s
FRAME_PACKET = 2 * 1024 * 1024 + 64 * 1024  # a 2 MiB frame (CONTRACT §1) with its topic and headers
PROBE_SESSION_EXPIRY_S = 60  # an MQTT 5 probe session killed half-way is gone a minute later
CONNECT_WAIT_S = 5.0
PUBLISH_WAIT_S = 15.0  # for the N PUBACKs
WINDOW_IDLE_S = 1.0  # no delivery for this long before any acknowledgement: the broker has sent its whole window
IDLE_S = 0.3  # no delivery for this long after acknowledging: time for the marker
MARKER_WAIT_S = 5.0
Level = Literal["refuse", "warn", "note"]


class ProbeFailed(RuntimeError):
    """The probe could not run: the broker cannot be reached, refuses the hub's account, or does not answer."""


@dataclass(frozen=True)
class Finding:
    """One thing the check found: `refuse` (the broker drops what the hub needs kept), `warn`, or `note`."""

    level: Level
    text: str


@dataclass
class BrokerReport:
    """What the probe saw. `kept` is None when the queue could not be probed; `window` is the broker's in-flight
    window (the smaller of the CONNACK's Receive Maximum and the messages counted before the first acknowledgement)
    when it was below what the hub asked for, else None."""

    where: str
    mqtt5: bool = False
    connack: dict[str, int] = field(default_factory=dict)
    client_id: str = ""
    topic: str = ""
    needed_queue: int = 0
    needed_window: int = 0
    published: int = 0
    kept: int | None = None
    window: int | None = None
    session_kept: bool = True
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return any(f.level == "refuse" for f in self.findings)

    def refusal_line(self) -> str:
        """The one line a refused start prints: what was lost, the settings to change, where the docs are."""
        what = "; ".join(f.text for f in self.findings if f.level == "refuse")
        window = (f"; and `max_inflight_messages {self.needed_window}` (it grants {self.window})"
                  if self.window is not None and self.window < self.needed_window else "")
        return (f"the broker at {self.where} would lose QoS 1 messages the hub has not taken yet: {what}. Set "
                f"`max_queued_messages 0` (no limit) or at least {RECOMMENDED_QUEUE} (gridhub's own mosquitto.conf), "
                f"`max_queued_bytes 0` and `persistence true`{window}; see {DOCS}; GRIDHUB_BROKER_CHECK=warn starts "
                "anyway")

    def summary(self) -> str:
        kept = "not probed" if self.kept is None else f"kept {self.kept} of {self.published}"
        window = f"in-flight window {self.window}" if self.window is not None else \
            f"in-flight window at least {self.needed_window}"
        props = ", ".join(f"{k} {v}" for k, v in sorted(self.connack.items())) or "none"
        return (f"broker {self.where}: MQTT {'5' if self.mqtt5 else '3.1.1 only'} (CONNACK: {props}); queue {kept} "
                f"(needed {self.needed_queue}); {window}; {self.seconds:.2f} s")


def needed_queue(settings: Settings) -> int:
    """The QoS 1 messages the probe asks the broker to queue: the ingest window plus a margin, at least 5,000."""
    return max(MIN_QUEUE, settings.ingest.window + QUEUE_MARGIN)


class _Session:
    """The probe's persistent session: counts the distinct messages it receives, acknowledging them only once told
    to (`ack_all`), and sees the marker."""

    def __init__(self, url: str, client_id: str, protocol: int, receive_maximum: int) -> None:
        self.url, self.client_id, self.protocol = url, client_id, protocol
        self.receive_maximum = receive_maximum
        self.addr = BrokerAddress.parse(url)
        self.lock = threading.Lock()
        self.seqs: set[int] = set()
        self.unacked: list[int] = []
        self.acking = False
        self.marker = b""
        self.marker_seen = threading.Event()
        self.last_arrival = time.monotonic()
        self._connack = threading.Event()
        self._connack_rc: ReasonCode | None = None
        self.session_present = False
        self._suback = threading.Event()
        self.granted: list[int] = []
        self.client: paho.Client | None = None

    def _new_client(self, *, clean: bool) -> paho.Client:
        client = make_client(self.url, self.client_id, protocol=self.protocol, clean=clean, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def connect(self, *, fresh: bool, clean: bool = False) -> None:
        """Connect (a new session when `fresh`; `clean`: MQTT 3.1.1 clean session, to end it)."""
        client = self._new_client(clean=clean)
        self._connack.clear()
        self._connack_rc = None
        args: dict[str, Any] = {"keepalive": 10}
        if self.protocol == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0 if clean else PROBE_SESSION_EXPIRY_S
            props.ReceiveMaximum = self.receive_maximum
            args["properties"] = props
            args["clean_start"] = fresh or clean
        try:
            client.connect(self.addr.host, self.addr.port, **args)
        except OSError as exc:
            raise ProbeFailed(f"cannot reach the broker at {self.addr.host}:{self.addr.port} ({exc})") from exc
        client.loop_start()
        self.client = client
        if not self._connack.wait(CONNECT_WAIT_S) or self._connack_rc is None or self._connack_rc.is_failure:
            self.disconnect()
            raise ProbeFailed(f"the broker did not accept the probe session {self.client_id} "
                              f"({self._connack_rc or 'no CONNACK'})")

    def subscribe(self, topic: str) -> list[int]:
        assert self.client is not None
        self._suback.clear()
        if self.protocol == paho.MQTTv5:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            self.client.subscribe([(topic, SubscribeOptions(qos=1))])
        else:
            self.client.subscribe(topic, qos=1)
        if not self._suback.wait(CONNECT_WAIT_S):
            return []
        return self.granted

    def disconnect(self, *, end_session: bool = False) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        props = None
        if end_session and self.protocol == paho.MQTTv5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        client.disconnect(properties=props)
        client.loop_stop()

    def end(self) -> None:
        """End the session on the broker, whatever state the probe left it in."""
        if self.protocol == paho.MQTTv5:
            if self.client is None or not self.client.is_connected():
                self.disconnect()
                self.connect(fresh=False, clean=True)  # clean start: the broker drops what it held
            self.disconnect(end_session=True)
        else:
            self.disconnect()
            self.connect(fresh=False, clean=True)
            self.disconnect()

    def ack_all(self) -> None:
        """Acknowledge what came so far, and everything from now on as it comes."""
        assert self.client is not None
        with self.lock:
            self.acking = True
            pending, self.unacked = self.unacked, []
        for mid in pending:
            self.client.ack(mid, 1)

    def count(self) -> int:
        with self.lock:
            return len(self.seqs)

    def idle_for(self) -> float:
        with self.lock:
            return time.monotonic() - self.last_arrival

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    props: Properties | None = None) -> None:
        self._connack_rc = rc
        self.session_present = bool(getattr(flags, "session_present", False))
        with self.lock:
            self.last_arrival = time.monotonic()
        self._connack.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        self.granted = [int(getattr(rc, "value", rc)) for rc in rcs]
        self._suback.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.last_arrival = time.monotonic()
            if msg.payload == self.marker and self.marker:
                self.marker_seen.set()
            else:
                with contextlib.suppress(ValueError):
                    self.seqs.add(int(msg.payload))
            acking = self.acking
            if not acking:
                self.unacked.append(msg.mid)
        if acking:
            client.ack(msg.mid, 1)


def _connack_properties(props: Properties | None) -> dict[str, int]:
    out: dict[str, int] = {}
    if props is None:
        return out
    for name in ("ReceiveMaximum", "MaximumQoS", "MaximumPacketSize", "RetainAvailable", "SessionExpiryInterval",
                 "SharedSubscriptionAvailable"):
        value = getattr(props, name, None)
        if isinstance(value, int):
            out[name] = value
    return out


def _publisher(url: str, client_id: str) -> tuple[MqttConnection, bool, dict[str, int]]:
    """The probe's publisher: over MQTT 5 when the broker speaks it (a first connection reads its CONNACK's
    properties, and the publisher keeps within its Receive Maximum: paho cannot change its window once connected),
    else over MQTT 3.1.1 (amqtt, NATS's MQTT gateway)."""
    hello = MqttConnection(url, client_id, protocol=paho.MQTTv5, keepalive=10)
    try:
        connack = hello.connect(wait_s=CONNECT_WAIT_S)
    except (BrokerUnreachable, AccountRefused) as exc:
        raise ProbeFailed(str(exc)) from exc
    except BrokerError:  # no MQTT 5 here
        mqtt5, props = False, {}
    else:
        hello.stop()
        mqtt5, props = True, _connack_properties(connack.properties if connack else None)
    # 0: no limit (MQTT 3.1.1 has none; MQTT 5: the broker's Receive Maximum, 65535 when it names none)
    window = props.get("ReceiveMaximum", 65535) if mqtt5 else 0
    conn = MqttConnection(url, client_id, protocol=paho.MQTTv5 if mqtt5 else paho.MQTTv311, keepalive=10,
                          max_inflight=window)
    try:
        conn.connect(wait_s=CONNECT_WAIT_S)
    except BrokerError as exc:
        raise ProbeFailed(str(exc)) from exc
    return conn, mqtt5, props


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def probe_broker(url: str, *, topic_prefix: str, needed_queue: int = MIN_QUEUE, needed_window: int = 4000,
                 client_id: str | None = None) -> BrokerReport:
    """Probe the broker at `url` with the hub's account (see the module docstring); raises `ProbeFailed` when it
    cannot be reached or refuses the account."""
    started = time.monotonic()
    token = secrets.token_hex(6)
    addr = BrokerAddress.parse(url)
    report = BrokerReport(where=f"{addr.host}:{addr.port}", client_id=client_id or f"gridhub-probe-{token}",
                          topic=f"{topic_prefix}/hub/broker-probe/{token}", needed_queue=needed_queue,
                          needed_window=needed_window)
    pub, report.mqtt5, report.connack = _publisher(url, f"{report.client_id}-pub"[:128])
    session = _Session(url, report.client_id, paho.MQTTv5 if report.mqtt5 else paho.MQTTv311, needed_window)
    try:
        _connack_findings(report)
        session.connect(fresh=True)
        granted = session.subscribe(report.topic)
        if not granted or granted[0] not in (1, 2):
            report.findings.append(Finding("warn", f"the broker did not grant the probe's QoS 1 subscription to "
                                           f"{report.topic} ({granted or 'no SUBACK'}): the queue was not probed; "
                                           "the hub's account needs read and write on every topic under its prefix"))
            return report
        session.disconnect()
        _probe_queue(report, pub, session)
    finally:
        try:
            session.end()
        except ProbeFailed as exc:
            log.warning("the broker check could not end its probe session %s: %s", report.client_id, exc)
        pub.stop()
        report.seconds = time.monotonic() - started
    return report


def _connack_findings(report: BrokerReport) -> None:
    props = report.connack
    if props.get("MaximumQoS", 1) < 1:
        report.findings.append(Finding("refuse", "it grants QoS 0 only (CONNACK Maximum QoS 0): every reading "
                                       "would be sent once and forgotten"))
    rm = props.get("ReceiveMaximum")
    if rm is not None and rm < report.needed_window:
        report.window = rm
    size = props.get("MaximumPacketSize")
    if size is not None and size < FRAME_PACKET:
        report.findings.append(Finding("warn", f"its largest packet is {size} bytes (CONNACK Maximum Packet Size): "
                                       "camera frames up to 2 MiB are refused; mosquitto: `max_packet_size 2621440`"))
    if props.get("RetainAvailable", 1) == 0:
        report.findings.append(Finding("warn", "it keeps no retained messages (CONNACK Retain Available 0): device "
                                       "status is published retained"))


def _probe_queue(report: BrokerReport, pub: MqttConnection, session: _Session) -> None:
    """Queue N messages for the disconnected session, reconnect, count what was kept (see the module docstring)."""
    n = report.needed_queue
    infos = [pub.publish(report.topic, str(i).encode(), qos=1) for i in range(n)]
    deadline = time.monotonic() + PUBLISH_WAIT_S
    published = 0
    for info in infos:
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            break
        if not info.is_published():
            break
        published += 1
    report.published = published
    if published < n:
        report.findings.append(Finding("warn", f"the broker acknowledged only {published} of the probe's {n} QoS 1 "
                                       f"messages within {PUBLISH_WAIT_S:g} s: the queue was not probed"))
        return
    session.connect(fresh=False)
    report.session_kept = session.session_present
    if not session.session_present:
        report.kept = 0
        report.findings.append(Finding("refuse", "it did not keep the probe's persistent session across a disconnect "
                                       "(a part's session, and what it holds, would be lost the same way)"))
        return
    # before any acknowledgement: the broker's in-flight window (what it sends unacknowledged)
    _wait(lambda: session.count() >= min(n, report.needed_window) or session.idle_for() >= WINDOW_IDLE_S, 10.0)
    before_ack = session.count()
    session.ack_all()
    _wait(lambda: session.count() >= n or session.idle_for() >= IDLE_S, 20.0)
    if session.count() < n:
        # deliveries stopped short: a marker from the same publisher on the same topic comes after all it still holds
        session.marker = f"marker-{secrets.token_hex(4)}".encode()
        pub.publish(report.topic, session.marker, qos=1)
        if not session.marker_seen.wait(MARKER_WAIT_S) and session.count() < n:
            report.kept = session.count()
            report.findings.append(Finding("warn", f"the broker delivered {report.kept} of {n} queued probe messages "
                                           f"and then nothing for {MARKER_WAIT_S:g} s: the queue was not verified"))
            return
    report.kept = session.count()
    if report.kept > before_ack and before_ack < report.needed_window:
        report.window = before_ack if report.window is None else min(report.window, before_ack)
    if report.kept < n:
        report.findings.append(Finding("refuse", f"it kept {report.kept} of {n} QoS 1 messages queued for a "
                                       "disconnected session and dropped the rest (mosquitto: `max_queued_messages` "
                                       "or `max_queued_bytes` too low)"))
    if report.window is not None:
        report.findings.append(Finding("warn", f"it sends at most {report.window} unacknowledged messages (mosquitto: "
                                       f"`max_inflight_messages {report.window}`), GRIDHUB_INGEST_WINDOW is "
                                       f"{report.needed_window}: ingest's batches hold at most {report.window} "
                                       "messages, so under load the broker's queue holds the rest; set "
                                       f"`max_inflight_messages {report.needed_window}`"))


def _local_broker_kind(settings: Settings) -> str | None:
    """"embedded" or "system" when `settings.mqtt_url` is the local services' running broker, else None."""
    from urllib.parse import urlsplit

    from gridhub.services.local import running_local_services

    try:
        services = running_local_services(settings.data_dir)
    except Exception:  # noqa: BLE001 - only a note depends on it
        return None
    if services is None or not settings.mqtt_url:
        return None
    url = urlsplit(settings.mqtt_url)
    try:
        port = url.port
    except ValueError:  # several nodes (h1:p1,h2:p2,...): a cluster, never the local services
        return None
    if url.hostname not in ("127.0.0.1", "localhost") or port != services.broker.port:
        return None
    return services.broker_kind


EMBEDDED_SKIP = ("the embedded amqtt broker (the local services) is not probed: it has no queue or in-flight limit "
                 "to find (it queues for a disconnected session in memory without limit: it kept 5,000 of 5,000 when "
                 "probed), and no persistence: a restart of that broker loses everything it held, which no setting "
                 "changes (use mosquitto, `make services-install`, where that matters)")


NATS_SKIP = ("a NATS cluster (GRIDHUB_BROKER=nats) is not probed: the MQTT gateway keeps a QoS 1 session's messages "
             "in the account's replicated JetStream stream ($MQTT_msgs) and its consumer, not in a per-session queue "
             "with a count limit, and flow-controls delivery (mqtt max_ack_pending) instead of dropping; the settings "
             "that matter (stream_replicas 3, max_payload above 2 MiB) are written by gridhub/services/nats.py and "
             "deploy/nats/nats-cluster.conf (docs/scaling.md)")


def skip_reason(settings: Settings) -> str | None:
    """Why the settings' broker is not probed, None when it is: the local embedded amqtt broker, a NATS cluster."""
    if settings.broker == "nats":
        return NATS_SKIP
    if _local_broker_kind(settings) == "embedded":
        return EMBEDDED_SKIP
    return None


def run_check(settings: Settings) -> BrokerReport:
    """Probe the settings' broker (raises `ProbeFailed` when it cannot)."""
    assert settings.mqtt_url
    return probe_broker(settings.mqtt_url, topic_prefix=settings.topic_prefix, needed_queue=needed_queue(settings),
                        needed_window=settings.ingest.window)


def check_at_start(settings: Settings, part: str) -> str | None:
    """The start-up check of `part` under GRIDHUB_BROKER_CHECK: the refusal line when the broker would drop
    messages and the mode is `on` (the caller prints it and exits 2), else None (findings logged)."""
    mode = settings.broker_check
    if mode == "off" or not settings.mqtt_url:
        return None
    if (reason := skip_reason(settings)) is not None:
        log.info("%s: broker check: %s", part, reason)
        return None
    try:
        report = run_check(settings)
    except ProbeFailed as exc:
        log.warning("%s: broker check skipped: %s", part, exc)
        return None
    log.info("%s: %s", part, report.summary())
    for finding in report.findings:
        if finding.level == "note":
            log.info("%s: broker check: %s", part, finding.text)
        elif finding.level == "warn" or mode == "warn":
            log.warning("%s: BROKER CHECK: %s", part, finding.text)
    if report.refused:
        if mode == "on":
            return report.refusal_line()
        log.warning("%s: BROKER CHECK (GRIDHUB_BROKER_CHECK=warn, starting anyway): %s", part, report.refusal_line())
    return None


def broker_check_cli(settings: Settings) -> int:
    """`gridhub broker check`: the report on stdout; exit 0 when the broker passes, 2 when a start would be refused
    (whatever GRIDHUB_BROKER_CHECK says), 1 when it could not be probed."""
    import sys

    if (reason := skip_reason(settings)) is not None:
        print(f"skipped: {reason}")
        return 0
    try:
        report = run_check(settings)
    except ProbeFailed as exc:
        print(f"gridhub broker check: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    for finding in report.findings:
        print(f"{finding.level}: {finding.text}")
    if report.refused:
        print(f"gridhub: {report.refusal_line()}", file=sys.stderr)
        return 2
    print("ok: the broker keeps what the hub cannot take at once")
    return 0
