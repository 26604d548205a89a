"""Places (CONTRACT §7): the units a grid patrols and the fire equipment without a sensor, scoped by their grid (a
unit's own grid, a facility's building's grid), listed by id; one of each with its location path. 404 for an id
that is not registered, 403 naming the grid for one outside the caller's scope, as for devices."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from gridhub.api.deps import ConnDep, CurrentUser, require_grid_in_scope
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.schemas import Page, Place, documented
from gridhub.auth import Principal

router = APIRouter(tags=["places"])

UnitClass = Literal["key", "general", "shop", "major_hazard"]
FacilityKind = Literal["hydrant", "extinguisher", "hose_reel", "emergency_light", "fire_door"]
IdQuery = Annotated[str | None, Query(max_length=64)]


# ---------------------------------------------------------------- shapes (for the OpenAPI document)

class Unit(BaseModel):
    id: str
    name: str
    class_: UnitClass = Field(alias="class", description="key 重点单位, general 一般单位, shop 个体经营户, "
                                                         "major_hazard 重大危险源")
    grid_id: str
    building_id: str | None
    contact: str | None
    phone: str | None
    lat: float | None = Field(description="the building's latitude, WGS-84 degrees (null: no building or no position)")
    lon: float | None


class UnitPage(Page):
    items: list[Unit]


class Facility(BaseModel):
    id: str
    kind: FacilityKind
    grid_id: str
    building_id: str
    floor: int | None
    place: str | None
    expires: date | None = Field(description="the date it must be replaced or serviced by (extinguishers)")
    lat: float | None = Field(description="the building's latitude, WGS-84 degrees")
    lon: float | None


class FacilityPage(Page):
    items: list[Facility]


class PlaceBuilding(Place):
    floors: int | None
    lat: float | None
    lon: float | None


class PlaceLocation(BaseModel):
    district: Place
    street: Place
    community: Place
    grid: Place
    building: PlaceBuilding | None


class UnitDetail(Unit):
    location: PlaceLocation


class FacilityDetail(Facility):
    location: PlaceLocation


# ---------------------------------------------------------------- queries

UNIT_COLUMNS = """
    u.id, u.name, u.class, u.grid_id, u.building_id, u.contact, u.phone, b.lat, b.lon
"""
UNIT_FROM = """
    FROM units u
    LEFT JOIN buildings b ON b.id = u.building_id
"""
UNIT_ORDER = ListOrder(("u.id",), (str,), descending=False)

FACILITY_COLUMNS = """
    f.id, f.kind, b.grid_id, f.building_id, f.floor, f.place, f.expires, b.lat, b.lon
"""
FACILITY_FROM = """
    FROM facilities f
    JOIN buildings b ON b.id = f.building_id
"""
FACILITY_ORDER = ListOrder(("f.id",), (str,), descending=False)

# the location path from a grid (`grid_col`) and an optional building `b`
LOCATION_COLUMNS = """,
    g.name AS grid_name, c.id AS community_id, c.name AS community_name, st.id AS street_id,
    st.name AS street_name, di.id AS district_id, di.name AS district_name, b.name AS building_name,
    b.floors AS building_floors
"""


def _location_joins(grid_col: str) -> str:
    return f"""
    JOIN grids g ON g.id = {grid_col}
    JOIN communities c ON c.id = g.community_id
    JOIN streets st ON st.id = c.street_id
    JOIN districts di ON di.id = st.district_id
