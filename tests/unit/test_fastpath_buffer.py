"""The consumer's block reads under paho, over a real socket pair: small reads served from one large read,
packets split across reads, `pending()` telling paho's loop not to wait, and the socket's own errors."""

from __future__ import annotations

import socket

import pytest
from mqtt_packets import publish_packet

from gridhub.mqtt_fastpath import READ_BLOCK, BufferedSocket, take_publishes


def test_small_reads_come_from_one_block(pair: tuple[socket.socket, socket.socket]) -> None:
    raw, peer = pair
    sock = BufferedSocket(raw)
    packets = [bytes([0x30, 5]) + b"hello", bytes([0x30, 3]) + b"abc"]
    peer.sendall(b"".join(packets))
    got = []
    for _ in packets:
        command, length = sock.recv(1), sock.recv(1)
        got.append(command + length + sock.recv(length[0]))
    assert got == packets
    assert sock.pending() == 0
    with pytest.raises(BlockingIOError):  # nothing buffered, nothing on the socket: paho waits in select()
        sock.recv(1)


def test_pending_counts_what_is_buffered(pair: tuple[socket.socket, socket.socket]) -> None:
    raw, peer = pair
    sock = BufferedSocket(raw)
    peer.sendall(b"x" * 100)
    assert sock.recv(1) == b"x"
    assert sock.pending() == 99
    assert sock.recv(500) == b"x" * 99  # a short read, as from a socket
    assert sock.pending() == 0


def test_a_packet_split_across_blocks(pair: tuple[socket.socket, socket.socket]) -> None:
    raw, peer = pair
    sock = BufferedSocket(raw)
    body = bytes(range(256)) * (READ_BLOCK // 256 + 8)
    peer.sendall(b"\x01" + body[:100])
    assert sock.recv(1) == b"\x01"
    first = sock.recv(len(body))
    assert first == body[:100]
    with pytest.raises(BlockingIOError):
        sock.recv(len(body) - len(first))
    peer.sendall(body[100:])
    rest = b""
    while len(first) + len(rest) < len(body):
        rest += sock.recv(len(body) - len(first) - len(rest))
    assert first + rest == body


def test_a_large_read_passes_straight_through(pair: tuple[socket.socket, socket.socket]) -> None:
    raw, peer = pair
    sock = BufferedSocket(raw)
    peer.sendall(b"y" * 10)
    assert sock.recv(READ_BLOCK * 2) == b"y" * 10
    assert sock.pending() == 0


def test_closed_peer_reads_empty_and_the_rest_goes_to_the_socket(pair: tuple[socket.socket, socket.socket]) -> None:
    raw, peer = pair
    sock = BufferedSocket(raw)
    assert sock.fileno() == raw.fileno()
    assert sock.send(b"ping") == 4
    assert peer.recv(4) == b"ping"
    peer.close()
    assert sock.recv(1) == b""  # paho reads this as the connection lost


def test_whole_publishes_are_taken_from_the_buffer(pair: tuple[socket.socket, socket.socket]) -> None:
    raw, peer = pair
    sock = BufferedSocket(raw)
    big = b"p" * 300  # a two-byte remaining length
    peer.sendall(publish_packet(b"a/b", b"one", mid=1) + publish_packet(b"a/c", big, qos=0, retain=True)
                 + publish_packet(b"a/d", b"three", mid=65535) + b"\x90\x03\x00\x05\x01"  # a SUBACK
                 + publish_packet(b"a/e", b"after"))
    sock.fill()
    got: list[tuple[bytes, bytes, int, int, bool]] = []
    assert take_publishes(sock, lambda *m: got.append(m)) == 3
    assert got == [(b"a/b", b"one", 1, 1, False), (b"a/c", big, 0, 0, True), (b"a/d", b"three", 65535, 1, False)]
    assert sock.recv(1) == b"\x90"  # paho's reader takes the SUBACK from here


def test_a_partial_publish_is_left_for_the_next_read(pair: tuple[socket.socket, socket.socket]) -> None:
    raw, peer = pair
    sock = BufferedSocket(raw)
    second = publish_packet(b"t", b"x" * 1000)
    peer.sendall(publish_packet(b"t", b"first") + second[:2])  # the second's length is not all here
    sock.fill()
    got: list[tuple[bytes, bytes, int, int, bool]] = []
    assert take_publishes(sock, lambda *m: got.append(m)) == 1
    assert sock.buffered() == 2
    assert sock.recv(2) == second[:2]


def test_what_paho_must_judge_is_left_to_it(pair: tuple[socket.socket, socket.socket]) -> None:
    """QoS 2 and a PUBLISH with an empty topic (malformed in 3.1.1) are not taken."""
    raw, peer = pair
    sock = BufferedSocket(raw)
    for packet in (publish_packet(b"t", b"x", qos=2), publish_packet(b"", b"x")):
        peer.sendall(packet)
        sock.fill()
        assert take_publishes(sock, lambda *m: pytest.fail("taken")) == 0
        assert sock.recv(len(packet)) == packet
