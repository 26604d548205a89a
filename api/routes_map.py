"""GET /api/v1/map/buildings: the board's map (issue 14) — every building in the caller's scope with its WGS-84
position as stored (null when it has none), its units, and its worst open alert.

An open alert is an `active` one (as in /summary); the worst is critical > high > normal > low, null when none.
Overdue patrols do not colour the map yet (there are no patrols). Scope by the building's grid: admin and bureau
everything, a street officer their street, grid roles their grids. One answer without paging, ordered by id: a
district's buildings are a few thousand at most, and the map needs them all at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gridhub.api.deps import ConnDep, CurrentUser
from gridhub.api.schemas import Place, documented

router = APIRouter(tags=["places"])

SEVERITY_ORDER = ("critical", "high", "normal", "low")


class MapBuilding(BaseModel):
    id: str
    name: str
    grid_id: str
    grid_name: str
    community: Place
    lat: float | None = Field(description="WGS-84 degrees as registered; null: no position (listed, not drawn)")
    lon: float | None
    units: int = Field(description="units (CONTRACT §7) registered in the building")
    worst: Literal["critical", "high", "normal", "low"] | None = Field(
        description="the most severe open (active) alert in the building; null when none")
    open_alerts: int


class MapBuildings(BaseModel):
    items: list[MapBuilding]


MAP_SQL = """
SELECT b.id, b.name, b.grid_id, g.name AS grid_name, c.id AS community_id, c.name AS community_name, b.lat, b.lon,
       (SELECT count(*) FROM units u WHERE u.building_id = b.id) AS units,
       a.rank AS worst_rank, COALESCE(a.n, 0) AS open_alerts
FROM buildings b
JOIN grids g ON g.id = b.grid_id
JOIN communities c ON c.id = g.community_id
LEFT JOIN LATERAL (
    SELECT count(*) AS n,
           min(array_position(%s::text[], al.severity)) AS rank
    FROM alerts al WHERE al.building_id = b.id AND al.state = 'active'
) a ON TRUE
WHERE {scope}
ORDER BY b.id
"""


def building_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    lat, lon, rank = row["lat"], row["lon"], row["worst_rank"]
    return {"id": row["id"], "name": row["name"], "grid_id": row["grid_id"], "grid_name": row["grid_name"],
            "community": {"id": row["community_id"], "name": row["community_name"]},
            "lat": float(lat) if lat is not None else None, "lon": float(lon) if lon is not None else None,
            "units": int(row["units"]), "worst": SEVERITY_ORDER[rank - 1] if rank else None,
            "open_alerts": int(row["open_alerts"])}


@router.get("/map/buildings", response_model=None, responses=documented(MapBuildings))
async def map_buildings(conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """The buildings in the caller's scope for the board's map: position, units, worst open alert."""
    cond, params = user.grid_filter("b.grid_id")
    rows = await (await conn.execute(MAP_SQL.format(scope=cond), [list(SEVERITY_ORDER), *params])).fetchall()
    return {"items": [building_shape(r) for r in rows]}
