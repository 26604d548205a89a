"""Hazard reports (社区提报, CONTRACT §7): a report opens a `hazard` task for the place's grid; the grid head confirms
(立案) or dismisses it (不予立案); anyone handling it may refer it to a department; resolving a hazard that is a case
opens a `recheck` task (整改 → 复查). The task state machine (`tasks.apply_action`) calls `hazard_action` and
`open_recheck`; the API (`api/routes_reports.py`) calls `place_of` and `open_report`.

Everything runs inside the caller's transaction and stages its changes on the caller's `changes.UnitOfWork`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gridhub.alerts.changes import UnitOfWork, level_people
from gridhub.alerts.rules import RuleBook

__all__ = ["CATEGORIES", "MAX_DEPARTMENT", "Place", "UnknownPlace", "open_recheck", "open_report", "place_of"]

# category -> its name on the report form (事故隐患报告单)
CATEGORIES = {"escape_route": "安全出口/疏散通道", "fire_equipment": "消防设施", "electrical": "电气线路",
              "gas": "燃气", "ebike": "电动自行车", "other": "其他"}
MAX_DEPARTMENT = 100
HAZARD_SEVERITY = "high"  # CONTRACT §7: fixed; a reporter may not raise (or lower) it
RECHECK_SEVERITY = "normal"
# resolutions of a hazard after which someone re-checks the place: it was real and was handled (整改 → 复查)
RECHECK_AFTER = ("fixed", "referred_119")


class UnknownPlace(ValueError):
    """The report names a building or unit that does not exist, or both and they disagree (422)."""


@dataclass(frozen=True)
class Place:
    grid_id: str
    building_id: str | None
    unit_id: str | None
    label: str  # for history: "沙坡尾菜市场 (u-001), 12号楼 (b-12)"


def place_of(conn: psycopg.Connection[Any], building: str | None, unit: str | None) -> Place:
    """The grid (and building) of a report: the unit's grid and building, else the building's grid."""
    if not building and not unit:
        raise UnknownPlace("building or unit is required: where the hazard is")
    label: list[str] = []
    grid_id: str | None = None
    building_id: str | None = building or None
    if unit:
        row = conn.execute("SELECT grid_id, building_id, name FROM units WHERE id = %s", (unit,)).fetchone()
        if row is None:
            raise UnknownPlace(f"unit: {unit!r} is not a registered unit")
        grid_id = str(row[0])
        label.append(f"{row[2]} ({unit})")
        if row[1] is not None:
            if building and building != row[1]:
                raise UnknownPlace(f"building: unit {unit} is in building {row[1]}, not {building}")
            building_id = str(row[1])
    if building_id:
        row = conn.execute("SELECT grid_id, name FROM buildings WHERE id = %s", (building_id,)).fetchone()
        if row is None:
            raise UnknownPlace(f"building: {building_id!r} is not a registered building")
        if grid_id is not None and row[0] != grid_id:
            raise UnknownPlace(f"building: {building_id} is in grid {row[0]}, unit {unit} in grid {grid_id}")
        grid_id = str(row[0])
        label.append(f"{row[1]} ({building_id})")
    assert grid_id is not None
    return Place(grid_id, building_id, unit or None, ", ".join(label))


def _new_task(uow: UnitOfWork, *, task_type: str, severity: str, place_grid: str, building_id: str | None,
              now: datetime, rules: RuleBook, reported_by: str | None, detail: dict[str, Any],
              source_task_id: str | None, assignee: str | None, unit_id: str | None = None,
              incident_key: str | None = None) -> tuple[str, datetime]:
    from gridhub.alerts.tasks import new_id

    d = rules.deadlines(severity)
    task_id = new_id("tk", now)
    accept_due = now + timedelta(seconds=d.accept_s)
    uow.conn.execute(
        "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, assignee, accept_due, resolve_due,"
        " opened_at, last_seen, incident_key, reported_by, detail, source_task_id, unit_id)"
        " VALUES (%s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (task_id, task_type, severity, place_grid, building_id, assignee, accept_due,
         now + timedelta(seconds=d.resolve_s), now, now, incident_key or f"{task_type}:{task_id}", reported_by,
         Jsonb(detail), source_task_id, unit_id))
    return task_id, accept_due


def _start(uow: UnitOfWork, task_id: str, grid_id: str, accept_due: datetime, now: datetime, rules: RuleBook,
           severity: str, *, tell_heads: bool) -> None:
    """Accept clock, reminders and the `task.opened` notice to the assignee, as `open_or_join_task` does."""
    from gridhub.alerts.tasks import _schedule_accept

    _schedule_accept(uow.conn, task_id, accept_due, now, rules, severity)
    uow.notify(task_id, "task.opened", chain="start", at=now)
    heads = tuple(level_people(uow.conn, grid_id, 1)) if tell_heads else ()
    uow.stage_task(task_id, also_notify=heads)


def open_report(uow: UnitOfWork, *, reporter: str, category: str, place: Place, floor: int | None,
                place_text: str | None, description: str, photos: list[tuple[bytes, dict[str, Any]]],
                now: datetime, rules: RuleBook) -> tuple[str, list[str]]:
    """Open the report's `hazard` task (severity high, assigned as §4.1 assigns), store the photos as its evidence
    (each a `photo` step of history), put the report's fields in `detail` and in the `open` step. The grid heads
    are told too: confirming is theirs. Returns (task id, evidence ids)."""
    from gridhub.alerts.tasks import SYSTEM, add_history, choose_assignee, new_id

    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
    conn = uow.conn
    assignee = choose_assignee(conn, place.grid_id)
    detail: dict[str, Any] = {"source": "report", "category": category, "building": place.building_id,
                              "unit": place.unit_id, "floor": floor, "place": place_text, "description": description,
                              "reported_by": reporter, "photos": [], "referrals": []}
    task_id, accept_due = _new_task(uow, task_type="hazard", severity=HAZARD_SEVERITY, place_grid=place.grid_id,
                                    building_id=place.building_id, now=now, rules=rules, reported_by=reporter,
                                    detail=detail, source_task_id=None, assignee=assignee)
    where = place.label + (f" {floor}F" if floor is not None else "") + (f" {place_text}" if place_text else "")
    who = f"assigned to {assignee}" if assignee else "no one in the grid or street to assign"
    add_history(conn, task_id, now, reporter, "report",
                f"社区提报 {category} ({CATEGORIES[category]}) at {where}: {description}")
    add_history(conn, task_id, now, SYSTEM, "open", f"hazard reported by {reporter}, to be confirmed (立案) by the"
                                                    f" grid head; {who}")
    evidence_ids: list[str] = []
    for data, _meta in photos:
        evidence_id = new_id("ev", now)
        conn.execute("INSERT INTO evidence (id, device_id, task_id, kind, content_type, data, created_by)"
                     " VALUES (%s, NULL, %s, 'photo', 'image/jpeg', %s, %s)", (evidence_id, task_id, data, reporter))
        add_history(conn, task_id, now, reporter, "photo", f"evidence {evidence_id}")
        evidence_ids.append(evidence_id)
    if evidence_ids:
        conn.execute("UPDATE tasks SET detail = jsonb_set(detail, '{photos}', %s) WHERE id = %s",
                     (Jsonb(evidence_ids), task_id))
    _start(uow, task_id, place.grid_id, accept_due, now, rules, HAZARD_SEVERITY, tell_heads=True)
    return task_id, evidence_ids


def is_report(conn: psycopg.Connection[Any], task_id: str) -> tuple[bool, bool]:
    """(opened from a report, confirmed)."""
    row = conn.execute("SELECT reported_by IS NOT NULL, confirmed_at IS NOT NULL FROM tasks WHERE id = %s",
                       (task_id,)).fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def open_recheck(uow: UnitOfWork, hazard: dict[str, Any], resolution: str, actor: str, now: datetime,
                 rules: RuleBook) -> str | None:
    """After a hazard that is a case (not an unconfirmed report) is resolved `fixed` or `referred_119`: a `recheck`
    task (severity normal) for the grid's worker, linked both ways in history (and `source_task_id`). None if the
    resolution needs no recheck or the hazard already has one not closed (a rework resolved again)."""
    from gridhub.alerts.tasks import SYSTEM, add_history, choose_assignee, grid_people

    conn = uow.conn
    if resolution not in RECHECK_AFTER:
        return None
    reported, confirmed = is_report(conn, hazard["id"])
    if reported and not confirmed:
        return None
    open_one = conn.execute("SELECT id FROM tasks WHERE source_task_id = %s AND type = 'recheck' AND state <> 'closed'",
                            (hazard["id"],)).fetchone()
    if open_one is not None:
        add_history(conn, hazard["id"], now, SYSTEM, "recheck", f"recheck {open_one[0]} is still open")
        return None
    grid_id = hazard["grid_id"]
    assignee = grid_people(conn, grid_id, "grid_worker") or choose_assignee(conn, grid_id)
    building = conn.execute("SELECT building_id, unit_id FROM tasks WHERE id = %s", (hazard["id"],)).fetchone()
    task_id, accept_due = _new_task(uow, task_type="recheck", severity=RECHECK_SEVERITY, place_grid=grid_id,
                                    building_id=building[0] if building else None, now=now, rules=rules,
                                    reported_by=None, detail={"source": "hazard", "hazard": hazard["id"]},
                                    source_task_id=hazard["id"], assignee=assignee,
                                    unit_id=building[1] if building else None)
    who = f"assigned to {assignee}" if assignee else "no one in the grid or street to assign"
    add_history(conn, task_id, now, SYSTEM, "open",
                f"复查: re-check hazard {hazard['id']} (resolved {resolution} by {actor}); {who}")
    add_history(conn, hazard["id"], now, SYSTEM, "recheck", f"recheck {task_id} opened for {assignee or 'no one'}")
    _start(uow, task_id, grid_id, accept_due, now, rules, RECHECK_SEVERITY, tell_heads=False)
    return task_id


def refer_detail(conn: psycopg.Connection[Any], task_id: str, department: str, note: str, actor: str,
                 now: datetime) -> None:
    """Keep a referral in the task's `detail.referrals` (history has it too)."""
    conn.execute(
        "UPDATE tasks SET detail = jsonb_set(COALESCE(detail, '{}'::jsonb), '{referrals}',"
        " COALESCE(detail->'referrals', '[]'::jsonb) || %s) WHERE id = %s",
        (Jsonb([{"department": department, "note": note, "by": actor, "at": now.isoformat()}]), task_id))
