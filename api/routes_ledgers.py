"""GET /api/v1/ledgers/tasks and /ledgers/hazards: the task ledger (任务台账) and the hazard ledger (事故隐患台账,
CONTRACT §7) as JSON, CSV or XLSX.

Both: tasks (of type `hazard` for the hazard ledger) opened in [start, end) (both required, with an offset, at most one calendar year apart), in the caller's grids
(grid head: their grids; street officer: their street; bureau, admin: everything; grid workers have no ledger),
narrowed by `street`, `community`, `grid`, each of which must lie wholly inside the caller's scope (403 otherwise,
404 when it does not exist). Rows oldest first (`opened_at`, then id); drills included and marked (演练)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import IO, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row
from pydantic import BaseModel

from gridhub.alerts.reports import CATEGORIES
from gridhub.alerts.shapes import shape_time
from gridhub.api.deps import ConnDep, SettingsDep, require_roles
from gridhub.api.ledger_formats import (
    CSV_MEDIA_TYPE,
    XLSX_MEDIA_TYPE,
    Column,
    CsvLedger,
    XlsxLedger,
    chunks,
)
from gridhub.api.listing import parse_time
from gridhub.auth import Principal
from gridhub.labels import RESOLUTION_NAMES, SEVERITY_NAMES, STATE_NAMES, TYPE_NAMES

router = APIRouter(tags=["ledgers"])

LedgerUser = Annotated[Principal, Depends(require_roles("grid_head", "street_officer", "bureau", "admin"))]

SHEET = "任务台账"
BATCH = 2000

# The ledger's columns: Chinese header (CSV, XLSX), English key (JSON), width (XLSX).
TASK_LEDGER = (
    Column("任务编号", "id", 22), Column("类型", "type", 14), Column("紧急程度", "severity", 9),
    Column("状态", "state", 9), Column("街道", "street", 12), Column("社区", "community", 12),
    Column("网格", "grid", 10), Column("楼栋", "building", 12), Column("楼层", "floor", 6),
    Column("位置", "place", 18), Column("设备", "device", 20), Column("负责人", "assignee", 10),
    Column("立案时间", "opened_at", 20), Column("接单时间", "accepted_at", 20), Column("办结时间", "resolved_at", 20),
    Column("结案时间", "closed_at", 20), Column("接单期限", "accept_due", 20), Column("办结期限", "resolve_due", 20),
    Column("是否按期", "on_time", 9), Column("处置结果", "resolution", 10), Column("办结说明", "resolve_note", 30),
    Column("升级级别", "escalation_level", 9), Column("演练", "drill", 6),
)
# JSON rows also carry the ids and the English codes beside the names
JSON_IDS = ("street_id", "community_id", "grid_id", "building_id", "device_id", "assignee_id")
TIME_KEYS = frozenset(("opened_at", "accepted_at", "resolved_at", "closed_at", "accept_due", "resolve_due"))

LEDGER_SQL = """
SELECT t.id, t.type, t.severity, t.state, st.id AS street_id, st.name AS street, c.id AS community_id,
       c.name AS community, t.grid_id, g.name AS grid, t.building_id, b.name AS building, d.floor, d.place,
       t.device_id, t.assignee AS assignee_id, w.name AS assignee, t.opened_at, t.accepted_at, t.resolved_at,
       t.closed_at, t.accept_due, t.resolve_due, t.resolution, t.escalation_level, t.drill,
       CASE WHEN t.resolved_at IS NOT NULL THEN t.resolve_due IS NULL OR t.resolved_at <= t.resolve_due
            WHEN t.resolve_due < now() THEN false END AS on_time,
       (SELECT h.note FROM task_history h WHERE h.task_id = t.id AND h.action = 'resolve'
        ORDER BY h.id DESC LIMIT 1) AS resolve_note
