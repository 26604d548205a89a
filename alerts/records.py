"""Alert rows: raise (one active per device and type, enforced by INSERT ... ON CONFLICT on a partial unique
index), repeat, clear; their tasks; the building-level fire incident, offline storms (alerts/offline.py), drills
and the noisy-device rule."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gridhub.alerts import offline, tasks, timers
from gridhub.alerts.changes import UnitOfWork
from gridhub.alerts.rules import RuleBook
from gridhub.alerts.shapes import alert_shape
from gridhub.db import BUILDING_LOCK


@dataclass(frozen=True)
class Place:
    """Where a device is: what an alert needs to know about it."""

    device_id: str
    kind: str
    building_id: str
    grid_id: str
    place: str | None = None
    heartbeat_s: int | None = None


def place_of(conn: psycopg.Connection[Any], device_id: str) -> Place | None:
    row = conn.execute(
        "SELECT d.id, d.kind, d.building_id, b.grid_id, d.place, d.heartbeat_s FROM devices d"
        " JOIN buildings b ON b.id = d.building_id WHERE d.id = %s", (device_id,)).fetchone()
    return Place(*row) if row else None


def _describe(p: Place, alert_type: str) -> str:
    return f"{alert_type} from {p.device_id} ({p.building_id}{', ' + p.place if p.place else ''})"


@dataclass(frozen=True)
class Raised:
    alert_id: str
    created: bool
    task_id: str | None


def is_drill(detail: dict[str, Any] | None) -> bool:
    """A drill (演练): the alert's detail says `drill: true` (from the device event's `detail.drill`)."""
    return bool(detail) and (detail or {}).get("drill") is True


def raise_alert(uow: UnitOfWork, p: Place, alert_type: str, seen: datetime, now: datetime,
                rules: RuleBook, detail: dict[str, Any] | None = None) -> Raised:
    """Raise `alert_type` for the device, or repeat the active one (count and last_seen rise); open or join
    its task. Correlates fire alarms and sprinkler drops into the building's fire incident, and offline alerts
    into the building's offline storm (alerts/offline.py). A drill alert (`detail.drill`) opens a drill task
    of its own; a real alert while the device's drill alert of that type is active ends the drill alert."""
    conn = uow.conn
    severity = rules.severity_of(alert_type)
    drill = is_drill(detail)
    for _ in range(2):
        row = conn.execute(
            "INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, first_seen, last_seen, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (device_id, type) WHERE state = 'active' AND type <> 'fire_incident'"
            " DO UPDATE SET count = alerts.count + 1, last_seen = GREATEST(alerts.last_seen, EXCLUDED.last_seen)"
            " RETURNING id, (xmax = 0), task_id, COALESCE(detail->'drill' = 'true'::jsonb, false)",
            (tasks.new_id("al", now), p.device_id, p.building_id, p.grid_id, alert_type, severity, seen, seen,
             Jsonb(detail or {}))).fetchone()
        assert row is not None
        if row[1] or drill or not row[3]:
            break
        # the real thing while a drill's alert is active: the drill's alert ends, the real one is raised
        conn.execute("UPDATE alerts SET state = 'cleared', cleared_at = %s, count = count - 1 WHERE id = %s",
                     (now, row[0]))
        uow.stage_alert(str(row[0]))
        if row[2]:
            tasks.annotate(uow, row[2], now, "alert_cleared", f"drill {alert_type} ended: a real one from {p.device_id}")
    alert_id, created, task_id = str(row[0]), bool(row[1]), row[2]
    uow.stage_alert(alert_id)
    if created and alert_type == "device_offline":
        task_id = offline.task_for_offline(uow, p, alert_id, seen, now, rules, _describe(p, alert_type))
    elif created:
        task_id, _ = tasks.open_or_join_task(
            uow, alert_id=alert_id, alert_type=alert_type, severity=severity,
            incident_key=f"{alert_type}:{p.device_id}" + (":drill" if drill else ""), grid_id=p.grid_id,
            building_id=p.building_id, device_id=p.device_id, seen=seen, now=now, rules=rules,
            note=("【演练】drill: " if drill else "") + _describe(p, alert_type), drill=drill)
    elif task_id:
        tasks.note_repeat(uow, task_id, seen)
    if created and alert_type in ("fire_alarm", "sprinkler_drop"):
        correlate_fire(uow, p, seen, now, rules, drill=drill)
    return Raised(alert_id, created, task_id)


