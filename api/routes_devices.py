"""Devices: the scoped list, one device with its location path, its readings (raw or bucketed), and commands."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime, BaseModel

from gridhub import audit
from gridhub.api import schemas
from gridhub.api.commands import CommandNotDelivered, CommandPublisher
from gridhub.api.deps import ClientAddress, ConnDep, CurrentUser, require_grid_in_scope, require_roles
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.schemas import documented
from gridhub.auth import Principal
from gridhub.protocol import device_topic, rfc3339

router = APIRouter(tags=["devices"])

BUCKETS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1), "6h": timedelta(hours=6), "1d": timedelta(days=1),
}
MAX_RAW_POINTS = 10_000
MAX_BUCKETS = 20_000
# Buckets start at whole multiples of their width from this local midnight (a Monday), in GRIDHUB_TIMEZONE.
BUCKET_ORIGIN = "2000-01-03 00:00:00"

Kind = Literal["smoke_alarm", "stairwell_light", "sprinkler_pressure", "camera"]

DEVICE_COLUMNS = """
    d.id, d.kind, b.grid_id, d.building_id, d.floor, d.place, d.retired,
    COALESCE(s.online, false) AS online, s.last_seen,
    COALESCE(s.latest, '{}'::jsonb) AS latest
"""
DEVICE_FROM = """
    FROM devices d
    JOIN buildings b ON b.id = d.building_id
    JOIN grids g ON g.id = b.grid_id
    LEFT JOIN device_state s ON s.device_id = d.id
"""
DEVICE_ORDER = ListOrder(("d.id",), (str,), descending=False)


def device_shape(row: Mapping[str, Any], request: Request) -> dict[str, Any]:
    tz = request.app.state.settings.tz
    return {"id": row["id"], "kind": row["kind"], "grid_id": row["grid_id"], "building_id": row["building_id"],
            "floor": row["floor"], "place": row["place"], "online": row["online"],
            "last_seen": rfc3339(row["last_seen"], tz), "latest": row["latest"], "retired": row["retired"]}


async def scoped_device(conn: ConnDep, user: Principal, device_id: str, columns: str = DEVICE_COLUMNS,
                        joins: str = "") -> dict[str, Any]:
    """One device row with `in_scope` computed in SQL: 404 if it does not exist, 403 if outside the caller's grids."""
    cond, params = user.grid_filter("b.grid_id")
    row = await (await conn.execute(
        f"SELECT {columns}, ({cond}) AS in_scope {DEVICE_FROM} {joins} WHERE d.id = %s", [*params, device_id]
    )).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id} is not registered")
    if not row["in_scope"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"device {device_id} is in grid {row['grid_id']}, outside your scope")
    return row