FROM tasks t
LEFT JOIN grids g ON g.id = t.grid_id
LEFT JOIN communities c ON c.id = g.community_id
LEFT JOIN streets st ON st.id = c.street_id
LEFT JOIN buildings b ON b.id = t.building_id
LEFT JOIN devices d ON d.id = t.device_id
LEFT JOIN workers w ON w.id = t.assignee
"""

UNIT_GRIDS = {
    "street": "SELECT ARRAY(SELECT g.id FROM communities c JOIN grids g ON g.community_id = c.id"
              " WHERE c.street_id = s.id) AS grids FROM streets s WHERE s.id = %s",
    "community": "SELECT ARRAY(SELECT g.id FROM grids g WHERE g.community_id = c.id) AS grids"
                 " FROM communities c WHERE c.id = %s",
    "grid": "SELECT ARRAY[g.id] AS grids FROM grids g WHERE g.id = %s",
}


class TaskLedgerRow(BaseModel):
    id: str
    type: str
    type_name: str
    severity: str
    state: str
    street_id: str | None
    street: str | None
    community_id: str | None
    community: str | None
    grid_id: str | None
    grid: str | None
    building_id: str | None
    building: str | None
    floor: int | None
    place: str | None
    device_id: str | None
    device: str | None
    assignee_id: str | None
    assignee: str | None
    opened_at: str
    accepted_at: str | None
    resolved_at: str | None
    closed_at: str | None
    accept_due: str | None
    resolve_due: str | None
    on_time: bool | None
    resolution: str | None
    resolve_note: str | None
    escalation_level: int
    drill: bool


class TaskLedger(BaseModel):
    items: list[TaskLedgerRow]
    start: str
    end: str


RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "model": TaskLedger,
    "description": "the ledger: JSON, or a CSV / XLSX attachment (`format`)",
    "content": {"text/csv": {"schema": {"type": "string"}},
                XLSX_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}}

TimeParam = Annotated[str, Query(max_length=64, json_schema_extra={"format": "date-time"},
                                 description="RFC 3339 with offset")]
UnitParam = Annotated[str | None, Query(max_length=64)]


def year_after(start: datetime, zone: ZoneInfo) -> datetime:
    """The same local wall-clock time one calendar year later (29 February → 1 March)."""
    local = start.astimezone(zone)
    try:
        later = local.replace(year=local.year + 1)
    except ValueError:
        later = local.replace(year=local.year + 1, month=3, day=1)
    return later


def ledger_range(start: str, end: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end): RFC 3339 with offset, start before end, at most a calendar year apart; 422 saying which."""
    t0, t1 = parse_time("start", start), parse_time("end", end)
    for name, value, t in (("start", start, t0), ("end", end, t1)):
        if not 1900 < t.year < 9000:  # no task is that old or new; and year 9999 + 1 or year 1 − 8 h overflow
            raise HTTPException(422, f"{name}: {value!r} is out of range: a ledger covers years 1901 to 8999")
    if t0 >= t1:
        raise HTTPException(422, f"start ({start}) must be before end ({end})")
    if t1 > year_after(t0, zone):
        raise HTTPException(422, f"start ({start}) to end ({end}) is more than a year: a ledger covers at most one"
                                 " year per request (end at most the same date and time a year after start)")
    return t0, t1


