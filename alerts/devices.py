"""What one alerts process knows of the devices it evaluates: their registry entries, which partitions it holds,
their rule state in memory, and the offline deadline that each sign of life moves."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from gridhub.alerts import records, timers
from gridhub.alerts.changes import UnitOfWork
from gridhub.alerts.evaluate import DeviceState, Finding
from gridhub.alerts.partitions import partition_of
from gridhub.alerts.rules import RuleBook
from gridhub.protocol import DEFAULT_HEARTBEAT_S, DeviceKind, ms_to_dt

OFFLINE_SLACK_S = 1.0  # an offline deadline is written this much late, so that it is rewritten at most once a second


@dataclass(frozen=True)
class Registered:
    place: records.Place
    retired: bool
    window: timedelta  # silence that makes it offline


class DeviceBook:
    """Registry, held partitions and rule state of one process (the priority lane's or the telemetry lane's)."""

    def __init__(self, partitions: int, rules: RuleBook, clock: timers.Clock) -> None:
        self.partitions = partitions
        self.rules = rules
        self.clock = clock
        self.lock = threading.Lock()
        self.devices: dict[str, Registered] = {}
        self.devices_loaded = 0.0
        self.states: dict[str, DeviceState] = {}
        self.alive: dict[str, datetime] = {}
        self.offline_written: dict[str, datetime] = {}
        self.held: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ registry and partitions

    def load(self, conn: psycopg.Connection[Any]) -> None:
        out: dict[str, Registered] = {}
        factor = self.rules.offline.heartbeat_factor
        for dev, kind, building, grid, place, hb, retired in conn.execute(
                "SELECT d.id, d.kind, d.building_id, b.grid_id, d.place, d.heartbeat_s, d.retired FROM devices d"
                " JOIN buildings b ON b.id = d.building_id"):
            beat = hb or DEFAULT_HEARTBEAT_S[DeviceKind(kind)]
            out[dev] = Registered(records.Place(dev, kind, building, grid, place, hb), retired,
                                  timedelta(seconds=beat * factor))
        self.devices = out
        self.devices_loaded = time.monotonic()

    def registered(self, conn: psycopg.Connection[Any], device_id: str) -> Registered | None:
        reg = self.devices.get(device_id)
        if reg is None and time.monotonic() - self.devices_loaded > 2.0:
            self.load(conn)  # a device imported since
            reg = self.devices.get(device_id)
        return None if reg is None or reg.retired else reg

    def partition_of(self, device_id: str) -> int:
        return partition_of(device_id, self.partitions)

    def mine(self, device_id: str) -> bool:
        """Whether this process evaluates the device now: its partition is held here."""
        return self.partition_of(device_id) in self.held

    def set_partitions(self, held: frozenset[int]) -> frozenset[int]:
        """Adopt the partitions held now; forget the state of devices of partitions lost (another holder may change
        it meanwhile). Returns the partitions gained."""
        before = self.held
        self.held = held
        lost = before - held
        if lost:
            with self.lock:
                for dev in [d for d in self.states if self.partition_of(d) in lost]:
                    del self.states[dev]
                for book in (self.alive, self.offline_written):
                    for dev in [d for d in book if self.partition_of(d) in lost]:
                        del book[dev]
        return held - before

    # ------------------------------------------------------------------ rule state

    def load_states(self, conn: psycopg.Connection[Any], devices: set[str]) -> None:
        """Load rule state and active alerts of devices not yet in memory."""
        with self.lock:
            missing = [d for d in devices if d not in self.states]
        if not missing:
            return
        saved = dict(conn.execute("SELECT device_id, state FROM rule_state WHERE device_id = ANY(%s)"
                                  " AND rule = 'readings'", (missing,)).fetchall())
        active: dict[str, set[str]] = {}
        for dev, typ in conn.execute("SELECT device_id, type FROM alerts WHERE device_id = ANY(%s) AND state = 'active'"
                                     " AND type <> 'fire_incident'", (missing,)):
            active.setdefault(dev, set()).add(typ)
        with self.lock:
            for d in missing:
                self.states.setdefault(d, DeviceState.from_json(saved.get(d), active.get(d, set())))

    def state(self, device_id: str) -> DeviceState:
        with self.lock:
            return self.states[device_id]

    def forget_states(self) -> None:
        """Memory may be ahead of the database (a transaction failed): reload from it."""
        with self.lock:
            self.states.clear()

    def apply(self, uow: UnitOfWork, reg: Registered, f: Finding, now: datetime) -> None:
        seen = ms_to_dt(f.ts_ms)
        if f.action == "raise":
            records.raise_alert(uow, reg.place, f.alert_type, seen, now, self.rules, f.detail)
        else:
            why = ", ".join(f"{k} {v}" for k, v in f.detail.items()) or "cleared"
            records.clear_alert(uow, reg.place, f.alert_type, seen, now, why, self.rules)

    # ------------------------------------------------------------------ absence

    def signs_of_life(self, uow: UnitOfWork, devices: dict[str, Registered], now: datetime, *,
                      offline_in_memory: bool) -> None:
        """Any accepted message: the offline deadline moves and an active device_offline clears.

        The deadline is written OFFLINE_SLACK_S late and only when it would otherwise fall before the device's
        window, so the stored deadline is never earlier than last sign of life + window, whichever process saw
        it. `offline_in_memory`: this process raises device_offline itself and knows which are active (the
        priority process); otherwise the database is asked (the telemetry process).
        """
        conn = uow.conn
        if offline_in_memory:
            offline = {d for d in devices if "device_offline" in self.state(d).active}
        else:
            offline = {r[0] for r in conn.execute(
                "SELECT device_id FROM alerts WHERE device_id = ANY(%s) AND type = 'device_offline'"
                " AND state = 'active'", (list(devices),))}
        # by building: clearing takes the building's offline lock, always in this order (no deadlock between batches)
        for dev in sorted(offline, key=lambda d: (devices[d].place.building_id, d)):
            records.clear_alert(uow, devices[dev].place, "device_offline", now, now, "the device spoke again",
                                self.rules)
            self.state(dev).active.discard("device_offline")
        moves = []
        for dev, reg in devices.items():
            self.alive[dev] = now
            due = now + reg.window
            written = self.offline_written.get(dev)
            if written is None or due > written or dev in offline:
                moves.append((dev, due + timedelta(seconds=OFFLINE_SLACK_S), self.partition_of(dev)))
        if moves:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO timers (kind, key, due_at, partition) VALUES ('offline', %s, %s, %s)"
                                " ON CONFLICT (kind, key) DO UPDATE SET due_at = GREATEST(timers.due_at,"
                                " EXCLUDED.due_at), payload = '{}'", moves)
            for dev, due, _ in moves:
                self.offline_written[dev] = due
