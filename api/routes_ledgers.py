"""GET /api/v1/ledgers/tasks, /ledgers/hazards and /ledgers/patrols: the task ledger (任务台账), the hazard ledger
(事故隐患台账) and the patrol ledger (安全巡查台账, CONTRACT §7) as JSON, CSV or XLSX.

All three: tasks (of type `hazard`, of type `patrol` with their `patrols` row) opened in [start, end) (both
required, with an offset, at most one calendar year apart), in the caller's grids (grid head: their grids; street
officer: their street; bureau, admin: everything; grid workers have no task or hazard ledger, but keep the patrol
ledger of their own grids), narrowed by `street`, `community`, `grid`, each of which must lie wholly inside the
caller's scope (403 otherwise, 404 when it does not exist). Rows oldest first (`opened_at`, then id); drills included
and marked (演练).

Each ledger is a `Ledger` (its query, columns and row shapes); `ledger_batches` reads one for the API and for
`gridhub report monthly` (gridhub/report_monthly.py) alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import IO, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from gridhub.alerts.reports import CATEGORIES
from gridhub.alerts.shapes import shape_time
from gridhub.api.deps import ConnDep, CurrentUser, SettingsDep, require_roles
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
from gridhub.labels import (
    FREQUENCY_NAMES,
    RESOLUTION_NAMES,
    SEVERITY_NAMES,
    STATE_NAMES,
    TYPE_NAMES,
    UNIT_CLASSES,
)

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

# where a ledger row is (LedgerPlace's columns): the task's grid, community, street and building
PLACE_JOINS = """LEFT JOIN grids g ON g.id = t.grid_id
LEFT JOIN communities c ON c.id = g.community_id
LEFT JOIN streets st ON st.id = c.street_id
LEFT JOIN buildings b ON b.id = t.building_id"""

LEDGER_SQL = f"""
SELECT t.id, t.type, t.severity, t.state, st.id AS street_id, st.name AS street, c.id AS community_id,
       c.name AS community, t.grid_id, g.name AS grid, t.building_id, b.name AS building, d.floor, d.place,
       t.device_id, t.assignee AS assignee_id, w.name AS assignee, t.opened_at, t.accepted_at, t.resolved_at,
       t.closed_at, t.accept_due, t.resolve_due, t.resolution, t.escalation_level, t.drill,
       CASE WHEN t.resolved_at IS NOT NULL THEN t.resolve_due IS NULL OR t.resolved_at <= t.resolve_due
            WHEN t.resolve_due < now() THEN false END AS on_time,
       (SELECT h.note FROM task_history h WHERE h.task_id = t.id AND h.action = 'resolve'
        ORDER BY h.id DESC LIMIT 1) AS resolve_note
FROM tasks t
{PLACE_JOINS}
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


class LedgerPlace(BaseModel):
    """Where a ledger row is: its street, community, grid and building, ids and names."""

    street_id: str | None
    street: str | None
    community_id: str | None
    community: str | None
    grid_id: str | None
    grid: str | None
    building_id: str | None
    building: str | None


class TaskLedgerRow(LedgerPlace):
    id: str
    type: str
    type_name: str
    severity: str
    state: str
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


def ledger_values(row: Mapping[str, Any], zone: ZoneInfo | None = None) -> list[Any]:
    """A ledger row's cells, in column order, as the bureau reads them (Chinese names)."""
    out = dict(row)
    out["type"] = TYPE_NAMES.get(row["type"], row["type"])
    out["severity"] = SEVERITY_NAMES.get(row["severity"], row["severity"])
    out["state"] = STATE_NAMES.get(row["state"], row["state"])
    out["resolution"] = RESOLUTION_NAMES.get(row["resolution"], row["resolution"])
    out["device"] = row["device_id"]
    return [out[c.key] for c in TASK_LEDGER]


def json_row(row: Mapping[str, Any], zone: ZoneInfo | None = None) -> dict[str, Any]:
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


UNIT_COLUMNS = {"street": "st.id", "community": "c.id", "grid": "t.grid_id"}


