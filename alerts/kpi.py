"""Grid-task KPIs per grid, community or street over a period (DOMAIN.md): closure rate 结案率 = closed / due,
on-time closure rate 按期结案率 = closed on time / due, mean time to accept and to resolve, open and overdue tasks.

A task is *due* in the period when its resolve deadline falls in [start, end); it is *closed* when it was closed
before `end`, *on time* when closed by its resolve deadline. Mean times are over the tasks opened in the period
that were accepted (resolved) before `end`. Open and overdue count the tasks open at `end`, overdue when past
their resolve deadline then (or past the accept deadline and still not accepted).

Drill tasks (演练, `tasks.drill`) are left out of every figure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import psycopg

from gridhub.alerts.rules import SEVERITIES

Level = Literal["grid", "community", "street"]

_PER_GRID = """
SELECT g.id, g.name, c.id, c.name, s.id, s.name,
  count(t.id) FILTER (WHERE t.resolve_due >= %(start)s AND t.resolve_due < %(end)s),
  count(t.id) FILTER (WHERE t.resolve_due >= %(start)s AND t.resolve_due < %(end)s AND t.closed_at < %(end)s),
  count(t.id) FILTER (WHERE t.resolve_due >= %(start)s AND t.resolve_due < %(end)s AND t.closed_at < %(end)s
                      AND t.closed_at <= t.resolve_due),
  coalesce(sum(extract(epoch FROM t.accepted_at - t.opened_at)) FILTER (WHERE t.opened_at >= %(start)s
           AND t.opened_at < %(end)s AND t.accepted_at < %(end)s), 0),
  count(t.id) FILTER (WHERE t.opened_at >= %(start)s AND t.opened_at < %(end)s AND t.accepted_at < %(end)s),
  coalesce(sum(extract(epoch FROM t.resolved_at - t.opened_at)) FILTER (WHERE t.opened_at >= %(start)s
           AND t.opened_at < %(end)s AND t.resolved_at < %(end)s), 0),
  count(t.id) FILTER (WHERE t.opened_at >= %(start)s AND t.opened_at < %(end)s AND t.resolved_at < %(end)s)
FROM grids g JOIN communities c ON c.id = g.community_id JOIN streets s ON s.id = c.street_id
LEFT JOIN tasks t ON t.grid_id = g.id AND NOT t.drill
WHERE (%(grids)s::text[] IS NULL OR g.id = ANY(%(grids)s))
GROUP BY g.id, g.name, c.id, c.name, s.id, s.name
ORDER BY s.id, c.id, g.id
"""

_OPEN = """
SELECT t.grid_id, t.severity, count(*),
  count(*) FILTER (WHERE t.resolve_due < %(end)s OR (t.accepted_at IS NULL AND t.accept_due < %(end)s))
FROM tasks t
WHERE NOT t.drill AND t.opened_at < %(end)s AND (t.resolved_at IS NULL OR t.resolved_at >= %(end)s)
  AND (t.closed_at IS NULL OR t.closed_at >= %(end)s)
  AND (%(grids)s::text[] IS NULL OR t.grid_id = ANY(%(grids)s))
GROUP BY t.grid_id, t.severity
"""


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def kpis(conn: psycopg.Connection[Any], level: Level, start: datetime, end: datetime,
         scope_grids: list[str] | None) -> list[dict[str, Any]]:
    """One row per grid, community or street in scope (`scope_grids` None: everything), even without tasks."""
    if level not in ("grid", "community", "street"):
        raise ValueError(f"level must be grid, community or street, not {level!r}")
    if end <= start:
        raise ValueError("end must be after start")
    params = {"start": start, "end": end, "grids": scope_grids}
    units: dict[str, dict[str, Any]] = {}
    grid_unit: dict[str, str] = {}
    for (gid, gname, cid, cname, sid, sname, due, closed, on_time, acc_sum, acc_n, res_sum, res_n) in conn.execute(
            _PER_GRID, params):
        uid, name = {"grid": (gid, gname), "community": (cid, cname), "street": (sid, sname)}[level]
        grid_unit[gid] = uid
        u = units.setdefault(uid, {"level": level, "id": uid, "name": name, "due": 0, "closed": 0,
                                   "closed_on_time": 0, "_acc": [0.0, 0], "_res": [0.0, 0],
                                   "open": dict.fromkeys(SEVERITIES, 0), "overdue": dict.fromkeys(SEVERITIES, 0)})
        u["due"] += due
        u["closed"] += closed
        u["closed_on_time"] += on_time
        u["_acc"][0] += float(acc_sum)
        u["_acc"][1] += acc_n
        u["_res"][0] += float(res_sum)
        u["_res"][1] += res_n
    for gid, severity, n_open, n_overdue in conn.execute(_OPEN, params):
        uid = grid_unit.get(gid)
        if uid is None:
            continue
        units[uid]["open"][severity] += n_open
        units[uid]["overdue"][severity] += n_overdue
    out = []
    for u in units.values():
        acc, res = u.pop("_acc"), u.pop("_res")
        u["closure_rate"] = _rate(u["closed"], u["due"])
        u["on_time_closure_rate"] = _rate(u["closed_on_time"], u["due"])
        u["mean_accept_s"] = round(acc[0] / acc[1], 1) if acc[1] else None
        u["mean_resolve_s"] = round(res[0] / res[1], 1) if res[1] else None
        out.append(u)
    return out
