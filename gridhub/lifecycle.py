"""Running one part of the hub in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Part(Protocol):
    failed: threading.Event

    def start(self) -> None: ...

    def stop(self) -> None: ...


def run_until_signalled(part: Part, name: str, *, report: Callable[[float], None] | None = None,
                        report_every_s: float = 60.0, log: logging.Logger | None = None) -> None:
    """Start `part`, call `report(seconds since the last report)` every `report_every_s`, stop it on SIGTERM or
    SIGINT; raise when the part says it failed, so that the supervisor restarts it."""
    log = log or logging.getLogger(f"gridhub.{name}")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping %s", signum, name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        part.start()
        last = time.monotonic()
        while not stop.wait(1.0):
            if part.failed.is_set():
                raise RuntimeError(f"{name} failed (see the log above); restart gridhub {name}")
            if report is not None and time.monotonic() - last >= report_every_s:
                report(time.monotonic() - last)
                last = time.monotonic()
    finally:
        part.stop()
        for s, h in previous.items():
            signal.signal(s, h)