def ledger_conditions(t0: datetime, t1: datetime, scope: tuple[str, list[Any]],
                      units: Sequence[tuple[str, str]] = ()) -> tuple[list[str], list[Any]]:
    """WHERE conditions on `t` (the task), `st`, `c` (its street and community) that every ledger shares, with their
    arguments: opened in [t0, t1), the scope's condition (`Principal.grid_filter`), and the (street | community |
    grid, id) filters."""
    where: list[str] = ["t.opened_at >= %s", "t.opened_at < %s", scope[0]]
    args: list[Any] = [t0, t1, *scope[1]]
    for kind, value in units:
        where.append(f"{UNIT_COLUMNS[kind]} = %s")
        args.append(value)
    return where, args


async def ledger_where(conn: ConnDep, user: Principal, zone: ZoneInfo, start: str, end: str, street: str | None,
                       community: str | None, grid: str | None) -> tuple[datetime, datetime, list[str], list[Any]]:
    """A request's range, scope and filters: ([start, end), `ledger_conditions`, their arguments). 422 for a bad
    range, 403 / 404 for a bad filter."""
    t0, t1 = ledger_range(start, end, zone)
    units = [(kind, value) for kind, value in (("street", street), ("community", community), ("grid", grid))
             if value is not None]
    for kind, value in units:
        await check_unit(conn, user, kind, value)
    where, args = ledger_conditions(t0, t1, user.grid_filter("t.grid_id"), units)
    return t0, t1, where, args


@dataclass(frozen=True)
class Ledger:
    """One ledger: its query (`select`: SELECT ... FROM tasks t ... with `st`, `c` joined, no WHERE; `where`: its own
    conditions), its columns, its XLSX sheet and file name prefix, and a row as JSON and as cells."""

    prefix: str
    sheet: str
    columns: tuple[Column, ...]
    select: str
    where: tuple[str, ...]
    to_json: Callable[[Mapping[str, Any], ZoneInfo], dict[str, Any]]
    to_cells: Callable[[Mapping[str, Any], ZoneInfo], list[Any]]

    def query(self, where: Sequence[str], args: Sequence[Any]) -> tuple[str, list[Any]]:
        return (f"{self.select} WHERE {' AND '.join([*self.where, *where])} ORDER BY t.opened_at, t.id",
                list(args))


