"""Waiting for a dependency (the database) instead of dying: the one backoff, the one retry loop, and what each
part's health endpoint says while it waits.

Invariant: a part that loses the database neither exits nor acknowledges anything it has not stored or processed;
its threads wait with capped, jittered backoff (`Backoff`) and try again on a new connection, either one round
trip at a time (`keep_trying`, the caller keeps its work in hand) or a whole loop that holds connections
(`run_through_outages`, which runs the loop again once the database answers). Every waiting thread reports to the
process's `WAITS`: the first waiter logs once that the part is waiting (and why, redacted, to the log only), the
last one back logs once that it is back; in between no line per retry. `serve_health` answers `GET /healthz`
with 503 `{"status": "waiting", "waiting_for": "database", "since": ...}` while anything waits and 200
`{"status": "ok"}` otherwise, and `GET /metrics` with the gauge `gridhub_part_waiting{part,dependency}`: no
exception text, host or URL goes into either.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol, TypeVar

import psycopg
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from gridhub.db import DatabaseUnavailable, redact

__all__ = ["DATABASE", "DATABASE_ERRORS", "WAITS", "Backoff", "GaveUp", "HealthServer", "Stopping", "Waits",
           "keep_trying", "run_through_outages", "serve_health"]

log = logging.getLogger("gridhub.waiting")

DATABASE = "database"
# what "the database went away" looks like: a refused or broken connection (psycopg), or our own connect()'s error
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable)
FIRST_S, CAP_S, JITTER = 0.2, 5.0, 0.2  # the first wait, the longest, and ± this fraction of it at random
STOP_GRACE_S = 10.0  # how long a stopping part keeps trying before it leaves its work to the broker

T = TypeVar("T")


class Stopping(Protocol):
    """A threading.Event or a multiprocessing Event: set when the part stops."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class GaveUp(Enum):
    """What `keep_trying` returns when the part stopped before the dependency came back."""

    STOPPING = "stopping"


class Backoff:
    """Waits that double from `first` up to `cap`, each with ±`jitter` at random (so that many waiters do not knock
    at once); `reset()` once the dependency answers."""

    def __init__(self, first: float = FIRST_S, cap: float = CAP_S, jitter: float = JITTER) -> None:
        self.first, self.cap, self.jitter = first, cap, jitter
        self._next = first

    def next(self) -> float:
        base = self._next
        self._next = min(self._next * 2, self.cap)
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        self._next = self.first


class Waits:
    """What one process is waiting for, by dependency, and since when; several threads (waiters) may wait for one
    dependency: it is waited for from the first waiter's start to the last one's return."""

    def __init__(self, part: str = "gridhub", *, log_changes: bool = True) -> None:
        self.part = part
        self.log_changes = log_changes  # off where another process logs for the part (alerts' telemetry lane)
        self.registry = CollectorRegistry(auto_describe=True)
        self.gauge = Gauge("gridhub_part_waiting", "1 while the part waits for the dependency (e.g. the database is"
                           " away), else 0", ["part", "dependency"], registry=self.registry)
        self._lock = threading.Lock()
        self._waiters: dict[str, set[str]] = {}
        self._since: dict[str, tuple[datetime, float]] = {}
        self._known: set[str] = set()

    def name(self, part: str) -> None:
        """The part this process runs (the gauge's `part` label), with a zero series for the database."""
        with self._lock:
            self.part = part
            self.gauge.clear()
            for dep in {DATABASE, *self._known, *self._since}:
                self.gauge.labels(part, dep).set(1 if dep in self._since else 0)

    def begin(self, dependency: str, waiter: str, reason: str = "") -> None:
        """`waiter` waits for `dependency` (`reason` goes to the log only, and only for the first waiter)."""
        with self._lock:
            waiters = self._waiters.setdefault(dependency, set())
            first = not waiters and dependency not in self._since
            waiters.add(waiter)
            if first:
                self._since[dependency] = (datetime.now(UTC), time.monotonic())
                self._known.add(dependency)
                self.gauge.labels(self.part, dependency).set(1)
        if first and self.log_changes:
            log.warning("%s: waiting for the %s (%s); nothing unstored is acknowledged meanwhile", self.part,
                        dependency, reason or "unreachable")

    def end(self, dependency: str, waiter: str) -> None:
        """`waiter` has `dependency` again; the wait is over when no waiter is left."""
        with self._lock:
            waiters = self._waiters.get(dependency)
            if not waiters or waiter not in waiters:
                return
            waiters.discard(waiter)
            if waiters:
                return
            _, started = self._since.pop(dependency)
            self.gauge.labels(self.part, dependency).set(0)
        if self.log_changes:
            log.warning("%s: the %s is back after %.1f s", self.part, dependency, time.monotonic() - started)

    def waiting(self) -> dict[str, datetime]:
        """Each dependency waited for, and since when."""
        with self._lock:
            return {dep: since for dep, (since, _) in self._since.items()}

    def health(self) -> tuple[int, dict[str, Any]]:
        """The health answer: 503 and what is waited for since when, or 200."""
        waiting = self.waiting()
        if not waiting:
            return 200, {"status": "ok", "part": self.part, "pid": os.getpid()}
        first = min(waiting, key=lambda d: waiting[d])
        return 503, {"status": "waiting", "part": self.part, "pid": os.getpid(), "waiting_for": first,
                     "since": waiting[first].isoformat(timespec="seconds"),
                     "waiting": {d: s.isoformat(timespec="seconds") for d, s in sorted(waiting.items())}}

    def metrics(self) -> bytes:
        return generate_latest(self.registry)


