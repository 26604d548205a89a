"""paho-mqtt's receive path made cheaper for a consumer of many small messages, and the only module that touches
paho's private internals: the socket read in large blocks, whole QoS 0/1 PUBLISH packets taken straight from that
buffer (MQTT 3.1.1), otherwise PUBLISH packets handed from paho's decoder to the consumer, and a batch of PUBACKs
written as one packet-queue entry.

paho still connects, subscribes, keeps alive, writes the acknowledgements and reads every other packet (and
any PUBLISH not wholly in the buffer); these changes sit under its public surface and switch themselves off
where this paho lacks what they rely on, or is not a version they were checked against (`SUPPORTED`; then the
client works exactly as shipped, through paho's own `on_message` and `ack`). Measured with the ingest benchmark:
paho reads each packet with three `recv` calls after one `select` and builds an MQTTMessage (with a
threading.Condition of its own) for each; taking packets from 64 KiB blocks brought the network thread from
about 15 to 4.4 microseconds a message. `tests/unit/test_receive_path.py` pins the paho version;
`tests/unit/test_fastpath_paho.py` checks that the fast path delivers and acknowledges exactly what paho would.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt.enums import MQTTErrorCode

_decode_publish: Any
try:  # paho-mqtt >= 2.2 decodes packets in a module of its own
    from paho.mqtt._packet import decode_publish as _decode_publish
except ImportError:  # pragma: no cover - paho-mqtt 2.1
    _decode_publish = None

SUPPORTED = ((2, 2), (2, 3))  # paho-mqtt versions checked against: from 2.2 up to, not including, 2.3
READ_BLOCK = 65536
PUBACK = 0x40
ACKS_PER_WRITE = 4096
DRAIN_PACKETS = 4096  # packets handled from the buffer before paho's loop gets to write and keep alive

Deliver = Callable[[bytes, bytes, int, int, bool], None]  # (topic, payload, mid, qos, retain)


def paho_version() -> tuple[int, int]:
    """The installed paho-mqtt's (major, minor)."""
    major, minor = PAHO_VERSION.split(".")[:2]
    return int(major), int(minor)


def supported() -> bool:
    """Whether the installed paho-mqtt is one this module was checked against."""
    low, high = SUPPORTED
    return low <= paho_version() < high


def raw_topic(msg: paho.MQTTMessage) -> bytes:
    """A received message's topic as the bytes on the wire (`msg.topic` fails on a topic that is not UTF-8)."""
    return msg._topic


def queue_pubacks(client: paho.Client, mids: list[int]) -> bool:
    """Queue the PUBACKs of QoS 1 messages (in this order) as one write per few thousand instead of one syscall
    and one segment each; a 2-byte PUBACK is valid in MQTT 3.1.1 and 5 (reason code omitted: success). False
    (nothing sent: acknowledge with `client.ack`) where this paho has no packet queue."""
    queue_packet = getattr(client, "_packet_queue", None)
    if queue_packet is None or not supported():
        return False
    for start in range(0, len(mids), ACKS_PER_WRITE):
        chunk = mids[start:start + ACKS_PER_WRITE]
        queue_packet(PUBACK, b"".join(struct.pack("!BBH", PUBACK, 2, mid) for mid in chunk), 0, 0)
    return True


def receive_directly(client: paho.Client, deliver: Deliver) -> bool:
    """Have paho hand each QoS 0/1 PUBLISH to `deliver` as it decodes it, instead of building an MQTTMessage
    (with a threading.Condition of its own that a received message never uses) and matching per-topic
    callbacks. Only for a client with manual acknowledgement (paho sends no PUBACK itself); QoS 2 takes paho's
    own path. False (on_message as usual) where this paho has no separate packet decoder."""
    if not supported() or _decode_publish is None or not hasattr(client, "_in_packet"):
        return False
    if not getattr(client, "_manual_ack", False):
        return False
    handle_publish = client._handle_publish
    protocol = client._protocol
    success = MQTTErrorCode.MQTT_ERR_SUCCESS

    def receive_publish() -> MQTTErrorCode:
        packet = client._in_packet
        result = _decode_publish(packet["command"], packet["packet"], protocol)
        if result.qos == 2:
            return handle_publish()
        deliver(result.topic, result.payload, result.mid, result.qos, result.retain)
        return success

    client._handle_publish = receive_publish  # type: ignore[method-assign]
    return True