async def ledger_batches(conn: Any, ledger: Ledger, where: Sequence[str],
                         args: Sequence[Any]) -> AsyncIterator[list[dict[str, Any]]]:
    """The ledger's rows under `where` (`ledger_conditions`), oldest first, in batches of `BATCH`: a server-side
    cursor in a transaction, so that a year's ledger is never held whole. `conn`: an async psycopg connection."""
    sql, params = ledger.query(where, args)
    async with conn.transaction(), conn.cursor(name=f"{ledger.prefix}_ledger", row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        while batch := await cur.fetchmany(BATCH):
            yield batch


def file_name(prefix: str, t0: datetime, t1: datetime, zone: ZoneInfo, fmt: str) -> str:
    return f"{prefix}-{stamp(t0, zone)}-{stamp(t1, zone)}.{fmt}"


def file_response(body: IO[bytes], name: str, fmt: str) -> StreamingResponse:
    """A CSV / XLSX file as an attachment called `name`."""
    media = CSV_MEDIA_TYPE if fmt == "csv" else XLSX_MEDIA_TYPE
    return StreamingResponse(chunks(body), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store"})


async def table_file(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, fmt: str, zone: ZoneInfo,
                     sheet: str, name: str) -> StreamingResponse:
    """A small table already in memory (a statistics table) as a CSV / XLSX attachment, written as the ledgers are."""
    writer: CsvLedger | XlsxLedger = (CsvLedger(columns, zone) if fmt == "csv"
                                      else await run_in_threadpool(XlsxLedger, columns, zone, sheet))
    await run_in_threadpool(writer.add, rows)
    return file_response(await run_in_threadpool(writer.finish), name, fmt)


async def ledger_answer(conn: ConnDep, ledger: Ledger, where: Sequence[str], args: Sequence[Any], *, fmt: str,
                        zone: ZoneInfo, t0: datetime, t1: datetime) -> dict[str, Any] | StreamingResponse:
    """Run the ledger's query and answer it as JSON or as a CSV / XLSX attachment `<prefix>-<start>-<end>.<fmt>`."""
    writer: CsvLedger | XlsxLedger | None = None
    if fmt == "csv":
        writer = CsvLedger(ledger.columns, zone)
    elif fmt == "xlsx":
        writer = await run_in_threadpool(XlsxLedger, ledger.columns, zone, ledger.sheet)
    items: list[dict[str, Any]] = []
    async for batch in ledger_batches(conn, ledger, where, args):
        if writer is None:
            items += [ledger.to_json(r, zone) for r in batch]
        else:
            values: Sequence[Sequence[Any]] = [ledger.to_cells(r, zone) for r in batch]
            await run_in_threadpool(writer.add, values)
    if writer is None:
        return {"items": items, "start": shape_time(t0), "end": shape_time(t1)}
    body: IO[bytes] = await run_in_threadpool(writer.finish)
    return file_response(body, file_name(ledger.prefix, t0, t1, zone, fmt), fmt)


TASKS = Ledger("tasks", SHEET, TASK_LEDGER, LEDGER_SQL, (), json_row, ledger_values)

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
    return await ledger_answer(conn, TASKS, where, args, fmt=format, zone=zone, t0=t0, t1=t1)


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
HAZARD_SQL = f"""
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
{PLACE_JOINS}
LEFT JOIN devices d ON d.id = t.device_id
LEFT JOIN workers rw ON rw.id = t.reported_by
LEFT JOIN LATERAL (SELECT r.id, r.state, r.resolution FROM tasks r
                   WHERE r.source_task_id = t.id AND r.type = 'recheck'
                   ORDER BY r.opened_at DESC, r.id DESC LIMIT 1) rc ON true
"""


class HazardLedgerRow(LedgerPlace):
    id: str
    category: str | None
    category_name: str | None
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


def hazard_values(row: Mapping[str, Any], zone: ZoneInfo | None = None) -> list[Any]:
    out = dict(row)
    out["category"] = CATEGORIES.get(row["category"], row["category"]) if row["category"] else None
    out["state"] = STATE_NAMES.get(row["state"], row["state"])
    out["resolution"] = RESOLUTION_NAMES.get(row["resolution"], row["resolution"])
    out["referrals"] = DEPARTMENT_SEPARATOR.join(row["referrals"]) or None
    out["recheck"] = recheck_text(row)
    return [out[c.key] for c in HAZARD_LEDGER]


def hazard_json(row: Mapping[str, Any], zone: ZoneInfo | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in HAZARD_LEDGER:
        if c.key == "recheck":
            continue
        out[c.key] = shape_time(row[c.key]) if c.key in HAZARD_TIME_KEYS else row[c.key]
    out["referrals"] = list(row["referrals"])
    out["category_name"] = CATEGORIES.get(row["category"], row["category"]) if row["category"] else None
    out.update({k: row[k] for k in HAZARD_JSON_IDS})
    return out


HAZARDS = Ledger("hazards", HAZARD_SHEET, HAZARD_LEDGER, HAZARD_SQL, ("t.type = 'hazard'",), hazard_json,
                 hazard_values)


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
    return await ledger_answer(conn, HAZARDS, where, args, fmt=format, zone=zone, t0=t0, t1=t1)


# --- the patrol ledger (安全巡查台账): patrol tasks with their plan period and results (alerts/patrols.py) ---

PATROL_SHEET = "巡查台账"
KIND_NAMES = {"plan": "计划巡查", "alert": "告警触发巡查"}
# 完成情况: done by the end of the period, done after it, not done and past it, not done and not yet due
PATROL_STATUS_NAMES = {"done_on_time": "按期完成", "done_late": "逾期完成", "overdue": "已逾期", "pending": "待巡查"}
FINDING_SEPARATOR = "；"

PATROL_LEDGER = (
    Column("巡查编号", "id", 22), Column("巡查时间", "done_at", 20), Column("街道", "street", 12),
    Column("社区", "community", 12), Column("网格", "grid", 10), Column("单位", "unit", 18),
    Column("单位类别", "class", 11), Column("楼栋", "building", 12), Column("巡查类型", "kind", 10),
    Column("频次", "frequency", 8), Column("周期开始", "period_first_day", 12),
    Column("周期结束", "period_last_day", 12), Column("计划日期", "planned_for", 12),
    Column("检查项数", "items_checked", 9), Column("发现问题", "findings", 36), Column("隐患数", "hazards", 8),
    Column("隐患任务", "hazard_tasks", 24), Column("照片数", "photos", 8), Column("巡查人", "done_by", 10),
    Column("负责人", "assignee", 10), Column("是否按期", "on_time", 9), Column("完成情况", "status", 10),
    Column("状态", "state", 9), Column("备注", "note", 24),
)
PATROL_JSON_IDS = ("unit_id", "street_id", "community_id", "grid_id", "building_id", "assignee_id", "done_by_id")

# items checked: answered ok or hazard (n/a is not a check); findings: the hazard items in checklist order, labelled
# by the result or else by the checklist; photos: the photos taken on the patrol task (POST /tasks/{id}/photos)
PATROL_SQL = f"""
SELECT t.id, p.unit_id, u.name AS unit, p.class, p.kind, p.frequency, p.period_start, p.period_end, p.planned_for,
       st.id AS street_id, st.name AS street, c.id AS community_id, c.name AS community, t.grid_id, g.name AS grid,
       t.building_id, b.name AS building, t.assignee AS assignee_id, w.name AS assignee, t.state, p.done_at,
       p.done_by AS done_by_id, COALESCE(dw.name, p.done_by) AS done_by, p.note, p.hazards,
       jsonb_array_length(p.checklist) AS items_total, r.items_checked, r.findings,
       (SELECT count(*) FROM evidence e WHERE e.task_id = t.id AND e.kind = 'photo')::int AS photos,
       ARRAY(SELECT h.id FROM tasks h WHERE h.source_task_id = t.id AND h.type = 'hazard'
             ORDER BY h.opened_at, h.id) AS hazard_tasks,
       p.done_at IS NULL AND p.period_end <= now() AS overdue
FROM tasks t
JOIN patrols p ON p.task_id = t.id
LEFT JOIN units u ON u.id = p.unit_id
{PLACE_JOINS}
LEFT JOIN workers w ON w.id = t.assignee
LEFT JOIN workers dw ON dw.id = p.done_by
LEFT JOIN LATERAL (
    SELECT (count(*) FILTER (WHERE x.item->>'result' IN ('ok', 'hazard')))::int AS items_checked,
           COALESCE(jsonb_agg(jsonb_build_object(
               'id', x.item->>'id',
               'label', COALESCE(x.item->>'label', (SELECT k->>'label' FROM jsonb_array_elements(p.checklist) k
                                                    WHERE k->>'id' = x.item->>'id' LIMIT 1)),
               'note', x.item->>'note') ORDER BY x.n) FILTER (WHERE x.item->>'result' = 'hazard'),
                    '[]'::jsonb) AS findings
    FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p.results) = 'array' THEN p.results ELSE '[]'::jsonb END)
         WITH ORDINALITY AS x(item, n)
) r ON true
"""


class PatrolFinding(BaseModel):
    id: str | None
    label: str | None
    note: str | None


class PatrolLedgerRow(LedgerPlace):
    id: str
    unit_id: str
    unit: str | None
    class_: str = Field(alias="class", description="key, general, shop or major_hazard")
    class_name: str
    kind: str
    frequency: str
    period_start: str
    period_end: str
    planned_for: str
    assignee_id: str | None
    assignee: str | None
    done_at: str | None
    done_by_id: str | None
    done_by: str | None
    items_total: int
    items_checked: int | None
    findings: list[PatrolFinding]
    hazards: int
    hazard_tasks: list[str]
    photos: int
    note: str | None
    state: str
    on_time: bool | None
    overdue: bool
    status: Literal["done_on_time", "done_late", "overdue", "pending"]


class PatrolLedger(BaseModel):
    items: list[PatrolLedgerRow]
    start: str
    end: str


PATROL_RESPONSES: dict[int | str, dict[str, Any]] = {200: {**RESPONSES[200], "model": PatrolLedger}}


def last_day(end: datetime, zone: ZoneInfo) -> date:
    """The last day a period ending (exclusive) at `end` covers, in the district's zone: 00:00 1 Dec → 30 Nov."""
    return (end.astimezone(zone) - timedelta(microseconds=1)).date()


def patrol_status(row: Mapping[str, Any]) -> str:
    if row["done_at"] is not None:
        return "done_on_time" if row["done_at"] <= row["period_end"] else "done_late"
    return "overdue" if row["overdue"] else "pending"


def patrol_on_time(status_code: str) -> bool | None:
    """是否按期: done by the end of the period; false when done late or not done past it; null until then."""
    return None if status_code == "pending" else status_code == "done_on_time"


def patrol_values(row: Mapping[str, Any], zone: ZoneInfo) -> list[Any]:
    code = patrol_status(row)
    done = row["done_at"] is not None
    out = dict(row)
    out["class"] = UNIT_CLASSES.get(row["class"], row["class"])
    out["kind"] = KIND_NAMES.get(row["kind"], row["kind"])
    out["frequency"] = FREQUENCY_NAMES.get(row["frequency"], row["frequency"])
    out["period_first_day"] = row["period_start"].astimezone(zone).date()
    out["period_last_day"] = last_day(row["period_end"], zone)
    out["items_checked"] = row["items_checked"] if done else None
    out["findings"] = FINDING_SEPARATOR.join(
        f"{f['label'] or f['id']}：{f['note']}" if f.get("note") else str(f["label"] or f["id"])
        for f in row["findings"]) or None
    out["hazard_tasks"] = DEPARTMENT_SEPARATOR.join(row["hazard_tasks"]) or None
    out["on_time"] = patrol_on_time(code)
    out["status"] = PATROL_STATUS_NAMES[code]
    out["state"] = STATE_NAMES.get(row["state"], row["state"])
    return [out[c.key] for c in PATROL_LEDGER]


def patrol_json(row: Mapping[str, Any], zone: ZoneInfo | None = None) -> dict[str, Any]:
    code = patrol_status(row)
    out = {k: row[k] for k in ("id", "unit", "kind", "frequency", "street", "community", "grid", "building",
                               "assignee", "done_by", "items_total", "hazards", "photos", "note", "state",
                               "overdue", *PATROL_JSON_IDS)}
    out.update({
        "class": row["class"], "class_name": UNIT_CLASSES.get(row["class"], row["class"]),
        "period_start": shape_time(row["period_start"]), "period_end": shape_time(row["period_end"]),
        "planned_for": row["planned_for"].isoformat(), "done_at": shape_time(row["done_at"]),
        "items_checked": row["items_checked"] if row["done_at"] is not None else None,
        "findings": list(row["findings"]), "hazard_tasks": list(row["hazard_tasks"]),
        "on_time": patrol_on_time(code), "status": code,
    })
    return out


PATROLS = Ledger("patrols", PATROL_SHEET, PATROL_LEDGER, PATROL_SQL, (), patrol_json, patrol_values)


@router.get("/ledgers/patrols", response_model=None, responses=PATROL_RESPONSES)
async def patrol_ledger(
    conn: ConnDep, user: CurrentUser, settings: SettingsDep, start: TimeParam, end: TimeParam,
    street: UnitParam = None, community: UnitParam = None, grid: UnitParam = None, format: FormatParam = "json",
) -> dict[str, Any] | StreamingResponse:
    """The patrol ledger (安全巡查台账): patrol tasks opened in [start, end) in your scope, oldest first, with the unit,
    its class, the plan period and planned day, the items checked, the findings (hazard items) and the hazard tasks
    they opened, the photos, who did it and when, and whether on time. Every role: a grid worker gets the patrols of
    their own grids. The range, filters and formats of the task ledger; XLSX sheet 巡查台账."""
    zone = settings.tz
    t0, t1, where, args = await ledger_where(conn, user, zone, start, end, street, community, grid)
    return await ledger_answer(conn, PATROLS, where, args, fmt=format, zone=zone, t0=t0, t1=t1)
