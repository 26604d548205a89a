"""`gridhub demo`: the whole hub with the demo district, its devices alive, a scenario every few minutes, and its
grid workers doing their patrols.

This module sets the hub up (services, schema, registry, passwords, broker accounts, the hub's parts as
processes under `supervise()`); the devices and the workers are the simulators'
(`gridhub.simulators.demo.district_life`), which speak only the protocol and the public REST API.

The demo district's facility dates are written as of `DEMO_DATES_AS_OF`; `demo_registry()` moves them by the days
since, so that whenever the demo runs the same few extinguishers are expired or expire within its first days.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import threading
import time
import urllib.request
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from gridhub.protocol import BrokerAddress
from gridhub.runtime import PARTS, resolve_services, supervise
from gridhub.services.local import running_local_services
from gridhub.settings import get_settings
from gridhub.simulators.demo import SCENARIO_CYCLE, district_life
from gridhub.simulators.fleet import DeviceAccounts, demo_district_path
from gridhub.simulators.workers import WorkerOptions

log = logging.getLogger("gridhub.demo")

DEMO_PASSWORD_PREFIX = "demo-"
# one of each role that logs in; the bureau and one grid worker are printed first
DEMO_LOGINS = ("b-001", "w-001", "h-001", "s-001", "a-001")
# gridhub/demo/district.yaml's facility dates are written as of this day (its header says so)
DEMO_DATES_AS_OF = date(2026, 12, 7)
DEMO_WORKERS_PER_MINUTE = 6.0  # the simulated workers' actions a minute, all together


def demo_password(worker_id: str) -> str:
    return f"{DEMO_PASSWORD_PREFIX}{worker_id}"


def _part_available(part: str) -> bool:
    module = {"ingest": "gridhub.ingest.service", "alerts": "gridhub.alerts.service",
              "detect": "gridhub.detectors.live", "notify": "gridhub.alerts.notify.sender",
              "api": "gridhub.api.app"}[part]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _broker_speaks_v5(settings: Any, embedded: bool) -> bool:
    """amqtt, the embedded broker, speaks MQTT 3.1.1 only."""
    if embedded:
        return False
    try:
        services = running_local_services(Path(settings.data_dir))
    except Exception:  # noqa: BLE001 - no local services: an external broker, assumed to speak MQTT 5
        return True
    if services is None or not settings.mqtt_url:
        return True
    target = BrokerAddress.parse(settings.mqtt_url)
    return not (services.broker_kind == "embedded" and target.port == services.broker.port)


def demo_registry(today: date) -> Any:
    """The demo district as `gridhub demo` imports it: the file, with every facility's `expires` moved by the days
    from `DEMO_DATES_AS_OF` to `today` (the district's date)."""
    from gridhub.registry import load_file

    registry = load_file(demo_district_path())
    shift = timedelta(days=(today - DEMO_DATES_AS_OF).days)
    if not shift:
        return registry
    moved = [f.model_copy(update={"expires": f.expires + shift}) if f.expires else f for f in registry.facilities]
    return registry.model_copy(update={"facilities": moved})


def simulated_people(registry: Any) -> tuple[list[str], list[str]]:
    """The grid workers who patrol and the grid heads who confirm reports in the demo (they get demo passwords):
    all but the printed log-ins (w-001, h-001), whose patrols and reports are left for the person trying the demo."""
    workers = [w.id for w in registry.workers if w.active and w.role == "grid_worker" and w.id not in DEMO_LOGINS]
    heads = [w.id for w in registry.workers if w.active and w.role == "grid_head" and w.id not in DEMO_LOGINS]
    return workers, heads


def prepare(settings: Any) -> dict[str, str]:
    """Schema, the demo district, demo passwords (the printed log-ins and every simulated grid worker and head) and
    the broker's accounts; returns worker id → name."""
    from gridhub.auth import set_password
    from gridhub.broker import write_credentials
    from gridhub.db import connect, migrate
    from gridhub.registry import import_registry

    assert settings.database_url
    migrate(settings.database_url)
    registry = demo_registry(datetime.now(settings.tz).date())
    people = {w.id for w in registry.workers}
    workers, heads = simulated_people(registry)
    with connect(settings.database_url) as conn:
        counts = import_registry(conn, registry)
        for wid in dict.fromkeys([*DEMO_LOGINS, *workers, *heads]):
            if wid in people:
                set_password(conn, wid, demo_password(wid))
    log.info("demo district imported: %s", ", ".join(f"{v} {k}" for k, v in counts.items()))
    result = write_credentials(settings)
    if not result.get("applied_to_local_broker"):
        log.warning("the broker at %s is not gridhub's own: give it the accounts in %s (passwd and acl) so that "
                    "the devices can log in", BrokerAddress.parse(settings.mqtt_url).host, result.get("dir"))
    return {w.id: w.name for w in registry.workers}


def _wait_for_board(url: str, timeout: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):  # noqa: S310 - our own local URL
                return True
        except OSError:
            time.sleep(1)
    return False


def _print_logins(board: str, names: dict[str, str]) -> None:
    lines = [f"gridhub demo: the board is at {board}", "log in as:"]
    roles = {"b-001": "bureau (应急管理局)", "w-001": "grid worker (网格员)", "h-001": "grid head (网格长)",
             "s-001": "street officer", "a-001": "admin"}
    for wid in (w for w in DEMO_LOGINS if w in names):
        lines.append(f"  {roles[wid]:24} {wid} / {demo_password(wid)}  ({names.get(wid, '')})")
    lines.append(f"  the grid worker's page: {board}worker (install it on a phone; 订阅推送通知 turns on Web Push)")
    lines.append("  the other grid workers and heads (w-002…, h-002…) are simulated: they do their patrols, find"
                 " hazards and fix them; w-001's and h-001's are left to you")
    lines.append("Ctrl-C stops everything the demo started.")
    print("\n".join(lines), flush=True)


def demo_notify_file(data_dir: Path, link_base: str) -> Path:
    """The demo's notify file (CONTRACT §6): Web Push to the worker page for every task, the grid head and the
    street told after a minute when nobody accepts a critical one; a VAPID key made once in the data directory.
    WeCom, DingTalk and SMS need the district's own accounts (docs/notifications.md)."""
    from gridhub.alerts.notify.vapid import generate_keys

    data_dir.mkdir(parents=True, exist_ok=True)
    key = data_dir / "vapid.pem"
    if not key.exists():
        generate_keys(key)
    path = data_dir / "demo-notify.yaml"
    path.write_text(
        "# written by `gridhub demo`; set GRIDHUB_NOTIFY_FILE to use your own (docs/notifications.md)\n"
        f"channels:\n  push: {{type: webpush, vapid_private_key_file: \"{key.resolve()}\","
        " subject: \"mailto:ops@example.org\"}\n"
        "routes:\n"
        "  critical: {assignee: [push], level1: [push], level2: [push], level3: [push]}\n"
        "  high: {assignee: [push], level1: [push]}\n"
        "  normal: {assignee: [push]}\n"
        "  low: {assignee: [push], quiet_hours: \"22:00-07:00\"}\n"
        "fallback_after_s: {critical: 60, high: 600}\n"
        f"link_base: \"{link_base}\"\n", encoding="utf-8")
    return path


def _device_broker(settings: Any, mqtt_url: str) -> BrokerAddress:
    """Where the virtual devices connect: the local mosquitto's device listener (client id = the account's user
    name, so no device can take the hub's sessions), else the broker the hub was given."""
    hub = BrokerAddress.parse(mqtt_url)
    with contextlib.suppress(Exception):
        local = running_local_services(settings.data_dir)
        if local is not None and local.is_running() and local.mqtt_url == mqtt_url:
            return BrokerAddress(hub.host, local.device_port, hub.username, hub.password, hub.tls)
    return hub


def run_demo(args: argparse.Namespace) -> int:
    """Start services, hub parts and simulators; print the board and log-ins; Ctrl-C stops them."""
    started_services = None
    try:
        before = running_local_services(get_settings().data_dir)
        already = before is not None and before.is_running()
    except Exception:  # noqa: BLE001
        already = True
    settings = resolve_services(get_settings(), embedded=args.embedded)
    if not already:
        with contextlib.suppress(Exception):
            started_services = running_local_services(settings.data_dir)
    names = prepare(settings)
    mqtt_url = settings.mqtt_url
    assert mqtt_url, "resolve_services fills in the broker URL"
    parts = [p for p in PARTS if _part_available(p)]
    missing = set(PARTS) - set(parts)
    if missing:
        log.warning("not in this build, so not started: %s", ", ".join(sorted(missing)))
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    board = f"http://{host}:{args.port}/"
    scenarios = tuple(s for s in SCENARIO_CYCLE if s != "exit_blocked" or "detect" in parts)
    if settings.notify_file is None and "notify" in parts:
        os.environ["GRIDHUB_NOTIFY_FILE"] = str(demo_notify_file(settings.data_dir, board.rstrip("/")))
        get_settings.cache_clear()

    stop_flag = threading.Event()
    loop_box: dict[str, Any] = {}
    device_broker = _device_broker(settings, mqtt_url)
    workers, heads = simulated_people(demo_registry(datetime.now(settings.tz).date()))
    people = WorkerOptions(api=board, workers=tuple(workers), heads=tuple(heads), password=demo_password("{id}"),
                           per_minute=DEMO_WORKERS_PER_MINUTE) if "api" in parts else None

    def simulators() -> None:
        if not _wait_for_board(board, 90, stop_flag) and "api" in parts:
            log.warning("the board did not answer at %s within 90 s; starting the devices anyway", board)
        if stop_flag.is_set():
            return

        async def main() -> None:
            stop = asyncio.Event()
            loop_box["loop"], loop_box["stop"] = asyncio.get_running_loop(), stop
            if stop_flag.is_set():
                return
            await district_life(device_broker, DeviceAccounts(secret=settings.signing_key()),
                                stop, prefix=settings.topic_prefix, timezone=settings.timezone,
                                v5=_broker_speaks_v5(settings, args.embedded), board=board, scenarios=scenarios,
                                workers=people)

        asyncio.run(main())
        log.info("virtual devices stopped")

    sim = threading.Thread(target=simulators, name="demo-devices", daemon=True)
    sim.start()
    greeting = threading.Timer(3.0, _print_logins, (board, names))
    greeting.daemon = True
    greeting.start()
    try:
        supervise(parts, port=args.port, host=args.host)  # until Ctrl-C or SIGTERM
    finally:
        greeting.cancel()
        stop_flag.set()
        loop, stop = loop_box.get("loop"), loop_box.get("stop")
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        sim.join(20)
        if started_services is not None:
            log.info("stopping the local services the demo started")
            started_services.stop()
    return 0
