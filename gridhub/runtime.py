"""Running the hub: `resolve_services()` fills in the database and broker URLs (starting the local services
when none are configured), `supervise()` runs parts as processes, restarting any that dies, and
`run_until_signalled()` runs one part in the foreground with its health endpoint (`gridhub/waiting.py`); SIGINT or
SIGTERM stops either (`stop_on_signal()`). A part never exits because the database went away (it waits, and its
health says so), so a restart by the supervisor means a bug or a signal, not an outage."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from gridhub.settings import Settings, get_settings

log = logging.getLogger("gridhub")

PARTS = ("ingest", "alerts", "detect", "notify", "api")
HEALTH_PARTS = ("ingest", "alerts", "detect", "notify")  # the api has its own /healthz


def health_port(part: str, *, base: int | None, api_port: int) -> int | None:
    """The health port `gridhub up` gives a part: `base` (GRIDHUB_HEALTH_PORT, else the api's port + 1) plus its
    place in HEALTH_PARTS; None for the api."""
    if part not in HEALTH_PARTS:
        return None
    return (base if base is not None else api_port + 1) + HEALTH_PARTS.index(part)


def serve_part_health(name: str) -> Any:
    """This process's health endpoint (`gridhub.waiting.serve_health`) on GRIDHUB_HEALTH_PORT, if set."""
    from gridhub.waiting import serve_health

    settings = get_settings()
    return serve_health(name, settings.health_host, settings.health_port)


def resolve_services(settings: Settings, *, embedded: bool = False) -> Settings:
    """Settings with both URLs filled in: the configured ones, else the project's own local services."""
    if settings.database_url and settings.mqtt_url:
        return settings
    from gridhub.services.local import running_local_services, start_local_services

    running = running_local_services(settings.data_dir)
    if running is not None and running.is_running() and (running.kind == "embedded" or not embedded):
        services = running  # whatever kind was started last for this data directory, e.g. by `up --embedded`
    else:
        services = start_local_services(settings.data_dir, prefer_embedded=embedded)
    log.info("local services (%s): database and broker ready", services.kind)
    os.environ.setdefault("GRIDHUB_DATABASE_URL", services.database_url)
    os.environ.setdefault("GRIDHUB_MQTT_URL", services.mqtt_url)
    get_settings.cache_clear()
    return get_settings()


class Part(Protocol):
    """One part of the hub that runs in threads of its own: started, stopped, and saying when it failed."""

    failed: threading.Event

    def start(self) -> None: ...

    def stop(self) -> None: ...


def stop_on_signal(on_signal: Callable[[int], None] | None = None) -> tuple[threading.Event, dict[signal.Signals, Any]]:
    """An event that SIGTERM or SIGINT sets from now on (after `on_signal(signum)`), and the handlers it replaced."""
    stopping = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if on_signal is not None:
            on_signal(signum)
        stopping.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return stopping, previous


def run_until_signalled(part: Part, name: str, *, report: Callable[[float], None] | None = None,
                        report_every_s: float = 60.0, log: logging.Logger | None = None) -> None:
    """Start `part`, call `report(seconds since the last report)` every `report_every_s`, stop it on SIGTERM or
    SIGINT; raise when the part says it failed, so that the supervisor restarts it."""
    part_log = log or logging.getLogger(f"gridhub.{name}")
    stop, previous = stop_on_signal(lambda signum: part_log.info("signal %d: stopping %s", signum, name))
    health = serve_part_health(name)
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
        if health is not None:
            health.stop()
        for s, h in previous.items():
            signal.signal(s, h)


def supervise(parts: list[str], *, port: int, host: str, extra: dict[str, list[str]] | None = None) -> int:
    """Every part in `parts` as its own `python -m gridhub.cli PART` process, each with its health endpoint
    (`health_port`): a part that dies is restarted (after 3 s when it lived less than 30 s); SIGINT or SIGTERM stops
    them all."""
    env = dict(os.environ)
    base, health_host = get_settings().health_port, get_settings().health_host
    procs: dict[str, subprocess.Popen[bytes]] = {}
    starts: dict[str, float] = {}

    def spawn(part: str) -> None:
        cmd = [sys.executable, "-m", "gridhub.cli", *(["notify", "run"] if part == "notify" else [part])]
        if part == "api":
            cmd += ["--port", str(port), "--host", host]
        cmd += (extra or {}).get(part, [])
        hp = health_port(part, base=base, api_port=port)
        part_env = {**env, "GRIDHUB_HEALTH_PORT": str(hp)} if hp is not None else env
        procs[part] = subprocess.Popen(cmd, env=part_env)
        starts[part] = time.monotonic()

    stopping, _ = stop_on_signal()
    for part in parts:
        spawn(part)
    if "api" in parts:
        print(f"gridhub is up: board at http://{host if host != '0.0.0.0' else '127.0.0.1'}:{port}/", flush=True)
    for part in parts:
        if (hp := health_port(part, base=base, api_port=port)) is not None:
            log.info("part %s: health at http://%s:%d/healthz", part, health_host, hp)
    try:
        while not stopping.is_set():
            time.sleep(0.5)
            for part, proc in list(procs.items()):
                rc = proc.poll()
                if rc is not None and not stopping.is_set():
                    wait = 0 if time.monotonic() - starts[part] > 30 else 3
                    log.error("part %s exited with %s; restarting%s", part, rc, f" in {wait} s" if wait else "")
                    time.sleep(wait)
                    spawn(part)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0