async def check_unit(conn: ConnDep, user: Principal, kind: str, unit_id: str) -> None:
    """404 when the street / community / grid does not exist, 403 unless all of its grids are in the scope."""
    row = await (await conn.execute(UNIT_GRIDS[kind], (unit_id,))).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{kind} {unit_id} does not exist")
    grids = list(row["grids"])
    if not user.all_grids and (not grids or not all(user.sees_grid(g) for g in grids)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{kind} {unit_id} is outside your scope")


def ledger_values(row: Mapping[str, Any]) -> list[Any]:
    """A ledger row's cells, in column order, as the bureau reads them (Chinese names)."""
    out = dict(row)
    out["type"] = TYPE_NAMES.get(row["type"], row["type"])
    out["severity"] = SEVERITY_NAMES.get(row["severity"], row["severity"])
    out["state"] = STATE_NAMES.get(row["state"], row["state"])
    out["resolution"] = RESOLUTION_NAMES.get(row["resolution"], row["resolution"])
    out["device"] = row["device_id"]
    return [out[c.key] for c in TASK_LEDGER]


def json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in TASK_LEDGER:
        if c.key == "device":
            out["device"] = row["device_id"]
        elif c.key in TIME_KEYS:
            out[c.key] = shape_time(row[c.key])
        else:
            out[c.key] = row[c.key]
    out["type_name"] = TYPE_NAMES.get(row["type"], row["type"])
    out.update({k: row[k] for k in JSON_IDS})
    return out


def stamp(t: datetime, zone: ZoneInfo) -> str:
    """A time for a file name, ASCII, in the district's zone: 20260101, or 20260101T093000 when not midnight."""
    local = t.astimezone(zone)
    return local.strftime("%Y%m%d") if local.time() == datetime.min.time() else local.strftime("%Y%m%dT%H%M%S")


async def ledger_where(conn: ConnDep, user: Principal, zone: ZoneInfo, start: str, end: str, street: str | None,
                       community: str | None, grid: str | None) -> tuple[datetime, datetime, list[str], list[Any]]:
    """The range, scope and filters every ledger shares: ([start, end), WHERE conditions on `t` (the task), `st`,
    `c` (its street and community), their arguments). 422 for a bad range, 403 / 404 for a bad filter."""
    t0, t1 = ledger_range(start, end, zone)
    where: list[str] = ["t.opened_at >= %s", "t.opened_at < %s"]
    args: list[Any] = [t0, t1]
    cond, params = user.grid_filter("t.grid_id")
    where.append(cond)
    args += params
    for kind, value, column in (("street", street, "st.id"), ("community", community, "c.id"),
                                ("grid", grid, "t.grid_id")):
        if value is not None:
            await check_unit(conn, user, kind, value)
            where.append(f"{column} = %s")
            args.append(value)
    return t0, t1, where, args


async def ledger_answer(
    conn: ConnDep, *, sql: str, args: Sequence[Any], columns: Sequence[Column], sheet: str, prefix: str,
    fmt: str, zone: ZoneInfo, t0: datetime, t1: datetime,
    to_json: Callable[[Mapping[str, Any]], dict[str, Any]], to_cells: Callable[[Mapping[str, Any]], list[Any]],
) -> dict[str, Any] | StreamingResponse:
    """Run the ledger's query and answer it as JSON or as a CSV / XLSX attachment `<prefix>-<start>-<end>.<fmt>`."""
    writer: CsvLedger | XlsxLedger | None = None
    if fmt == "csv":
        writer = CsvLedger(columns, zone)
    elif fmt == "xlsx":
        writer = await run_in_threadpool(XlsxLedger, columns, zone, sheet)
    items: list[dict[str, Any]] = []
    # a server-side cursor in a transaction: a year's ledger is read in batches, never held whole
    async with conn.transaction(), conn.cursor(name=f"{prefix}_ledger", row_factory=dict_row) as cur:
        await cur.execute(sql, args)
        while batch := await cur.fetchmany(BATCH):
            if writer is None:
                items += [to_json(r) for r in batch]
            else:
                values: Sequence[Sequence[Any]] = [to_cells(r) for r in batch]
                await run_in_threadpool(writer.add, values)
    if writer is None:
        return {"items": items, "start": shape_time(t0), "end": shape_time(t1)}
    body: IO[bytes] = await run_in_threadpool(writer.finish)
    name = f"{prefix}-{stamp(t0, zone)}-{stamp(t1, zone)}.{fmt}"
    media = CSV_MEDIA_TYPE if fmt == "csv" else XLSX_MEDIA_TYPE
    return StreamingResponse(chunks(body), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store"})


FormatParam = Annotated[Literal["json", "csv", "xlsx"], Query(description="json (default), csv or xlsx")]


@router.get("/ledgers/tasks", response_model=None, responses=RESPONSES)
async def task_ledger(
    conn: ConnDep, user: LedgerUser, settings: SettingsDep, start: TimeParam, end: TimeParam,
    street: UnitParam = None, community: UnitParam = None, grid: UnitParam = None, format: FormatParam = "json",
) -> dict[str, Any] | StreamingResponse:
    """The task ledger (任务台账): tasks opened in [start, end) in your scope, oldest first; grid heads, street
    officers, bureau and admin. CSV is UTF-8 with a BOM, XLSX has one sheet 任务台账; times in the district's
    zone."""
    zone = settings.tz
    t0, t1, where, args = await ledger_where(conn, user, zone, start, end, street, community, grid)
    sql = f"{LEDGER_SQL} WHERE {' AND '.join(where)} ORDER BY t.opened_at, t.id"
    return await ledger_answer(conn, sql=sql, args=args, columns=TASK_LEDGER, sheet=SHEET, prefix="tasks", fmt=format,
                               zone=zone, t0=t0, t1=t1, to_json=json_row, to_cells=ledger_values)


# --- the hazard ledger (事故隐患台账): hazard tasks, most from residents' and workers' reports (alerts/reports.py) ---

HAZARD_SHEET = "隐患台账"
HAZARD_LEDGER = (
    Column("隐患编号", "id", 22), Column("类别", "category", 16), Column("街道", "street", 12),
    Column("社区", "community", 12), Column("网格", "grid", 10), Column("楼栋", "building", 12),
    Column("位置", "place", 18), Column("描述", "description", 36), Column("提报人", "reported_by", 10),
    Column("提报时间", "reported_at", 20), Column("立案时间", "confirmed_at", 20), Column("状态", "state", 9),
    Column("移交部门", "referrals", 18), Column("整改时间", "resolved_at", 20), Column("处置结果", "resolution", 10),
    Column("复查任务", "recheck_id", 22), Column("复查结果", "recheck", 14), Column("演练", "drill", 6),
)
HAZARD_JSON_IDS = ("street_id", "community_id", "grid_id", "building_id", "reported_by_id", "recheck_state",
                   "recheck_resolution")
HAZARD_TIME_KEYS = frozenset(("reported_at", "confirmed_at", "resolved_at"))
DEPARTMENT_SEPARATOR = "、"

# the place: the report's words, else (a hazard from elsewhere) the device's place; the recheck: the latest one
HAZARD_SQL = """
SELECT t.id, t.detail->>'category' AS category, st.id AS street_id, st.name AS street, c.id AS community_id,
       c.name AS community, t.grid_id, g.name AS grid, t.building_id, b.name AS building,
       COALESCE(t.detail->>'place', d.place) AS place, t.detail->>'description' AS description,
       t.reported_by AS reported_by_id, COALESCE(rw.name, t.reported_by) AS reported_by, t.opened_at AS reported_at,
       t.confirmed_at, t.state, t.resolved_at, t.resolution, t.drill,
       ARRAY(SELECT r.value->>'department'
             FROM jsonb_array_elements(CASE WHEN jsonb_typeof(t.detail->'referrals') = 'array'
                                            THEN t.detail->'referrals' ELSE '[]'::jsonb END)
                  WITH ORDINALITY AS r(value, n)
             WHERE r.value->>'department' IS NOT NULL ORDER BY r.n) AS referrals,
       rc.id AS recheck_id, rc.state AS recheck_state, rc.resolution AS recheck_resolution
FROM tasks t
LEFT JOIN grids g ON g.id = t.grid_id
LEFT JOIN communities c ON c.id = g.community_id
LEFT JOIN streets st ON st.id = c.street_id
LEFT JOIN buildings b ON b.id = t.building_id
LEFT JOIN devices d ON d.id = t.device_id
LEFT JOIN workers rw ON rw.id = t.reported_by
LEFT JOIN LATERAL (SELECT r.id, r.state, r.resolution FROM tasks r
                   WHERE r.source_task_id = t.id AND r.type = 'recheck'
                   ORDER BY r.opened_at DESC, r.id DESC LIMIT 1) rc ON true
"""


class HazardLedgerRow(BaseModel):
    id: str
    category: str | None
    category_name: str | None
    street_id: str | None
    street: str | None
    community_id: str | None
    community: str | None
    grid_id: str | None
    grid: str | None
    building_id: str | None
    building: str | None
    place: str | None
    description: str | None
    reported_by_id: str | None
    reported_by: str | None
    reported_at: str
    confirmed_at: str | None
    state: str
    referrals: list[str]
    resolved_at: str | None
    resolution: str | None
    recheck_id: str | None
    recheck_state: str | None
    recheck_resolution: str | None
    drill: bool


class HazardLedger(BaseModel):
    items: list[HazardLedgerRow]
    start: str
    end: str


HAZARD_RESPONSES: dict[int | str, dict[str, Any]] = {200: {**RESPONSES[200], "model": HazardLedger}}


def recheck_text(row: Mapping[str, Any]) -> str | None:
    """复查结果: the recheck's state, and its resolution once it has one: 已办结（已处置）."""
    if row["recheck_id"] is None:
        return None
    text = STATE_NAMES.get(row["recheck_state"], row["recheck_state"])
    if row["recheck_resolution"]:
        text += f"（{RESOLUTION_NAMES.get(row['recheck_resolution'], row['recheck_resolution'])}）"
    return str(text)


def hazard_values(row: Mapping[str, Any]) -> list[Any]:
    out = dict(row)
    out["category"] = CATEGORIES.get(row["category"], row["category"]) if row["category"] else None
    out["state"] = STATE_NAMES.get(row["state"], row["state"])
    out["resolution"] = RESOLUTION_NAMES.get(row["resolution"], row["resolution"])
    out["referrals"] = DEPARTMENT_SEPARATOR.join(row["referrals"]) or None
    out["recheck"] = recheck_text(row)
    return [out[c.key] for c in HAZARD_LEDGER]


def hazard_json(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in HAZARD_LEDGER:
        if c.key == "recheck":
            continue
        out[c.key] = shape_time(row[c.key]) if c.key in HAZARD_TIME_KEYS else row[c.key]
    out["referrals"] = list(row["referrals"])
    out["category_name"] = CATEGORIES.get(row["category"], row["category"]) if row["category"] else None
    out.update({k: row[k] for k in HAZARD_JSON_IDS})
    return out


@router.get("/ledgers/hazards", response_model=None, responses=HAZARD_RESPONSES)
async def hazard_ledger(
    conn: ConnDep, user: LedgerUser, settings: SettingsDep, start: TimeParam, end: TimeParam,
    street: UnitParam = None, community: UnitParam = None, grid: UnitParam = None, format: FormatParam = "json",
) -> dict[str, Any] | StreamingResponse:
    """The hazard ledger (事故隐患台账): `hazard` tasks opened in [start, end) in your scope, oldest first, with the
    report (category, place, description, reporter), 立案, referrals, 整改 and the recheck; the same roles, range,
    filters and formats as the task ledger; XLSX sheet 隐患台账."""
    zone = settings.tz
    t0, t1, where, args = await ledger_where(conn, user, zone, start, end, street, community, grid)
    where.insert(0, "t.type = 'hazard'")
    sql = f"{HAZARD_SQL} WHERE {' AND '.join(where)} ORDER BY t.opened_at, t.id"
    return await ledger_answer(conn, sql=sql, args=args, columns=HAZARD_LEDGER, sheet=HAZARD_SHEET, prefix="hazards",
                               fmt=format, zone=zone, t0=t0, t1=t1, to_json=hazard_json, to_cells=hazard_values)
