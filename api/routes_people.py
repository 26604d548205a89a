"""The people responsible for a grid: whom a grid head or street officer may reassign a task to (CONTRACT §4.1
`reassign` takes a `worker_id` responsible for the task's grid). An addition to the contract, for the worker
page's supervisor view."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from gridhub.api.deps import ConnDep, CurrentUser

router = APIRouter(tags=["people"])


class GridPerson(BaseModel):
    id: str
    name: str
    role: str


class GridPeople(BaseModel):
    items: list[GridPerson]


@router.get("/grids/{grid_id}/workers", response_model=GridPeople)
async def grid_workers(grid_id: str, conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """The active grid workers and grid heads of a grid and the street officers of its street, by role then id;
    403 for a grid outside your scope, 404 for one that does not exist."""
    exists = await (await conn.execute("SELECT 1 FROM grids WHERE id = %s", (grid_id,))).fetchone()
    if exists is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"grid {grid_id} does not exist")
    if not user.sees_grid(grid_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"grid {grid_id} is outside your scope")
    rows = await (await conn.execute(
        "SELECT w.id, w.name, w.role FROM workers w WHERE w.active AND ("
        " (w.role IN ('grid_worker', 'grid_head') AND EXISTS (SELECT 1 FROM worker_grids wg"
        "   WHERE wg.worker_id = w.id AND wg.grid_id = %s))"
        " OR (w.role = 'street_officer' AND w.street_id = (SELECT c.street_id FROM grids g"
        "   JOIN communities c ON c.id = g.community_id WHERE g.id = %s)))"
        " ORDER BY array_position(ARRAY['grid_worker', 'grid_head', 'street_officer'], w.role), w.id",
        (grid_id, grid_id))).fetchall()
    return {"items": [{"id": r["id"], "name": r["name"], "role": r["role"]} for r in rows]}
