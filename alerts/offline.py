"""Offline storms and recovery: which task a new `device_offline` alert belongs to, and the hub resolving a task
whose devices came back and stayed back.

- **Storm.** `building_min_devices` or more devices of one building offline within `building_window_s` (rules
  `offline:`) are one building task (type `device_offline`, incident key `device_offline:building:<id>`) that
  lists them. Each device keeps its own alert, linked to that task; no per-device task is opened for a device
  that joins it, and the per-device tasks opened in the window before the threshold was reached are closed by
  the hub as `duplicate` (their alerts linked to the building task). While the building task is not closed,
  every new offline alert of the building joins it.
- **Recovered.** When the last offline alert of a task clears, a durable timer `recovered` (key: the task id) is
  set `recovered_after_s` ahead; a device going offline again before it fires cancels it. When it fires, the hub
  resolves the task (`resolved`, resolution `recovered`, in history; a grid head still closes it, as any
  resolved task). If a device of a task resolved as `recovered` goes offline again before that close, the hub
  reopens the task instead of opening another.

Everything that decides is serialised per building with a transaction advisory lock (`lock_building`), taken
before any alert row of the building is changed, so that concurrent offline alerts in two processes still make
one task and two devices coming back at once still set the timer.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from gridhub.alerts import tasks, timers
from gridhub.alerts.changes import UnitOfWork
from gridhub.alerts.rules import RuleBook

OFFLINE_LOCK = 0x6F66666C  # "offl": with a building's key, serialises its offline correlation (transaction lock)
TIMER = "recovered"
LISTED = 30  # devices named in a note; the rest are counted


def building_key(building_id: str) -> str:
    return f"device_offline:building:{building_id}"


def device_key(device_id: str) -> str:
    return f"device_offline:{device_id}"


def lock_building(conn: psycopg.Connection[Any], building_id: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (OFFLINE_LOCK, zlib.crc32(building_id.encode()) - 2**31))


# ------------------------------------------------------------------ pure rules


def storm_devices(recent: Sequence[tuple[str, datetime]], seen: datetime, window_s: float,
                  min_devices: int) -> list[str]:
    """The devices of a storm: those of `recent` (device, went offline at) within `window_s` before `seen`, in
    order, when there are at least `min_devices` of them; else []."""
    start = seen - timedelta(seconds=window_s)
    devices: list[str] = []
    for dev, at in sorted(recent, key=lambda r: (r[1], r[0])):
        if start <= at <= seen and dev not in devices:
            devices.append(dev)
    return devices if len(devices) >= min_devices else []


def storm_note(building: str, devices: Sequence[str], what: str = "设备离线", listed: int = LISTED) -> str:
    """'12号楼 23 台设备离线: sa-0001, sa-0002, …' (at most `listed` ids, then how many more)."""
    names = ", ".join(devices[:listed])
    more = f" … (+{len(devices) - listed})" if len(devices) > listed else ""
    return f"{building} {len(devices)} 台{what}: {names}{more}"


def recovery_due(cleared: Sequence[datetime | None], after_s: float) -> datetime | None:
    """When a task whose offline alerts cleared at `cleared` (None: still active) is recovered: the last return
    plus `after_s`; None while any device is still offline (or there is none)."""
    if not cleared or any(c is None for c in cleared):
        return None
    return max(c for c in cleared if c is not None) + timedelta(seconds=after_s)


# ------------------------------------------------------------------ a new offline alert


def _building_name(conn: psycopg.Connection[Any], building_id: str) -> str:
    row = conn.execute("SELECT name FROM buildings WHERE id = %s", (building_id,)).fetchone()
    return str(row[0]) if row and row[0] else building_id


def _offline_devices(conn: psycopg.Connection[Any], task_id: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT a.device_id FROM task_alerts ta JOIN alerts a ON a.id = ta.alert_id WHERE ta.task_id = %s"
        " AND a.type = 'device_offline' AND a.state = 'active' ORDER BY a.first_seen, a.device_id", (task_id,))]


def task_for_offline(uow: UnitOfWork, p: Any, alert_id: str, seen: datetime, now: datetime, rules: RuleBook,
                     note: str) -> str:
    """The task of a new device_offline alert of `p` (a records.Place): the building's storm task (joined or
    opened now), else the device's own task. Returns the task id."""
    conn = uow.conn
    lock_building(conn, p.building_id)
    severity = rules.severity_of("device_offline")
    row = conn.execute("SELECT id FROM tasks WHERE incident_key = %s AND state <> 'closed'",
                       (building_key(p.building_id),)).fetchone()
    if row is not None:
        task_id = str(row[0])
        _join(uow, task_id, [alert_id], now, seen)
        name = _building_name(conn, p.building_id)
        reopened = _reopen_if_recovered(uow, task_id, now, rules, f"{p.device_id} offline again")
        tasks.add_history(conn, task_id, now, tasks.SYSTEM, "alert",
                          f"{p.device_id} offline too: {storm_note(name, _offline_devices(conn, task_id))}")
        if not reopened:
            uow.stage_task(task_id, quiet=True)  # the board sees it; no push per device of a storm
        return task_id
    o = rules.offline
    recent = [(str(r[1]), r[2]) for r in conn.execute(
        "SELECT id, device_id, first_seen FROM alerts WHERE building_id = %s AND type = 'device_offline'"
        " AND state = 'active' AND first_seen >= %s AND first_seen <= %s",
        (p.building_id, seen - timedelta(seconds=o.building_window_s), seen))]
    devices = storm_devices(recent, seen, o.building_window_s, o.building_min_devices)
    if not devices:
        task_id, opened = tasks.open_or_join_task(
            uow, alert_id=alert_id, alert_type="device_offline", severity=severity,
            incident_key=device_key(p.device_id), grid_id=p.grid_id, building_id=p.building_id,
            device_id=p.device_id, seen=seen, now=now, rules=rules, note=note)
        if not opened:
            timers.cancel(conn, TIMER, task_id)
            _reopen_if_recovered(uow, task_id, now, rules, f"{p.device_id} offline again")
        return task_id
    return _open_storm(uow, p, devices, seen, now, rules)


