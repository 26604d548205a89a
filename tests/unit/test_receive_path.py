"""The fast receive path against the paho-mqtt it was checked with: the version is in the supported range, and
a crafted PUBLISH is parsed from the buffer exactly as paho's own decoder parses it (no services needed)."""

from __future__ import annotations

import socket
import struct

import paho.mqtt.client as paho
import pytest
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import MQTTProtocolVersion

from gridhub.mqtt_fastpath import (
    SUPPORTED,
    BufferedSocket,
    paho_version,
    raw_topic,
    supported,
    take_publishes,
)


def publish_packet(topic: bytes, payload: bytes, qos: int, mid: int, retain: bool) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", mid) if qos else b"") + payload
    length, remaining = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        remaining += bytes([byte | (128 if length else 0)])
        if not length:
            break
    return bytes([0x30 | (qos << 1) | int(retain)]) + remaining + body


def test_paho_is_a_supported_version() -> None:
    assert SUPPORTED[0] <= paho_version() < SUPPORTED[1], (
        f"paho-mqtt {paho_version()} is outside {SUPPORTED}: check gridhub/mqtt_fastpath.py against it, "
        "then widen SUPPORTED and pyproject's pin")
    assert supported()


@pytest.mark.parametrize(("topic", "payload", "qos", "mid", "retain"), [
    (b"gridhub/v1/devices/sa-0001/telemetry", b'{"ts": 1, "metrics": {"battery_pct": 80}}', 1, 4711, False),
    (b"gridhub/v1/devices/sa-0002/status", b"online", 1, 65535, True),
    (b"gridhub/v1/devices/sa-0003/event", b"x" * 300, 0, 0, False),  # a two-byte remaining length
    (b"gridhub/v1/devices/\xff\xfe/telemetry", b"", 1, 1, False),  # not UTF-8, empty payload
])
def test_a_crafted_publish_parses_as_paho_parses_it(topic: bytes, payload: bytes, qos: int, mid: int,
                                                    retain: bool) -> None:
    packet = publish_packet(topic, payload, qos, mid, retain)
    header_len = packet.index(struct.pack("!H", len(topic)) + topic)
    ref = decode_publish(packet[0], packet[header_len:], MQTTProtocolVersion.MQTTv311)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.sendall(packet)
        sock = BufferedSocket(a)
        assert sock.fill() == len(packet)
        got: list[tuple[bytes, bytes, int, int, bool]] = []
        assert take_publishes(sock, lambda *m: got.append(m)) == 1
    finally:
        a.close()
        b.close()
    assert got == [(ref.topic, ref.payload, ref.mid, ref.qos, ref.retain)]
    assert got == [(topic, payload, mid, qos, retain)]


def test_raw_topic_is_the_bytes_on_the_wire() -> None:
    msg = paho.MQTTMessage(mid=3, topic=b"gridhub/v1/devices/\xff/telemetry")
    assert raw_topic(msg) == b"gridhub/v1/devices/\xff/telemetry"
