"""GET /api/v1/map/buildings: the board's map (issue 14) — every building and unit in the caller's scope with its
WGS-84 position as stored (null when it has none), and its status: what colours its marker.

Status, worst first (one value per place):

- `critical`: a critical open alert;
- `high`: a high open alert;
- `hazard`: an open hazard task (type `hazard`, not closed: found on a patrol, reported, or a facility out of date;
  a resolved one awaiting its check still counts, it is not closed yet);
- `overdue`: an overdue patrol (a `patrols` row not done whose period has ended, `period_end <= now()`, its task
  not closed);
- `normal`, `low`: a normal or low open alert;
- `clear`: none of these.

Drill tasks (演练) count for neither, as in /summary. The spec ranks "high alert / open hazard task" together; the map
breaks the tie towards the alert (a live sensor event) and keeps `hazard` a value of its own, so that the board can
colour it apart. An open alert is an `active` one (as in /summary). A building counts the alerts in it, and the hazard
tasks and overdue patrols whose task names the building (`tasks.building_id`, the unit's building). A unit counts the
hazard tasks and overdue patrols about it (`tasks.unit_id`, `patrols.unit_id`) only: alerts belong to devices in
buildings, not to units, and colour the building's marker. A unit is drawn at its building's position; a unit without
a building (or whose building has none) is listed with null lat/lon and no marker.

Scope by grid: admin and bureau everything, a street officer their street, grid roles their grids: a building by its
grid, a unit by its own grid. One query, one answer without paging, ordered by id: a district's buildings and units
are a few thousand at most, and the map needs them all at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gridhub.api.deps import ConnDep, CurrentUser
from gridhub.api.schemas import Place, documented

router = APIRouter(tags=["places"])

SEVERITY_ORDER = ("critical", "high", "normal", "low")
STATUS_ORDER = ("critical", "high", "hazard", "overdue", "normal", "low", "clear")
Status = Literal["critical", "high", "hazard", "overdue", "normal", "low", "clear"]
UnitClass = Literal["key", "general", "shop", "major_hazard"]


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
    hazards: int = Field(description="open (not closed) hazard tasks in the building")
    overdue_patrols: int = Field(description="patrols in the building not done by the end of their period")
    status: Status = Field(description="the marker's colour: critical > high > hazard > overdue > normal > low > "
                                       "clear")


class MapUnit(BaseModel):
    id: str
    name: str
    unit_class: UnitClass = Field(alias="class")
    grid_id: str
    grid_name: str
    community: Place
    building_id: str | None
    building_name: str | None
    lat: float | None = Field(description="the building's WGS-84 position; null without a building or position")
    lon: float | None
    hazards: int = Field(description="open (not closed) hazard tasks about the unit")
    overdue_patrols: int = Field(description="the unit's patrols not done by the end of their period")
    status: Literal["hazard", "overdue", "clear"] = Field(
        description="the marker's colour: hazard > overdue > clear (alerts colour the building)")


class MapBuildings(BaseModel):
    items: list[MapBuilding] = Field(description="buildings, by id")
    units: list[MapUnit] = Field(description="units, by id")


# one statement: the buildings in scope, then the units in scope, each with its counts
MAP_SQL = """
WITH overdue AS (
    SELECT p.unit_id, t.building_id
    FROM patrols p JOIN tasks t ON t.id = p.task_id
    WHERE p.done_at IS NULL AND p.period_end <= now() AND t.state <> 'closed' AND NOT t.drill
), hazard AS (
    SELECT t.unit_id, t.building_id FROM tasks t WHERE t.type = 'hazard' AND t.state <> 'closed' AND NOT t.drill
), per_building AS (
    SELECT building_id, sum(h) AS hazards, sum(o) AS overdue_patrols FROM (
        SELECT building_id, 1 AS h, 0 AS o FROM hazard UNION ALL SELECT building_id, 0, 1 FROM overdue) x
    WHERE building_id IS NOT NULL GROUP BY building_id
), per_unit AS (
    SELECT unit_id, sum(h) AS hazards, sum(o) AS overdue_patrols FROM (
        SELECT unit_id, 1 AS h, 0 AS o FROM hazard UNION ALL SELECT unit_id, 0, 1 FROM overdue) x
    WHERE unit_id IS NOT NULL GROUP BY unit_id
)
SELECT 'building' AS kind, b.id, b.name, NULL::text AS class, b.grid_id, g.name AS grid_name,
       c.id AS community_id, c.name AS community_name, b.id AS building_id, b.name AS building_name, b.lat, b.lon,
       (SELECT count(*) FROM units u WHERE u.building_id = b.id) AS units,
       a.rank AS worst_rank, COALESCE(a.n, 0) AS open_alerts,
       COALESCE(pb.hazards, 0) AS hazards, COALESCE(pb.overdue_patrols, 0) AS overdue_patrols
