"""The fast receive path gives the consumer exactly what paho as shipped gives it: the same PUBLISH packets,
decoded by paho's reader and handed to on_message, come out of `receive_directly` (paho's decoder, no
MQTTMessage) and of `buffer_reads` (block reads, with and without `take_publishes`) as the same (topic, payload,
mid, qos, retain), in the same order, whole or split across reads; and the coalesced PUBACKs are the bytes
`client.ack` writes one by one. Over a socket pair, no broker needed (the ingest consumer only runs the fast path
since its switches went; this is what `direct_receive=False` used to check end to end)."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable

import paho.mqtt.client as paho
import pytest
from mqtt_packets import publish_packet
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.mqtt_fastpath import buffer_reads, queue_pubacks, raw_topic, receive_directly

Message = tuple[bytes, bytes, int, int, bool]


PINGRESP = b"\xd0\x00"
STREAM: list[bytes] = [
    publish_packet(b"gridhub/v1/devices/sa-0001/telemetry", b'{"ts": 1, "metrics": {"battery_pct": 80}}', mid=1),
    publish_packet(b"gridhub/v1/devices/sa-0002/status", b"online", mid=65535, retain=True),
    publish_packet(b"gridhub/v1/devices/sa-0003/event", b"e" * 300, qos=0),  # a two-byte remaining length
    PINGRESP,  # another packet type in the middle: paho's reader takes it
    publish_packet(b"gridhub/v1/devices/\xff\xfe/telemetry", b"", mid=2),  # not UTF-8, empty payload
    publish_packet(b"gridhub/v1/devices/sa-0004/telemetry", bytes(range(256)) * 80, mid=3),  # over 16 KiB
    *(publish_packet(f"gridhub/v1/devices/sa-{i:04d}/telemetry".encode(), f'{{"seq": {i}}}'.encode(), mid=10 + i)
      for i in range(200)),
]


def paho_as_shipped(client: paho.Client, deliver: Callable[..., None]) -> None:
    """What the consumer does when the fast path is off (or this paho lacks it): on_message, the wire topic."""
    client.on_message = lambda c, u, m: deliver(raw_topic(m), bytes(m.payload), m.mid, m.qos, bool(m.retain))


def decoder_only(client: paho.Client, deliver: Callable[..., None]) -> None:
    assert receive_directly(client, deliver)


def block_reads(client: paho.Client, deliver: Callable[..., None]) -> None:
    assert receive_directly(client, deliver)
    assert buffer_reads(client)


def block_reads_taking_publishes(client: paho.Client, deliver: Callable[..., None]) -> None:
    """The consumer's own set-up (ingest/service.py): decoder for what paho reads, packets taken from the buffer."""
    assert receive_directly(client, deliver)
    assert buffer_reads(client, 0.0, deliver)


def consumer_client(sock: socket.socket) -> paho.Client:
    """A manual-ack MQTT 3.1.1 client reading from `sock` as if connected (paho's reader needs only the socket)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="fastpath-test", protocol=paho.MQTTv311,
                         manual_ack=True)
    client._sock = sock
    return client


def receive(sock: socket.socket, peer: socket.socket, set_up: Callable[[paho.Client, Callable[..., None]], None],
            chunk: int | None) -> list[Message]:
    """Send STREAM from `peer` (whole, or `chunk` bytes at a time) and read it with paho's loop_read."""
    got: list[Message] = []
    client = consumer_client(sock)
    set_up(client, lambda *m: got.append(m))
    wire = b"".join(STREAM)
    pieces = [wire] if chunk is None else [wire[i:i + chunk] for i in range(0, len(wire), chunk)]
    for piece in pieces:
        peer.sendall(piece)
        for _ in range(10 * len(STREAM)):  # each call reads at least a byte while there are any
            buffered = getattr(client._sock, "pending", lambda: 0)()
            if not buffered and not select.select([sock], [], [], 0)[0]:
                break
            assert client.loop_read() == paho.MQTT_ERR_SUCCESS
    return got


@pytest.mark.parametrize("set_up", [decoder_only, block_reads, block_reads_taking_publishes])
@pytest.mark.parametrize("chunk", [None, 7, 1500])
def test_the_fast_path_delivers_what_paho_delivers(pair: tuple[socket.socket, socket.socket],
                                                   set_up: Callable[[paho.Client, Callable[..., None]], None],
                                                   chunk: int | None) -> None:
    sock, peer = pair
    expected = receive(sock, peer, paho_as_shipped, chunk)
    assert len(expected) == len(STREAM) - 1  # every PUBLISH, the PINGRESP not
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        assert receive(a, b, set_up, chunk) == expected
    finally:
        a.close()
        b.close()


def test_coalesced_pubacks_are_the_bytes_paho_writes_one_by_one(pair: tuple[socket.socket, socket.socket]) -> None:
    sock, peer = pair
    mids = [1, 2, 65535, 300, *range(1000, 6000)]  # more than one write's worth (ACKS_PER_WRITE)
    peer.setblocking(False)
    one_by_one = consumer_client(sock)
    shipped = b""
    for mid in mids:
        assert one_by_one.ack(mid, 1) == paho.MQTT_ERR_SUCCESS
        shipped += _drain(peer)  # each a write of its own: keep the socket's buffer from filling
    a, b = socket.socketpair()
    try:
        b.setblocking(False)
        assert queue_pubacks(consumer_client(a), mids)
        assert _drain(b) == shipped
    finally:
        a.close()
        b.close()
    assert len(shipped) == 4 * len(mids)


def _drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data