WAITS = Waits()  # this process's: every part runs in a process of its own


def _reason(exc: BaseException, url: str | None) -> str:
    """The first line of an error for the log, with the URL's password hidden."""
    text = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
    return text.replace(url, redact(url)) if url else text


def keep_trying(attempt: Callable[[], T], *, waiter: str, stopping: Stopping,
                on_error: Callable[[BaseException], None] | None = None,
                errors: tuple[type[Exception], ...] = DATABASE_ERRORS, dependency: str = DATABASE,
                grace_s: float | None = STOP_GRACE_S, waits: Waits | None = None, url: str | None = None,
                backoff: Backoff | None = None) -> T | Literal[GaveUp.STOPPING]:
    """`attempt()` until it succeeds, through outages: on one of `errors`, `on_error(exc)` (forget a broken
    connection), wait (`Backoff`) and try again; the caller acknowledges nothing meanwhile. Once `stopping` is set
    it keeps trying for `grace_s` more (None: not at all) and then returns `GaveUp.STOPPING`, leaving its work
    unacknowledged for the broker to deliver again."""
    waits = waits or WAITS
    backoff = backoff or Backoff()
    give_up_at: float | None = None
    waited = False
    failures = 0
    try:
        while True:
            try:
                result = attempt()
            except errors as exc:
                if on_error is not None:
                    on_error(exc)
                failures += 1
                if failures == 1:
                    continue  # a connection that broke while idle (an outage already over): once more at once
                if stopping.is_set():
                    give_up_at = give_up_at or time.monotonic() + (grace_s or 0.0)
                    if time.monotonic() >= give_up_at:
                        return GaveUp.STOPPING
                if not waited:
                    waits.begin(dependency, waiter, _reason(exc, url))
                    waited = True
                delay = backoff.next()
                log.debug("%s: %s unavailable, trying again in %.2f s", waiter, dependency, delay)
                if stopping.is_set():
                    time.sleep(min(delay, 0.5))
                else:
                    stopping.wait(delay)
                continue
            return result
    finally:
        if waited:
            waits.end(dependency, waiter)


def run_through_outages(body: Callable[[Callable[[], None]], None], *, waiter: str, stopping: Stopping,
                        errors: tuple[type[Exception], ...] = DATABASE_ERRORS, dependency: str = DATABASE,
                        waits: Waits | None = None, url: str | None = None) -> None:
    """Run `body(connected)`, a loop that holds its own connections, until it returns or `stopping` is set; when it
    raises one of `errors`, wait (`Backoff`) and run it again from the top (new connections). `body` calls
    `connected()` once its connections answer: that ends the wait. Other exceptions go to the caller."""
    waits = waits or WAITS
    backoff = Backoff()
    at_once = True  # the first failure after running well is tried again at once: a connection that broke while
    # idle, through an outage that is already over, is no reason to say we wait

    def connected() -> None:
        nonlocal at_once
        backoff.reset()
        at_once = True
        waits.end(dependency, waiter)

    try:
        while not stopping.is_set():
            try:
                body(connected)
                return
            except errors as exc:
                if stopping.is_set():
                    return
                if at_once:
                    at_once = False
                    continue
                waits.begin(dependency, waiter, _reason(exc, url))
                stopping.wait(backoff.next())
    finally:
        waits.end(dependency, waiter)


class HealthServer:
    """`GET /healthz` and `GET /metrics` of one part's `Waits`, on a thread of its own."""

    def __init__(self, waits: Waits, host: str, port: int) -> None:
        handler = _handler(waits)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(waits: Waits) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path in ("/healthz", "/health"):
                code, body = waits.health()
                self._answer(code, json.dumps(body).encode(), "application/json")
            elif path == "/metrics":
                self._answer(200, waits.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            else:
                self._answer(404, b'{"status": "not found"}', "application/json")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            return

    return Handler


def serve_health(part: str, host: str, port: int | None) -> HealthServer | None:
    """Name this process's part and, with a port, serve its health there (None: no health server). A port in use
    is logged, not fatal: the part runs without its health endpoint rather than not at all."""
    WAITS.name(part)
    if port is None:
        return None
    try:
        server = HealthServer(WAITS, host, port)
    except OSError as exc:
        log.error("%s: cannot serve its health on %s:%d (%s); running without it", part, host, port, exc)
        return None
    log.info("%s: health on http://%s:%d/healthz", part, host, server.port)
    return server
