"""Fixtures of the unit layer (no service; the service fixtures of tests/conftest.py refuse unit tests)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected socket pair, the first end non-blocking as paho's socket is: the receive path's tests."""
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()