def _open_storm(uow: UnitOfWork, p: Any, devices: list[str], seen: datetime, now: datetime, rules: RuleBook) -> str:
    conn = uow.conn
    name = _building_name(conn, p.building_id)
    alerts = [(str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT id, device_id FROM alerts WHERE building_id = %s AND type = 'device_offline' AND state = 'active'"
        " AND device_id = ANY(%s) ORDER BY first_seen, id", (p.building_id, devices))]
    note = storm_note(name, devices)
    task_id, _ = tasks.open_or_join_task(
        uow, alert_id=alerts[0][0], alert_type="device_offline", severity=rules.severity_of("device_offline"),
        incident_key=building_key(p.building_id), grid_id=p.grid_id, building_id=p.building_id,
        device_id=alerts[0][1], seen=seen, now=now, rules=rules, note=f"offline storm: {note}")
    # the per-device tasks of the storm's devices opened before the threshold: one incident, one task
    dups = conn.execute(
        "SELECT id FROM tasks WHERE incident_key = ANY(%s) AND state IN ('open', 'accepted', 'on_site')"
        " ORDER BY id FOR UPDATE", ([device_key(d) for d in devices],)).fetchall()
    for (dup,) in dups:
        conn.execute("UPDATE tasks SET state = 'closed', resolution = 'duplicate', resolved_at = %s, closed_at = %s"
                     " WHERE id = %s", (now, now, dup))
        conn.execute("INSERT INTO task_alerts (task_id, alert_id) SELECT %s, alert_id FROM task_alerts"
                     " WHERE task_id = %s ON CONFLICT DO NOTHING", (task_id, dup))
        tasks.add_history(conn, dup, now, tasks.SYSTEM, "close",
                          f"duplicate: joined the building task {task_id} ({note})")
        for kind in ("escalate", "remind", TIMER):
            timers.cancel(conn, kind, dup)
        uow.notify(dup, "", chain="stop")
        uow.stage_task(dup)
    _join(uow, task_id, [a for a, _ in alerts], now, None)
    if dups:
        tasks.add_history(conn, task_id, now, tasks.SYSTEM, "alert",
                          f"joined {len(dups)} device task(s) as duplicates: {', '.join(d for (d,) in dups)}")
    return task_id


def _join(uow: UnitOfWork, task_id: str, alert_ids: list[str], now: datetime, seen: datetime | None) -> None:
    """Link alerts to the task (each alert's task becomes it); a new alert raises its count."""
    conn = uow.conn
    for aid in alert_ids:
        tasks.link_alert(conn, task_id, aid)
    for (aid,) in conn.execute("UPDATE alerts SET task_id = %s WHERE id = ANY(%s) AND task_id IS DISTINCT FROM %s"
                               " RETURNING id", (task_id, alert_ids, task_id)).fetchall():
        uow.stage_alert(str(aid))
    if seen is not None:
        conn.execute("UPDATE tasks SET count = count + 1, last_seen = GREATEST(last_seen, %s) WHERE id = %s",
                     (seen, task_id))
    timers.cancel(conn, TIMER, task_id)


