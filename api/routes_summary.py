"""GET /api/v1/summary (street → community → grid counts for the board) and GET /api/v1/kpis.

A task counts as open until it is closed (a resolved task waits for its check); it is overdue when it is still
open past its accept deadline, or not yet resolved past its resolve deadline. Drill tasks (演练) are left out of
both counts and of the KPIs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime

from gridhub.alerts.kpi import kpis as compute_kpis
from gridhub.api import schemas
from gridhub.api.deps import ConnDep, SyncPoolDep, require_roles
from gridhub.api.schemas import documented
from gridhub.auth import Principal
from gridhub.protocol import rfc3339

router = APIRouter(tags=["summary"])

SummaryUser = Annotated[Principal, Depends(require_roles("street_officer", "bureau", "admin"))]
KpiUser = Annotated[Principal, Depends(require_roles("grid_head", "street_officer", "bureau", "admin"))]

SUMMARY_SQL = """
WITH scope AS (SELECT g.id FROM grids g WHERE {scope}),
dev AS (
    SELECT b.grid_id, count(*) FILTER (WHERE COALESCE(s.online, false)) AS online,
           count(*) FILTER (WHERE NOT COALESCE(s.online, false)) AS offline
    FROM devices d JOIN buildings b ON b.id = d.building_id LEFT JOIN device_state s ON s.device_id = d.id
    WHERE NOT d.retired AND b.grid_id IN (SELECT id FROM scope) GROUP BY b.grid_id),
al AS (
    SELECT grid_id, count(*) FILTER (WHERE severity = 'critical') AS critical,
           count(*) FILTER (WHERE severity = 'high') AS high, count(*) FILTER (WHERE severity = 'normal') AS normal,
           count(*) FILTER (WHERE severity = 'low') AS low
    FROM alerts WHERE state = 'active' AND grid_id IN (SELECT id FROM scope) GROUP BY grid_id),
tk AS (
    SELECT grid_id, count(*) AS open,
           count(*) FILTER (WHERE (state = 'open' AND accept_due < now())
                               OR (state IN ('open', 'accepted', 'on_site') AND resolve_due < now())) AS overdue
    FROM tasks WHERE state <> 'closed' AND NOT drill AND grid_id IN (SELECT id FROM scope) GROUP BY grid_id)
SELECT st.id AS street_id, st.name AS street_name, c.id AS community_id, c.name AS community_name,
       g.id AS grid_id, g.name AS grid_name,
       COALESCE(dev.online, 0) AS online, COALESCE(dev.offline, 0) AS offline,
       COALESCE(al.critical, 0) AS critical, COALESCE(al.high, 0) AS high, COALESCE(al.normal, 0) AS normal,
       COALESCE(al.low, 0) AS low, COALESCE(tk.open, 0) AS open, COALESCE(tk.overdue, 0) AS overdue
FROM grids g
JOIN communities c ON c.id = g.community_id
JOIN streets st ON st.id = c.street_id
LEFT JOIN dev ON dev.grid_id = g.id
LEFT JOIN al ON al.grid_id = g.id
LEFT JOIN tk ON tk.grid_id = g.id
WHERE g.id IN (SELECT id FROM scope)
ORDER BY st.id, c.id, g.id
"""


@router.get("/summary", response_model=None, responses=documented(schemas.Summary))
async def summary(request: Request, conn: ConnDep, user: SummaryUser) -> dict[str, Any]:
    """Per street → community → grid: devices online/offline, active alerts by severity, open and overdue tasks."""
    cond, params = user.grid_filter("g.id")
    rows = await (await conn.execute(SUMMARY_SQL.format(scope=cond), params)).fetchall()
    streets: dict[str, dict[str, Any]] = {}
    communities: dict[str, dict[str, Any]] = {}
    for r in rows:
        street = streets.get(r["street_id"])
        if street is None:
            street = streets[r["street_id"]] = {"id": r["street_id"], "name": r["street_name"], "communities": []}
        community = communities.get(r["community_id"])
        if community is None:
            community = communities[r["community_id"]] = {"id": r["community_id"], "name": r["community_name"],
                                                          "grids": []}
            street["communities"].append(community)
        community["grids"].append({
            "id": r["grid_id"], "name": r["grid_name"],
            "devices": {"online": r["online"], "offline": r["offline"]},
            "alerts": {k: r[k] for k in ("critical", "high", "normal", "low")},
            "tasks": {"open": r["open"], "overdue": r["overdue"]},
        })
    return {"streets": list(streets.values()), "at": rfc3339(datetime.now(request.app.state.settings.tz),
                                                             request.app.state.settings.tz)}


@router.get("/kpis", response_model=None, responses=documented(schemas.Kpis))
async def kpis(
    request: Request, user: KpiUser, sync_pool: SyncPoolDep,
    level: Literal["grid", "community", "street"] = "community",
    start: Annotated[AwareDatetime | None, Query(description="inclusive; default end − 30 days")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive; default now")] = None,
) -> dict[str, Any]:
    """Closure rate, on-time closure rate, mean time to accept and to resolve, per grid, community or street."""
    tz = request.app.state.settings.tz
    end_t = end or datetime.now(tz)
    start_t = start or end_t - timedelta(days=30)
    if start_t >= end_t:
        raise HTTPException(422, f"start ({start_t.isoformat()}) must be before end ({end_t.isoformat()})")
    scope_grids = None if user.all_grids else sorted(user.grids)

    def run() -> list[dict[str, Any]]:
        with sync_pool.connection() as c:
            return compute_kpis(c, level, start_t, end_t, scope_grids)

    items = await run_in_threadpool(run)
    return {"level": level, "start": rfc3339(start_t, tz), "end": rfc3339(end_t, tz), "items": items}