"""


def unit_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "class": row["class"], "grid_id": row["grid_id"],
            "building_id": row["building_id"], "contact": row["contact"], "phone": row["phone"],
            "lat": row["lat"], "lon": row["lon"]}


def facility_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    expires: date | None = row["expires"]
    return {"id": row["id"], "kind": row["kind"], "grid_id": row["grid_id"], "building_id": row["building_id"],
            "floor": row["floor"], "place": row["place"], "expires": expires.isoformat() if expires else None,
            "lat": row["lat"], "lon": row["lon"]}


def location_shape(row: Mapping[str, Any]) -> dict[str, Any]:
    building = None
    if row["building_id"] is not None:
        building = {"id": row["building_id"], "name": row["building_name"], "floors": row["building_floors"],
                    "lat": row["lat"], "lon": row["lon"]}
    return {"district": {"id": row["district_id"], "name": row["district_name"]},
            "street": {"id": row["street_id"], "name": row["street_name"]},
            "community": {"id": row["community_id"], "name": row["community_name"]},
            "grid": {"id": row["grid_id"], "name": row["grid_name"]},
            "building": building}


async def _scoped_one(conn: ConnDep, user: Principal, what: str, ident: str, columns: str, from_: str,
                      grid_col: str, id_col: str) -> dict[str, Any]:
    """One row with `in_scope` computed in SQL: 404 if it is not registered, 403 if outside the caller's grids."""
    cond, params = user.grid_filter(grid_col)
    row = await (await conn.execute(
        f"SELECT {columns} {LOCATION_COLUMNS}, ({cond}) AS in_scope {from_} {_location_joins(grid_col)}"
        f" WHERE {id_col} = %s", [*params, ident]
    )).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} is not registered")
    if not row["in_scope"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{what} {ident} is in grid {row['grid_id']}, outside your scope")
    return dict(row)


# ---------------------------------------------------------------- routes

@router.get("/units", response_model=None, responses=documented(UnitPage))
async def list_units(
    conn: ConnDep, user: CurrentUser, page: PageDep,
    grid: IdQuery = None,
    unit_class: Annotated[UnitClass | None, Query(alias="class")] = None,
    building: IdQuery = None,
) -> dict[str, Any]:
    """Units in the caller's scope, by id; `?class=` key, general, shop or major_hazard."""
    require_grid_in_scope(user, grid)
    cond, params = user.grid_filter("u.grid_id")
    where, args = [cond], list(params)
    for clause, value in (("u.grid_id = %s", grid), ("u.class = %s", unit_class), ("u.building_id = %s", building)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return await fetch_page(conn, f"SELECT {UNIT_COLUMNS} {UNIT_FROM}", where, args, UNIT_ORDER, page, unit_shape)


@router.get("/units/{unit_id}", response_model=None, responses=documented(UnitDetail))
async def get_unit(unit_id: str, conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """One unit with its location path (district → street → community → grid → building)."""
    row = await _scoped_one(conn, user, "unit", unit_id, UNIT_COLUMNS, UNIT_FROM, "u.grid_id", "u.id")
    return {**unit_shape(row), "location": location_shape(row)}


@router.get("/facilities", response_model=None, responses=documented(FacilityPage))
async def list_facilities(
    conn: ConnDep, user: CurrentUser, page: PageDep,
    grid: IdQuery = None,
    kind: FacilityKind | None = None,
    building: IdQuery = None,
    expires_before: Annotated[date | None, Query(description="only those whose `expires` is before this date "
                                                             "(exclusive); those without a date are left out")] = None,
) -> dict[str, Any]:
    """Facilities in the caller's scope (their building's grid), by id."""
    require_grid_in_scope(user, grid)
    cond, params = user.grid_filter("b.grid_id")
    where, args = [cond], list(params)
    for clause, value in (("b.grid_id = %s", grid), ("f.kind = %s", kind), ("f.building_id = %s", building),
                          ("f.expires < %s", expires_before)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return await fetch_page(conn, f"SELECT {FACILITY_COLUMNS} {FACILITY_FROM}", where, args, FACILITY_ORDER, page,
                            facility_shape)


@router.get("/facilities/{facility_id}", response_model=None, responses=documented(FacilityDetail))
async def get_facility(facility_id: str, conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """One facility with its location path (district → street → community → grid → building)."""
    row = await _scoped_one(conn, user, "facility", facility_id, FACILITY_COLUMNS, FACILITY_FROM, "b.grid_id", "f.id")
    return {**facility_shape(row), "location": location_shape(row)}
