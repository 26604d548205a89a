"""MQTT packets built by hand for the receive-path tests (MQTT 3.1.1 §3.3: PUBLISH)."""

from __future__ import annotations


def publish_packet(topic: bytes, payload: bytes, qos: int = 1, mid: int = 7, retain: bool = False) -> bytes:
    """A PUBLISH packet: fixed header (QoS, retain), variable length, topic, packet id when QoS > 0, payload."""
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"") + payload
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x30 | qos << 1 | int(retain)]) + bytes(length) + body
