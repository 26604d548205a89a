"""Fixtures for the API tests: the real app served by uvicorn on a free port, and a token per registry worker."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from gridhub.api.app import create_app
from gridhub.settings import Settings

ROLES_BY_WORKER = {"w-001": "grid_worker", "w-002": "grid_head", "w-003": "grid_worker", "w-004": "grid_head",
                   "s-001": "street_officer", "b-001": "bureau", "a-001": "admin"}
ALL_WORKERS = tuple(ROLES_BY_WORKER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningApi:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def serve(settings: Settings) -> RunningApi:
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gridhub-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start; see the log above")
        time.sleep(0.05)
    return RunningApi(f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture(scope="session")
def api(settings: Settings, passwords: dict[str, str]) -> Iterator[RunningApi]:
    running = serve(settings)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tokens(api: RunningApi, passwords: dict[str, str]) -> dict[str, str]:
    out = {}
    with httpx.Client(base_url=api.url) as client:
        for wid in ALL_WORKERS:
            r = client.post("/api/v1/auth/token", data={"username": wid, "password": passwords[wid]})
            assert r.status_code == 200, r.text
            out[wid] = r.json()["access_token"]
    return out


@pytest.fixture
def client(api: RunningApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=30) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def as_(tokens: dict[str, str], wid: str) -> dict[str, Any]:
    return {"headers": bearer(tokens[wid])}


def all_pages(client: httpx.Client, path: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list, following `next`."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        r = client.get(path, headers=headers, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next"]
        if cursor is None:
            return items
    raise AssertionError(f"{path} pages never ended")
