"""Running the hub: `resolve_services()` fills in the database and broker URLs (starting the local services
when none are configured), and `supervise()` runs parts as processes, restarting any that dies, until a
signal asks them all to stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from gridhub.settings import Settings, get_settings

log = logging.getLogger("gridhub")

PARTS = ("ingest", "alerts", "detect", "api")


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


def stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM (installed for this process from now on)."""
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return stopping


def supervise(parts: list[str], *, port: int, host: str, extra: dict[str, list[str]] | None = None) -> int:
    """Every part in `parts` as its own `python -m gridhub.cli PART` process: a part that dies is restarted
    (after 3 s when it lived less than 30 s); SIGINT or SIGTERM stops them all."""
    env = dict(os.environ)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    starts: dict[str, float] = {}

    def spawn(part: str) -> None:
        cmd = [sys.executable, "-m", "gridhub.cli", part]
        if part == "api":
            cmd += ["--port", str(port), "--host", host]
        cmd += (extra or {}).get(part, [])
        procs[part] = subprocess.Popen(cmd, env=env)
        starts[part] = time.monotonic()

    stopping = stop_on_signal()
    for part in parts:
        spawn(part)
    if "api" in parts:
        print(f"gridhub is up: board at http://{host if host != '0.0.0.0' else '127.0.0.1'}:{port}/", flush=True)
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