def clear_alert(uow: UnitOfWork, p: Place, alert_type: str, seen: datetime, now: datetime,
                why: str, rules: RuleBook | None = None) -> str | None:
    """Clear the device's active `alert_type`; its task keeps a note (a person closes it). Returns the alert id.
    A device back online may make its offline task recovered later (alerts/offline.py)."""
    conn = uow.conn
    if alert_type == "device_offline":  # before the alert row: the storm's lock comes first, always
        offline.lock_building(conn, p.building_id)
    row = conn.execute(
        "UPDATE alerts SET state = 'cleared', cleared_at = %s, last_seen = GREATEST(last_seen, %s)"
        " WHERE device_id = %s AND type = %s AND state = 'active' RETURNING id, task_id",
        (now, seen, p.device_id, alert_type)).fetchone()
    if row is None:
        return None
    alert_id, task_id = str(row[0]), row[1]
    uow.stage_alert(alert_id)
    if task_id:
        tasks.annotate(uow, task_id, now, "alert_cleared", f"{alert_type} cleared: {why}")
        if alert_type == "device_offline":
            offline.device_back(uow, task_id, now, rules or tasks.default_rules())
    if alert_type == "fire_alarm":
        _clear_incident_if_quiet(uow, p, now)
    return alert_id


def _lock_building(conn: psycopg.Connection[Any], building_id: str) -> None:
    """Serialise fire correlation per building, so that two alarms committed at once still see each other."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (BUILDING_LOCK, zlib.crc32(building_id.encode()) - 2**31))


def correlate_fire(uow: UnitOfWork, p: Place, seen: datetime, now: datetime, rules: RuleBook, *,
                   drill: bool = False) -> None:
    """Two fire alarms in one building within the window, or a fire alarm with a sprinkler drop: one fire
    incident (critical) per building, its task linking every alert that made it. Drill alarms correlate only
    with drill alarms (a drill incident, a drill task); a real incident ends an active drill incident."""
    conn = uow.conn
    _lock_building(conn, p.building_id)
    window = timedelta(seconds=rules.fire_incident.window_s)
    rows = conn.execute(
        "SELECT id, device_id, type FROM alerts WHERE building_id = %s AND type IN ('fire_alarm', 'sprinkler_drop')"
        " AND (state = 'active' OR last_seen >= %s) AND first_seen <= %s"
        " AND COALESCE(detail->'drill' = 'true'::jsonb, false) = %s ORDER BY first_seen, id",
        (p.building_id, seen - window, seen + window, drill)).fetchall()
    alarms = {r[1] for r in rows if r[2] == "fire_alarm"}
    drops = [r for r in rows if r[2] == "sprinkler_drop"]
    if not (len(alarms) >= 2 or (alarms and drops)):
        return
    current = conn.execute(
        "SELECT id, task_id, COALESCE(detail->'drill' = 'true'::jsonb, false) FROM alerts WHERE building_id = %s"
        " AND type = 'fire_incident' AND state = 'active'", (p.building_id,)).fetchone()
    if current is not None and bool(current[2]) != drill:
        if drill:
            return  # a drill never touches a real incident
        conn.execute("UPDATE alerts SET state = 'cleared', cleared_at = %s WHERE id = %s", (now, current[0]))
        uow.stage_alert(str(current[0]))
        if current[1]:
            tasks.annotate(uow, current[1], now, "alert_cleared", f"drill fire incident ended: a real one in {p.building_id}")
    reason = (f"{len(alarms)} smoke alarms" if len(alarms) >= 2 else "a smoke alarm") + (
        " and a sprinkler pressure drop" if drops else "") + f" in {p.building_id}"
    first_device = next(r[1] for r in rows if r[2] == "fire_alarm")
    detail: dict[str, Any] = {"reason": reason, "alerts": [r[0] for r in rows]}
    if drill:
        detail["drill"] = True
    row = conn.execute(
        "INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, first_seen, last_seen, detail)"
        " VALUES (%s, %s, %s, %s, 'fire_incident', %s, %s, %s, %s)"
        " ON CONFLICT (building_id, type) WHERE state = 'active' AND type = 'fire_incident'"
        " DO UPDATE SET count = alerts.count + 1, last_seen = GREATEST(alerts.last_seen, EXCLUDED.last_seen),"
        " detail = EXCLUDED.detail RETURNING id, (xmax = 0), task_id",
        (tasks.new_id("al", now), first_device, p.building_id, p.grid_id, rules.severity_of("fire_incident"),
         seen, seen, Jsonb(detail))).fetchone()
    assert row is not None
    incident_id, created, task_id = str(row[0]), bool(row[1]), row[2]
    uow.stage_alert(incident_id)
    if created or task_id is None:
        task_id, _ = tasks.open_or_join_task(
            uow, alert_id=incident_id, alert_type="fire_incident", severity=rules.severity_of("fire_incident"),
            incident_key=f"fire_incident:{p.building_id}" + (":drill" if drill else ""), grid_id=p.grid_id,
            building_id=p.building_id, device_id=first_device, seen=seen, now=now, rules=rules,
            note=("【演练】drill: " if drill else "") + f"fire incident: {reason}", drill=drill)
    else:
        tasks.add_history(conn, task_id, now, tasks.SYSTEM, "alert", f"fire incident grows: {reason}")
        uow.stage_task(task_id)
    for r in rows:
        tasks.link_alert(conn, task_id, r[0])


def _clear_incident_if_quiet(uow: UnitOfWork, p: Place, now: datetime) -> None:
    conn = uow.conn
    _lock_building(conn, p.building_id)
    still = conn.execute("SELECT 1 FROM alerts WHERE building_id = %s AND type = 'fire_alarm' AND state = 'active'"
                         " LIMIT 1", (p.building_id,)).fetchone()
    if still:
        return
    row = conn.execute(
        "UPDATE alerts SET state = 'cleared', cleared_at = %s WHERE building_id = %s AND type = 'fire_incident'"
        " AND state = 'active' RETURNING id, task_id", (now, p.building_id)).fetchone()
    if row is None:
        return
    uow.stage_alert(str(row[0]))
    if row[1]:
        tasks.annotate(uow, row[1], now, "alert_cleared", f"fire incident in {p.building_id}: every alarm cleared")


def count_alarm(uow: UnitOfWork, p: Place, seen: datetime, now: datetime, rules: RuleBook) -> None:
    """noisy_device: more than max_alarms fire alarms within the window (by the events' own ts)."""
    conn = uow.conn
    nr = rules.noisy_device
    row = conn.execute("SELECT count(*) FROM rule_events WHERE device_id = %s AND type = 'alarm' AND ts > %s AND ts <= %s",
                       (p.device_id, seen - timedelta(seconds=nr.window_s), seen)).fetchone()
    n = int(row[0]) if row else 0
    if n > nr.max_alarms:
        raise_alert(uow, p, "noisy_device", seen, now, rules, {"alarms_in_window": n})
        timers.schedule(conn, "noisy", p.device_id, now + timedelta(seconds=nr.window_s), payload={})


def noisy_check(uow: UnitOfWork, device_id: str, now: datetime, rules: RuleBook) -> None:
    """The noisy-device timer: clear once the last window holds at most max_alarms alarms, else look again."""
    conn = uow.conn
    p = place_of(conn, device_id)
    if p is None:
        return
    nr = rules.noisy_device
    rows = conn.execute("SELECT ts FROM rule_events WHERE device_id = %s AND type = 'alarm' AND ts > %s"
                        " ORDER BY ts DESC", (device_id, now - timedelta(seconds=nr.window_s))).fetchall()
    if len(rows) <= nr.max_alarms:
        clear_alert(uow, p, "noisy_device", now, now, f"at most {nr.max_alarms} alarms in the last window")
    else:  # look again when the oldest alarm that keeps it noisy leaves the window
        oldest_needed = rows[nr.max_alarms][0]
        timers.schedule(conn, "noisy", device_id, oldest_needed + timedelta(seconds=nr.window_s))


class AlertNotFound(LookupError):
    """No such alert in the caller's scope (404)."""


def ack_alert(uow: UnitOfWork, alert_id: str, actor: Any, now: datetime) -> dict[str, Any]:
    """Acknowledge an alert for `actor` (a gridhub.auth.Principal) and stage the change; returns the REST shape.
    Acknowledging twice is harmless. The caller's unit of work writes the change log and commits."""
    conn = uow.conn
    row = conn.execute("SELECT grid_id FROM alerts WHERE id = %s FOR UPDATE", (alert_id,)).fetchone()
    if row is None or not actor.sees_grid(row[0]):
        raise AlertNotFound(f"alert {alert_id} does not exist in your scope")
    if conn.execute("UPDATE alerts SET acked = true, acked_by = %s, acked_at = %s WHERE id = %s AND NOT acked"
                    " RETURNING id", (actor.id, now, alert_id)).fetchone():
        uow.stage_alert(alert_id)
    shape = alert_shape(conn, alert_id)
    assert shape is not None
    return shape
