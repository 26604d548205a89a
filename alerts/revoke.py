"""A worker losing access (issue 13): deactivated by the registry (`active: false`, `registry import --prune`) or
moved out of a grid. Their open tasks are dispatched again as CONTRACT §4.1 dispatches a new one, in the caller's
transaction (the registry import's), each with a history step and a change row so that the board and the new
assignee are told."""

from __future__ import annotations

from datetime import datetime

from gridhub.alerts.changes import UnitOfWork
from gridhub.alerts.rules import RuleBook
from gridhub.alerts.tasks import OPEN_STATES, SYSTEM, _reopen, add_history, choose_assignee, default_rules

__all__ = ["reassign_from"]


def reassign_from(uow: UnitOfWork, worker_id: str, now: datetime, *, grids: list[str] | None = None,
                  rules: RuleBook | None = None) -> list[tuple[str, str | None]]:
    """Take `worker_id`'s open tasks (open, accepted, on site; only those of `grids` when given) and give each to
    the grid worker of its grid with the fewest open tasks, else the grid head, else the street officer
    (`choose_assignee`; only active people, and `worker_id` is no longer one of them for these grids). The task is
    open again with a fresh accept clock, as after a reassign. No one left: the task stays open without an
    assignee and its escalation reaches the levels above. Returns (task id, new assignee or None)."""
    conn = uow.conn
    rules = rules or default_rules()
    sql = ("SELECT id, grid_id, severity FROM tasks WHERE assignee = %s AND state = ANY(%s)"
           + (" AND grid_id = ANY(%s)" if grids is not None else "") + " ORDER BY opened_at, id FOR UPDATE")
    params: tuple[object, ...] = (worker_id, list(OPEN_STATES)) + ((list(grids),) if grids is not None else ())
    why = "no longer active" if grids is None else "no longer works in grid"
    moved: list[tuple[str, str | None]] = []
    for task_id, grid_id, severity in conn.execute(sql, params).fetchall():
        new = choose_assignee(conn, grid_id)
        if new is not None and new != worker_id:
            _reopen(conn, task_id, new, now, rules, severity)
        else:
            new = None
            conn.execute("UPDATE tasks SET state = 'open', assignee = NULL, accepted_at = NULL WHERE id = %s",
                         (task_id,))
        where = f" {grid_id}" if grids is not None else ""
        add_history(conn, task_id, now, SYSTEM, "reassign",
                    f"{worker_id} {why}{where}: assigned to {new}" if new else
                    f"{worker_id} {why}{where}: no one in the grid or street to assign")
        uow.notify(task_id, "task.changed", chain="start", at=now)
        moved.append((task_id, new))
    return moved
