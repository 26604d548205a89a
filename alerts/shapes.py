"""The REST shapes of an alert and a grid task (CONTRACT §4), built here once: the API answers with them and the
change log (SSE stream, MQTT) carries them. Rows are read by name; times are RFC 3339 with the district's offset,
millisecond precision."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from gridhub.protocol import rfc3339
from gridhub.settings import DEFAULT_TIMEZONE, get_settings

ALERT_FIELDS = ("id", "device_id", "building_id", "grid_id", "type", "severity", "state", "acked", "count",
                "first_seen", "last_seen", "cleared_at", "task_id", "detail")


def alert_columns(alias: str = "") -> str:
    """The alert shape's columns for a SELECT, qualified by `alias` when the query joins other tables."""
    return ", ".join(f"{alias}.{c}" if alias else c for c in ALERT_FIELDS)


ALERT_COLUMNS = alert_columns()

# The task shape's columns for a SELECT over `tasks t`: the row, its alert ids, and its history as JSON objects.
TASK_COLUMNS = """
       t.id, t.type, t.severity, t.state, t.grid_id, t.building_id, t.device_id, t.assignee, t.escalation_level,
       t.accept_due, t.resolve_due, t.opened_at, t.accepted_at, t.resolved_at, t.closed_at, t.resolution, t.count,
       t.last_seen, t.drill, t.unit_id, t.source_task_id,
       (SELECT jsonb_build_object('unit_id', p.unit_id, 'unit_name', u.name, 'class', p.class, 'kind', p.kind,
                                  'frequency', p.frequency, 'period_start', extract(epoch FROM p.period_start),
                                  'period_end', extract(epoch FROM p.period_end), 'planned_for', p.planned_for,
                                  'checklist', p.checklist, 'results', p.results, 'note', p.note,
                                  'done_at', extract(epoch FROM p.done_at), 'done_by', p.done_by,
                                  'hazards', p.hazards, 'overdue', p.done_at IS NULL AND p.period_end <= now())
        FROM patrols p JOIN units u ON u.id = p.unit_id WHERE p.task_id = t.id) AS patrol,
       ARRAY(SELECT ta.alert_id FROM task_alerts ta JOIN alerts a ON a.id = ta.alert_id
             WHERE ta.task_id = t.id ORDER BY a.first_seen, a.id) AS alert_ids,
       ARRAY(SELECT jsonb_build_object('at', extract(epoch FROM h.at), 'actor', h.actor, 'action', h.action,
                                       'note', h.note, 'received_at', extract(epoch FROM h.received_at))
             FROM task_history h WHERE h.task_id = t.id ORDER BY h.id) AS history"""
TASK_PLAIN_FIELDS = ("id", "type", "severity", "state", "grid_id", "building_id", "device_id", "assignee",
                     "escalation_level", "count", "resolution", "drill", "unit_id", "source_task_id")
TASK_TIME_FIELDS = ("accept_due", "resolve_due", "opened_at", "accepted_at", "resolved_at", "closed_at", "last_seen")


def _zone() -> ZoneInfo:
    try:
        return get_settings().tz
    except Exception:  # noqa: BLE001 - a broken environment must not break shapes
        return ZoneInfo(DEFAULT_TIMEZONE)


def shape_time(value: datetime | None) -> str | None:
    """A time of an alert or task shape: RFC 3339 in the district's zone, always with milliseconds."""
    return rfc3339(value, _zone(), timespec="milliseconds")


def alert_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The alert shape from a row with the columns of `alert_columns()`."""
    return {"id": row["id"], "device_id": row["device_id"], "building_id": row["building_id"],
            "grid_id": row["grid_id"], "type": row["type"], "severity": row["severity"], "state": row["state"],
            "acked": row["acked"], "count": row["count"], "first_seen": shape_time(row["first_seen"]),
            "last_seen": shape_time(row["last_seen"]), "cleared_at": shape_time(row["cleared_at"]),
            "task_id": row["task_id"], "detail": row["detail"] or {}}


def task_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The task shape (with `history` and `alert_ids`) from a row with the columns of `TASK_COLUMNS`."""
    out: dict[str, Any] = {k: row[k] for k in TASK_PLAIN_FIELDS}
    out.update({k: shape_time(row[k]) for k in TASK_TIME_FIELDS})
    out["alert_ids"] = list(row["alert_ids"])
    out["history"] = [_step(h) for h in row["history"]]
    if row["patrol"] is not None:
        out["patrol"] = _patrol(row["patrol"])
    return out


def _epoch_time(value: Any) -> str | None:
    return None if value is None else shape_time(datetime.fromtimestamp(float(value), UTC))


def _patrol(p: Mapping[str, Any]) -> dict[str, Any]:
    """The `patrol` object of a patrol task (CONTRACT §7): its unit, plan period, checklist and results."""
    out = dict(p)
    for k in ("period_start", "period_end", "done_at"):
        out[k] = _epoch_time(p[k])
    return out


def _step(h: Mapping[str, Any]) -> dict[str, Any]:
    """A history step; `received_at` only on a step the hub received later than it was taken (offline)."""
    out = {"at": shape_time(datetime.fromtimestamp(float(h["at"]), UTC)), "actor": h["actor"],
           "action": h["action"], "note": h["note"]}
    if h.get("received_at") is not None:
        out["received_at"] = shape_time(datetime.fromtimestamp(float(h["received_at"]), UTC))
    return out


def alert_shape(conn: psycopg.Connection[Any], alert_id: str) -> dict[str, Any] | None:
    """An alert in the REST shape, or None when there is no such alert."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,)).fetchone()
    return alert_from_row(row) if row else None


def task_shape(conn: psycopg.Connection[Any], task_id: str) -> dict[str, Any] | None:
    """A task in the REST shape with its history and alert ids, or None when there is no such task."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {TASK_COLUMNS} FROM tasks t WHERE t.id = %s", (task_id,)).fetchone()
    return task_from_row(row) if row else None