FROM buildings b
JOIN grids g ON g.id = b.grid_id
JOIN communities c ON c.id = g.community_id
LEFT JOIN per_building pb ON pb.building_id = b.id
LEFT JOIN LATERAL (
    SELECT count(*) AS n,
           min(array_position(%(severities)s::text[], al.severity)) AS rank
    FROM alerts al WHERE al.building_id = b.id AND al.state = 'active'
) a ON TRUE
WHERE {building_scope}
UNION ALL
SELECT 'unit', u.id, u.name, u.class, u.grid_id, g.name, c.id, c.name, u.building_id, ub.name, ub.lat, ub.lon,
       0, NULL, 0, COALESCE(pu.hazards, 0), COALESCE(pu.overdue_patrols, 0)
FROM units u
JOIN grids g ON g.id = u.grid_id
JOIN communities c ON c.id = g.community_id
LEFT JOIN buildings ub ON ub.id = u.building_id
LEFT JOIN per_unit pu ON pu.unit_id = u.id
WHERE {unit_scope}
ORDER BY kind, id
"""


def status_of(worst: str | None, hazards: int, overdue: int) -> str:
    """The marker's status from the worst open alert, the open hazard tasks and the overdue patrols."""
    if worst in ("critical", "high"):
        return worst
    if hazards:
        return "hazard"
    if overdue:
        return "overdue"
    return worst or "clear"


def _position(row: Mapping[str, Any]) -> dict[str, float | None]:
    lat, lon = row["lat"], row["lon"]
    return {"lat": float(lat) if lat is not None else None, "lon": float(lon) if lon is not None else None}


def building_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    rank = row["worst_rank"]
    worst = SEVERITY_ORDER[rank - 1] if rank else None
    hazards, overdue = int(row["hazards"]), int(row["overdue_patrols"])
    return {"id": row["id"], "name": row["name"], "grid_id": row["grid_id"], "grid_name": row["grid_name"],
            "community": {"id": row["community_id"], "name": row["community_name"]}, **_position(row),
            "units": int(row["units"]), "worst": worst, "open_alerts": int(row["open_alerts"]),
            "hazards": hazards, "overdue_patrols": overdue, "status": status_of(worst, hazards, overdue)}


def unit_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    hazards, overdue = int(row["hazards"]), int(row["overdue_patrols"])
    return {"id": row["id"], "name": row["name"], "class": row["class"], "grid_id": row["grid_id"],
            "grid_name": row["grid_name"], "community": {"id": row["community_id"], "name": row["community_name"]},
            "building_id": row["building_id"], "building_name": row["building_name"], **_position(row),
            "hazards": hazards, "overdue_patrols": overdue, "status": status_of(None, hazards, overdue)}


def _named(scope: tuple[str, list[Any]], name: str) -> tuple[str, dict[str, Any]]:
    """A `grid_filter` condition with its positional parameters made named ones (the statement uses both scopes)."""
    cond, params = scope
    out: dict[str, Any] = {}
    for i, value in enumerate(params):
        key = f"{name}{i}"
        cond = cond.replace("%s", f"%({key})s", 1)
        out[key] = value
    return cond, out


@router.get("/map/buildings", response_model=None, responses=documented(MapBuildings))
async def map_buildings(conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """The buildings and units in the caller's scope for the board's map: position, and the marker's status (worst
    open alert, open hazard task, overdue patrol)."""
    building_cond, building_params = _named(user.grid_filter("b.grid_id"), "bscope")
    unit_cond, unit_params = _named(user.grid_filter("u.grid_id"), "uscope")
    sql = MAP_SQL.format(building_scope=building_cond, unit_scope=unit_cond)
    params = {"severities": list(SEVERITY_ORDER), **building_params, **unit_params}
    rows = await (await conn.execute(sql, params)).fetchall()
    return {"items": [building_shape(r) for r in rows if r["kind"] == "building"],
            "units": [unit_shape(r) for r in rows if r["kind"] == "unit"]}
