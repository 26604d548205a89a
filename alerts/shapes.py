"""The REST shapes of an alert and a grid task (CONTRACT §4), read from the database, times in RFC 3339 with offset."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from gridhub.settings import get_settings

ALERT_COLUMNS = ("id, device_id, building_id, grid_id, type, severity, state, acked, count, first_seen, last_seen,"
                 " cleared_at, task_id, detail")
TASK_COLUMNS = ("id, type, severity, state, grid_id, building_id, device_id, assignee, escalation_level,"
                " accept_due, resolve_due, opened_at, accepted_at, resolved_at, closed_at, resolution, count,"
                " last_seen")


def _zone() -> ZoneInfo:
    try:
        return get_settings().tz
    except Exception:  # noqa: BLE001 - a broken environment must not break shapes
        return ZoneInfo("Asia/Shanghai")


def rfc3339(dt: datetime | None) -> str | None:
    """A time in the district's zone with its offset, millisecond precision."""
    if dt is None:
        return None
    return dt.astimezone(_zone()).isoformat(timespec="milliseconds")


def alert_from_row(row: tuple[Any, ...]) -> dict[str, Any]:
    (aid, device_id, building_id, grid_id, typ, severity, state, acked, count, first_seen, last_seen,
     cleared_at, task_id, detail) = row
    return {"id": aid, "device_id": device_id, "building_id": building_id, "grid_id": grid_id, "type": typ,
            "severity": severity, "state": state, "acked": acked, "count": count,
            "first_seen": rfc3339(first_seen), "last_seen": rfc3339(last_seen), "cleared_at": rfc3339(cleared_at),
            "task_id": task_id, "detail": detail or {}}


def alert_shape(conn: psycopg.Connection[Any], alert_id: str) -> dict[str, Any] | None:
    """An alert in the REST shape, or None when there is no such alert."""
    row = conn.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    return alert_from_row(tuple(row)) if row else None


def task_shape(conn: psycopg.Connection[Any], task_id: str) -> dict[str, Any] | None:
    """A task in the REST shape with its history and alert ids, or None when there is no such task."""
    row = conn.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s", (task_id,)).fetchone()
    if row is None:
        return None
    (tid, typ, severity, state, grid_id, building_id, device_id, assignee, level, accept_due, resolve_due,
     opened_at, accepted_at, resolved_at, closed_at, resolution, count, last_seen) = tuple(row)
    alert_ids = [r[0] for r in conn.execute(
        "SELECT ta.alert_id FROM task_alerts ta JOIN alerts a ON a.id = ta.alert_id"
        " WHERE ta.task_id = %s ORDER BY a.first_seen, a.id", (tid,))]
    history = [{"at": rfc3339(at), "actor": actor, "action": action, "note": note}
               for at, actor, action, note in conn.execute(
                   "SELECT at, actor, action, note FROM task_history WHERE task_id = %s ORDER BY id", (tid,))]
    return {"id": tid, "type": typ, "severity": severity, "state": state, "grid_id": grid_id,
            "building_id": building_id, "device_id": device_id, "assignee": assignee, "escalation_level": level,
            "accept_due": rfc3339(accept_due), "resolve_due": rfc3339(resolve_due), "alert_ids": alert_ids,
            "count": count, "history": history, "opened_at": rfc3339(opened_at),
            "accepted_at": rfc3339(accepted_at), "resolved_at": rfc3339(resolved_at),
            "closed_at": rfc3339(closed_at), "resolution": resolution, "last_seen": rfc3339(last_seen)}