class BufferedSocket:
    """The connected socket with a read buffer: `recv` serves paho's small reads from one large read, and
    `pending()` (paho's check for bytes buffered in a TLS socket) keeps its loop from waiting in select() while
    whole packets sit in the buffer. Everything else goes to the socket itself."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self.received = 0  # bytes read from the socket

    def recv(self, bufsize: int) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            data: bytes = self._sock.recv(max(bufsize, READ_BLOCK))  # BlockingIOError and OSError go to paho as before
            self.received += len(data)
            if len(data) <= bufsize:
                self._buf, self._pos = b"", 0
                return data
            self._buf, pos = data, 0
        end = min(pos + bufsize, len(self._buf))
        self._pos = end
        return self._buf[pos:end]

    def buffered(self) -> int:
        """Bytes read from the socket and not yet handed out."""
        return len(self._buf) - self._pos

    def fill(self) -> int:
        """Read the next block into the (empty) buffer; 0 when the peer closed. BlockingIOError when nothing is
        there."""
        data = self._sock.recv(READ_BLOCK)
        self.received += len(data)
        self._buf, self._pos = data, 0
        return len(data)

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def take_publishes(sock: BufferedSocket, deliver: Deliver) -> int:
    """Hand every whole MQTT 3.1.1 PUBLISH of QoS 0 or 1 at the front of the buffer to `deliver`, one after the
    other, and leave the buffer at the first byte of anything else (another packet type, QoS 2, a packet not
    wholly read yet, or one that is malformed: paho's own reader then takes it, and rejects what is broken).
    The number of packets taken."""
    buf, pos = sock._buf, sock._pos
    size = len(buf)
    taken = 0
    while pos + 2 <= size:
        first = buf[pos]
        qos = (first >> 1) & 3
        if first & 0xF0 != 0x30 or qos == 2 or qos == 3:
            break
        i, mult, length = pos + 1, 1, 0
        while i < size and mult <= 128 ** 3:
            byte = buf[i]
            length += (byte & 127) * mult
            i += 1
            if byte < 128:
                break
            mult *= 128
        else:
            break  # the length is not all here yet, or longer than MQTT allows
        end = i + length
        if end > size or length < 2:
            break
        topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
        body = topic_end + 2 if qos else topic_end
        if topic_end == i + 2 or body > end:
            break
        mid = (buf[topic_end] << 8) | buf[topic_end + 1] if qos else 0
        deliver(buf[i + 2:topic_end], buf[body:end], mid, qos, bool(first & 1))
        pos = end
        taken += 1
    sock._pos = pos
    return taken


def buffer_reads(client: paho.Client, gather_s: float = 0.0, deliver: Deliver | None = None) -> bool:
    """Put the client's current socket behind a `BufferedSocket` (call it from on_connect: paho makes a new socket
    for every reconnect) and let one loop pass handle every whole packet buffered. With `gather_s`, a pass that
    found less than a quarter block is followed by a pause that long, so that under a steady stream the thread
    wakes up for many packets at a time instead of for each (at the price of that much latency). With `deliver`
    (a client with manual acknowledgement speaking MQTT 3.1.1), QoS 0 and 1 PUBLISH packets are taken from the
    buffer by `take_publishes` without going through paho's reader at all. False where this paho's client does
    not keep its socket where expected."""
    sock = getattr(client, "_sock", None)
    if not supported() or sock is None or isinstance(sock, BufferedSocket) or not isinstance(sock, socket.socket):
        return isinstance(sock, BufferedSocket)
    buffered = BufferedSocket(sock)
    client._sock = buffered
    if "loop_read" not in vars(client):
        loop_read = client.loop_read
        success = MQTTErrorCode.MQTT_ERR_SUCCESS
        in_packet = getattr(client, "_in_packet", None)
        fast = (deliver is not None and isinstance(in_packet, dict) and getattr(client, "_manual_ack", False)
                and getattr(client, "_protocol", None) in (paho.MQTTv31, paho.MQTTv311)
                and hasattr(client, "_last_bytes_received") and hasattr(client, "_msgtime_mutex"))

        def drain_read(max_packets: int = 1) -> MQTTErrorCode:
            current = client._sock
            before = current.received if isinstance(current, BufferedSocket) else 0
            rc = loop_read(max_packets)
            for _ in range(DRAIN_PACKETS):
                current = client._sock
                if rc != success or not isinstance(current, BufferedSocket) or current.pending() <= 0:
                    break
                rc = loop_read(max_packets)
            if gather_s and rc == success and isinstance(current, BufferedSocket) \
                    and 0 < current.received - before < READ_BLOCK // 4:
                time.sleep(gather_s)
            return rc

        def take_read(max_packets: int = 1) -> MQTTErrorCode:
            current = client._sock
            if not isinstance(current, BufferedSocket):
                return loop_read(max_packets)
            assert deliver is not None
            before = current.received
            rc = success
            taken = 0
            while taken < DRAIN_PACKETS:  # then back to paho's loop, which writes the acknowledgements
                if client._in_packet["command"] == 0:  # between packets
                    if current.buffered() == 0:
                        try:
                            if current.fill() == 0:
                                return loop_read(max_packets)  # closed: paho's own read sees it and says so
                        except BlockingIOError:
                            break
                        except OSError:
                            return loop_read(max_packets)  # paho's own read meets the error and reports it
                    got = take_publishes(current, deliver)
                    if got:
                        taken += got
                        with client._msgtime_mutex:
                            client._last_bytes_received = paho.time_func()
                    if current.buffered() == 0:
                        continue
                rc = loop_read(max_packets)  # anything else, or the rest of a packet, goes through paho
                taken += 1
                nxt = client._sock
                if rc != success or not isinstance(nxt, BufferedSocket):
                    return rc
                current = nxt
                if client._in_packet["command"] != 0 and current.buffered() == 0:
                    break  # the rest of this packet has not arrived yet
            if gather_s and rc == success and 0 < current.received - before < READ_BLOCK // 4:
                time.sleep(gather_s)
            return rc

        client.loop_read = take_read if fast else drain_read  # type: ignore[method-assign]
    return True