@router.get("/devices", response_model=None, responses=documented(schemas.DevicePage))
async def list_devices(
    request: Request, conn: ConnDep, user: CurrentUser, page: PageDep,
    kind: Kind | None = None,
    grid: Annotated[str | None, Query(max_length=64)] = None,
    community: Annotated[str | None, Query(max_length=64)] = None,
    online: bool | None = None,
) -> dict[str, Any]:
    """Devices in the caller's scope, by id."""
    require_grid_in_scope(user, grid)
    cond, params = user.grid_filter("b.grid_id")
    where, args = [cond], list(params)
    for clause, value in (("d.kind = %s", kind), ("b.grid_id = %s", grid), ("g.community_id = %s", community),
                          ("COALESCE(s.online, false) = %s", online)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return await fetch_page(conn, f"SELECT {DEVICE_COLUMNS} {DEVICE_FROM}", where, args, DEVICE_ORDER, page,
                            lambda r: device_shape(r, request))


LOCATION_COLUMNS = DEVICE_COLUMNS + """,
    b.name AS building_name, b.floors AS building_floors, g.name AS grid_name,
    c.id AS community_id, c.name AS community_name, st.id AS street_id, st.name AS street_name,
    di.id AS district_id, di.name AS district_name, d.heartbeat_s, s.status, s.seq_gaps
"""
LOCATION_JOINS = """
    JOIN communities c ON c.id = g.community_id
    JOIN streets st ON st.id = c.street_id
    JOIN districts di ON di.id = st.district_id
"""


@router.get("/devices/{device_id}", response_model=None, responses=documented(schemas.DeviceDetail))
async def get_device(device_id: str, request: Request, conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """One device with its location path (district → street → community → grid → building → floor → place)."""
    row = await scoped_device(conn, user, device_id, LOCATION_COLUMNS, LOCATION_JOINS)
    out = device_shape(row, request)
    out["heartbeat_s"] = row["heartbeat_s"]
    out["status"] = row["status"]
    out["seq_gaps"] = row["seq_gaps"] or 0
    out["location"] = {
        "district": {"id": row["district_id"], "name": row["district_name"]},
        "street": {"id": row["street_id"], "name": row["street_name"]},
        "community": {"id": row["community_id"], "name": row["community_name"]},
        "grid": {"id": row["grid_id"], "name": row["grid_name"]},
        "building": {"id": row["building_id"], "name": row["building_name"], "floors": row["building_floors"]},
        "floor": row["floor"],
        "place": row["place"],
    }
    return out


# A value as a number where it has one (booleans as 0/1 for min/max/avg), for bucketed series.
NUMERIC_VALUE = ("COALESCE(value, CASE jsonb_typeof(value_json) WHEN 'boolean' "
                 "THEN CASE WHEN value_json = 'true'::jsonb THEN 1.0 ELSE 0.0 END END)")


@router.get("/devices/{device_id}/readings", response_model=None, responses=documented(schemas.Readings))
async def device_readings(
    device_id: str, request: Request, conn: ConnDep, user: CurrentUser,
    metric: Annotated[str, Query(min_length=1, max_length=64, description="metric name, e.g. pressure_mpa")],
    start: Annotated[AwareDatetime | None, Query(description="inclusive; default end − 24 h")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive; default now")] = None,
    bucket: Literal["1m", "5m", "15m", "1h", "6h", "1d"] | None = None,
) -> dict[str, Any]:
    """Readings of one metric, oldest first: raw points, or per bucket aligned in GRIDHUB_TIMEZONE."""
    settings = request.app.state.settings
    await scoped_device(conn, user, device_id, "d.id, b.grid_id")
    end_t: datetime = end or datetime.now(settings.tz)
    start_t: datetime = start or end_t - timedelta(hours=24)
    if start_t >= end_t:
        raise HTTPException(422,
                            f"start ({start_t.isoformat()}) must be before end ({end_t.isoformat()})")
    tz = settings.tz
    out: dict[str, Any] = {"device_id": device_id, "metric": metric, "start": rfc3339(start_t, tz),
                           "end": rfc3339(end_t, tz)}
    if bucket is None:
        rows = await (await conn.execute(
            "SELECT ts, COALESCE(to_jsonb(value), value_json) AS value FROM readings"
            " WHERE device_id = %s AND metric = %s AND ts >= %s AND ts < %s ORDER BY ts, seq LIMIT %s",
            (device_id, metric, start_t, end_t, MAX_RAW_POINTS + 1),
        )).fetchall()
        out["truncated"] = len(rows) > MAX_RAW_POINTS
        out["points"] = [{"ts": rfc3339(r["ts"], tz), "value": r["value"]} for r in rows[:MAX_RAW_POINTS]]
        return out
    width = BUCKETS[bucket]
    if (end_t - start_t) / width > MAX_BUCKETS:
        raise HTTPException(422,
                            f"{bucket} buckets over this range make more than {MAX_BUCKETS} points: "
                            "choose a larger bucket or a shorter range")
    rows = await (await conn.execute(
        f"""SELECT date_bin(%s::interval, ts AT TIME ZONE %s, %s::timestamp) AT TIME ZONE %s AS bucket,
                   min(v) AS min, max(v) AS max, avg(v) AS avg, count(*) AS count
            FROM (SELECT ts, {NUMERIC_VALUE} AS v FROM readings
                  WHERE device_id = %s AND metric = %s AND ts >= %s AND ts < %s) r
            GROUP BY 1 ORDER BY 1""",
        (width, settings.timezone, BUCKET_ORIGIN, settings.timezone, device_id, metric, start_t, end_t),
    )).fetchall()
    out["bucket"] = bucket
    out["points"] = [{"ts": rfc3339(r["bucket"], tz), "min": r["min"], "max": r["max"], "avg": r["avg"],
                      "count": r["count"]} for r in rows]
    return out


class CommandIn(BaseModel):
    type: Literal["self_test", "silence", "snapshot"]


CommandUser = Annotated[Principal, Depends(require_roles("grid_head", "street_officer", "admin"))]


@router.post("/devices/{device_id}/commands", status_code=status.HTTP_202_ACCEPTED, response_model=None,
             responses=documented(schemas.CommandSent, 202))
async def send_command(device_id: str, body: CommandIn, request: Request, conn: ConnDep,
                       user: CommandUser, address: ClientAddress) -> dict[str, Any]:
    """Publish a command to the device's `command` topic at QoS 1; 202 once the broker has it. Every command
    handed to the broker is in the audit trail (`device.command`), one it did not take too (`delivered: false`)."""
    row = await scoped_device(conn, user, device_id, "d.id, b.grid_id, d.retired")
    if row["retired"]:
        raise HTTPException(status.HTTP_409_CONFLICT, f"device {device_id} is retired and takes no commands")
    publisher: CommandPublisher | None = request.app.state.commands
    if publisher is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "GRIDHUB_MQTT_URL is not set, so the API cannot reach devices")
    command = {"id": uuid.uuid4().hex, "type": body.type}
    topic = device_topic(request.app.state.settings.topic_prefix, device_id, "command")
    try:
        await run_in_threadpool(publisher.publish, topic, orjson.dumps(command))
    except CommandNotDelivered as exc:
        await audit.record_async(conn, user.id, "device.command", target=device_id, address=address,
                                 detail={"type": body.type, "command_id": command["id"], "delivered": False})
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    await audit.record_async(conn, user.id, "device.command", target=device_id, address=address,
                             detail={"type": body.type, "command_id": command["id"], "delivered": True})
    return {**command, "device_id": device_id, "topic": topic, "sent_by": user.id}