def _reopen_if_recovered(uow: UnitOfWork, task_id: str, now: datetime, rules: RuleBook, why: str) -> bool:
    """A task the hub resolved as recovered whose device is offline again, not yet closed: open again (accepted
    if it had been accepted), deadlines and reminders running as before. Returns whether it reopened."""
    conn = uow.conn
    row = conn.execute("SELECT state, resolution, accepted_at, accept_due, resolve_due, severity FROM tasks"
                       " WHERE id = %s FOR UPDATE", (task_id,)).fetchone()
    if row is None or row[0] != "resolved" or row[1] != "recovered":
        return False
    state = "accepted" if row[2] is not None else "open"
    conn.execute("UPDATE tasks SET state = %s, resolved_at = NULL, resolution = NULL WHERE id = %s", (state, task_id))
    tasks.add_history(conn, task_id, now, tasks.SYSTEM, "reopen", f"{why}: no longer recovered")
    due = row[3] if state == "open" else row[4]
    timers.schedule(conn, "escalate", task_id, max(due or now, now))
    if state == "open":
        timers.schedule(conn, "remind", task_id, now + timedelta(seconds=rules.deadlines(row[5]).remind_s))
    uow.notify(task_id, "task.changed", chain="start" if state == "open" else None)
    uow.stage_task(task_id)
    return True


# ------------------------------------------------------------------ back online


def device_back(uow: UnitOfWork, task_id: str, now: datetime, rules: RuleBook) -> None:
    """An offline alert of the task cleared (the building is locked by the caller): once none is active, the
    task is recovered `recovered_after_s` from now unless a device goes offline again before."""
    conn = uow.conn
    row = conn.execute("SELECT state FROM tasks WHERE id = %s", (task_id,)).fetchone()
    if row is None or row[0] not in tasks.OPEN_STATES:
        return
    if _offline_devices(conn, task_id):
        return  # the last of them to come back sets the timer
    timers.schedule(conn, TIMER, task_id, now + timedelta(seconds=rules.offline.recovered_after_s))


def recovered_due(uow: UnitOfWork, task_id: str, now: datetime, rules: RuleBook) -> None:
    """The `recovered` timer: every device of the task back for `recovered_after_s`: the hub resolves it."""
    conn = uow.conn
    row = conn.execute("SELECT building_id FROM tasks WHERE id = %s", (task_id,)).fetchone()
    if row is None:
        return
    if row[0]:
        lock_building(conn, row[0])
    t = conn.execute("SELECT state, building_id, incident_key FROM tasks WHERE id = %s FOR UPDATE",
                     (task_id,)).fetchone()
    if t is None or t[0] not in tasks.OPEN_STATES:
        return
    rows = conn.execute(
        "SELECT a.device_id, a.cleared_at FROM task_alerts ta JOIN alerts a ON a.id = ta.alert_id"
        " WHERE ta.task_id = %s AND a.type = 'device_offline' ORDER BY a.device_id, a.first_seen", (task_id,)).fetchall()
    after = rules.offline.recovered_after_s
    due = recovery_due([r[1] for r in rows], after)
    if due is None:
        return  # a device is offline again (its alert cancels the timer; this is the belt to those braces)
    if due > now:
        timers.schedule(conn, TIMER, task_id, due)
        return
    devices = sorted({str(r[0]) for r in rows})
    back = max(r[1] for r in rows)
    if str(t[2]).startswith("device_offline:building:"):
        what = storm_note(_building_name(conn, str(t[1])), devices, "设备恢复在线")
    else:
        what = ", ".join(devices) + " back online"
    conn.execute("UPDATE tasks SET state = 'resolved', resolved_at = %s, resolution = 'recovered' WHERE id = %s",
                 (now, task_id))
    tasks.add_history(conn, task_id, now, tasks.SYSTEM, "resolve",
                      f"recovered: {what} since {back.isoformat(timespec='seconds')}, stayed back {int(after)} s")
    for kind in ("escalate", "remind"):
        timers.cancel(conn, kind, task_id)
    uow.notify(task_id, "", chain="stop")
    uow.stage_task(task_id)


def timer_actions(rules: RuleBook) -> dict[str, timers.TimerAction]:
    return {TIMER: lambda uow, key, payload, now: recovered_due(uow, key, now, rules)}
