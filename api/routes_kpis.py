"""GET /api/v1/kpis/patrols: the patrol plan's execution statistics (年度安全巡查计划执行情况统计表, CONTRACT §7) per
grid, community or street, for a year or one month of it, as JSON, CSV or XLSX.

Counts, each over the grids of a row:
- planned: `plan` patrols (not the extra ones an alert opens) whose period starts in the range, and has started;
- done: of those, done (`patrols.done_at`); done_on_time: done by the end of the period; overdue: not done and the
  period is over (a patrol done late counts as done, not on time);
- hazards_found: `hazard` tasks opened in the range, whatever found them (a patrol, a report, a facility's expiry),
  drills and dismissed reports (不予立案) left out; hazards_rectified: those of them resolved fixed or referred_119.

A row for every grid / community / street wholly in the caller's scope (a grid worker: their grids), with zeros
where nothing happened. `patrol_kpis` computes the table for the API and for `gridhub report monthly` alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gridhub.alerts.shapes import shape_time
from gridhub.api.deps import ConnDep, CurrentUser, SettingsDep
from gridhub.api.ledger_formats import XLSX_MEDIA_TYPE, Column
from gridhub.api.routes_ledgers import check_unit, table_file

router = APIRouter(tags=["kpis"])

Level = Literal["grid", "community", "street"]
LEVELS: tuple[Level, ...] = ("grid", "community", "street")
COUNTS = ("planned", "done", "done_on_time", "overdue", "hazards_found", "hazards_rectified")
LEVEL_NAMES = {"grid": "网格", "community": "社区", "street": "街道"}
KPI_SHEET = "巡查计划执行情况"
TOTAL_NAME = "合计"

# the rows of a level, each with its grids; `g`, `c`, `st` as far as the level has them (for the filters)
LEVEL_SQL = {
    "grid": "SELECT g.id, g.name, ARRAY[g.id] AS grids FROM grids g"
            " JOIN communities c ON c.id = g.community_id JOIN streets st ON st.id = c.street_id",
    "community": "SELECT c.id, c.name, ARRAY(SELECT g.id FROM grids g WHERE g.community_id = c.id) AS grids"
                 " FROM communities c JOIN streets st ON st.id = c.street_id",
    "street": "SELECT st.id, st.name, ARRAY(SELECT g.id FROM communities c JOIN grids g ON g.community_id = c.id"
              " WHERE c.street_id = st.id) AS grids FROM streets st",
}
FILTER_COLUMNS = {"street": "st.id", "community": "c.id", "grid": "g.id"}

PATROL_COUNTS_SQL = """
SELECT t.grid_id, count(*) AS planned, count(p.done_at) AS done,
       count(*) FILTER (WHERE p.done_at <= p.period_end) AS done_on_time,
       count(*) FILTER (WHERE p.done_at IS NULL AND p.period_end <= %(now)s) AS overdue
FROM patrols p JOIN tasks t ON t.id = p.task_id
WHERE p.kind = 'plan' AND p.period_start >= %(t0)s AND p.period_start < %(t1)s AND p.period_start <= %(now)s
  AND NOT t.drill AND t.grid_id = ANY(%(grids)s)
GROUP BY t.grid_id
"""
# a dismissed report is closed without ever being resolved (close is only from resolved: alerts/tasks.py)
HAZARD_COUNTS_SQL = """
SELECT t.grid_id, count(*) AS hazards_found,
       count(*) FILTER (WHERE t.resolution IN ('fixed', 'referred_119')) AS hazards_rectified
FROM tasks t
WHERE t.type = 'hazard' AND t.opened_at >= %(t0)s AND t.opened_at < %(t1)s AND NOT t.drill
  AND NOT (t.state = 'closed' AND t.resolved_at IS NULL) AND t.grid_id = ANY(%(grids)s)
GROUP BY t.grid_id
"""


class KpiCounts(BaseModel):
    planned: int
    done: int
    done_on_time: int
    overdue: int
    hazards_found: int
    hazards_rectified: int


class KpiRow(KpiCounts):
    id: str
    name: str


class PatrolKpis(BaseModel):
    level: Level
    year: int
    month: int | None
    start: str
    end: str
    rows: list[KpiRow]
    total: KpiCounts


@dataclass
class KpiTable:
    level: Level
    t0: datetime
    t1: datetime
    rows: list[dict[str, Any]] = field(default_factory=list)
    total: dict[str, int] = field(default_factory=dict)


def period(year: int, month: int | None, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a year, or of one month of it, from 00:00 in the district's zone."""
    if month is None:
        return datetime(year, 1, 1, tzinfo=zone), datetime(year + 1, 1, 1, tzinfo=zone)
    return datetime(year, month, 1, tzinfo=zone), datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)


async def patrol_kpis(conn: Any, *, level: Level, t0: datetime, t1: datetime, now: datetime,
                      scope: frozenset[str] | None, units: Sequence[tuple[str, str]] = ()) -> KpiTable:
    """The statistics table over [t0, t1): a row per `level` unit wholly in `scope` (grid ids; None: everything)
    and inside the `units` filters ((street | community | grid, id), each no finer than the level), ordered by
    id; zeros where nothing happened. `conn`: an async psycopg connection with dict rows."""
    where, args = [], []
    for kind, value in units:
        where.append(f"{FILTER_COLUMNS[kind]} = %s")
        args.append(value)
    sql = LEVEL_SQL[level] + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
    units_rows = await (await conn.execute(sql, args)).fetchall()
    if scope is not None:
        units_rows = [u for u in units_rows if u["grids"] and set(u["grids"]) <= scope]
    grids = sorted({g for u in units_rows for g in u["grids"]})
    per_grid: dict[str, dict[str, int]] = {g: dict.fromkeys(COUNTS, 0) for g in grids}
    params = {"t0": t0, "t1": t1, "now": now, "grids": grids}
    for counts_sql in (PATROL_COUNTS_SQL, HAZARD_COUNTS_SQL):
        for r in await (await conn.execute(counts_sql, params)).fetchall():
            per_grid[r["grid_id"]].update({k: int(v) for k, v in r.items() if k != "grid_id"})
    table = KpiTable(level, t0, t1, total=dict.fromkeys(COUNTS, 0))
    for u in units_rows:
        row: dict[str, Any] = {"id": u["id"], "name": u["name"]}
        for k in COUNTS:
            row[k] = sum(per_grid[g][k] for g in u["grids"])
            table.total[k] += row[k]
        table.rows.append(row)
    return table


def kpi_columns(level: Level) -> tuple[Column, ...]:
    """The statistics table's columns (CSV, XLSX, the monthly report's sheet)."""
    name = LEVEL_NAMES[level]
    return (Column(f"{name}编号", "id", 14), Column(name, "name", 14), Column("计划巡查数", "planned", 11),
            Column("已完成", "done", 9), Column("按期完成", "done_on_time", 10), Column("逾期未完成", "overdue", 11),
            Column("发现隐患", "hazards_found", 10), Column("已整改", "hazards_rectified", 9))


def kpi_cells(table: KpiTable) -> list[list[Any]]:
    """The table's rows as cells, and a last row 合计."""
    keys = [c.key for c in kpi_columns(table.level)]
    rows: list[Mapping[str, Any]] = [*table.rows, {"id": TOTAL_NAME, "name": None, **table.total}]
    return [[r[k] for k in keys] for r in rows]


RESPONSES: dict[int | str, dict[str, Any]] = {200: {
    "model": PatrolKpis,
    "description": "the table: JSON, or a CSV / XLSX attachment (`format`) with a last row 合计",
    "content": {"text/csv": {"schema": {"type": "string"}},
                XLSX_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}}
UnitParam = Annotated[str | None, Query(max_length=64)]


@router.get("/kpis/patrols", response_model=None, responses=RESPONSES)
async def patrol_kpi_table(
    conn: ConnDep, user: CurrentUser, settings: SettingsDep,
    level: Annotated[Level, Query(description="a row per grid (default), community or street")] = "grid",
    year: Annotated[int | None, Query(ge=1901, le=8999, description="default: this year (district time)")] = None,
    month: Annotated[int | None, Query(ge=1, le=12, description="one month of the year; default: the whole year")]
    = None,
    street: UnitParam = None, community: UnitParam = None, grid: UnitParam = None,
    format: Annotated[Literal["json", "csv", "xlsx"], Query(description="json (default), csv or xlsx")] = "json",
) -> dict[str, Any] | StreamingResponse:
    """The patrol plan's execution statistics (年度安全巡查计划执行情况统计表): per grid, community or street in
    your scope (a grid worker: their own grids), planned, done, done on time and overdue plan patrols whose period
    starts in the year (or month), and hazards found (any source; drills and dismissed reports left out) and
    rectified (resolved fixed or referred_119) among those opened in it; `total` sums the rows. `street`,
    `community`, `grid` narrow the rows (each no finer than `level`; 403 outside your scope, 404 unknown)."""
    zone = settings.tz
    now = datetime.now(UTC)
    if year is None:
        year = now.astimezone(zone).year
    units = [(kind, value) for kind, value in (("street", street), ("community", community), ("grid", grid))
             if value is not None]
    for kind, value in units:
        if LEVELS.index(kind) < LEVELS.index(level):  # type: ignore[arg-type]
            raise HTTPException(422, f"{kind}: a {kind} filter needs level={kind} or finer, not level={level}")
        await check_unit(conn, user, kind, value)
    t0, t1 = period(year, month, zone)
    table = await patrol_kpis(conn, level=level, t0=t0, t1=t1, now=now, units=units,
                              scope=None if user.all_grids else user.grids)
    if not table.rows and level != "grid" and not user.all_grids and user.grids:
        # a grid head asking for communities: a 403 that says why, not an empty (or silently partial) table
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"no {level} lies wholly in your scope: ask level=grid for the grids you have")
    if format != "json":
        stamp = f"{year}" if month is None else f"{year}{month:02d}"
        return await table_file(kpi_columns(level), kpi_cells(table), fmt=format, zone=zone, sheet=KPI_SHEET,
                                name=f"kpi-patrols-{level}-{stamp}.{format}")
    return {"level": level, "year": year, "month": month, "start": shape_time(t0), "end": shape_time(t1),
            "rows": table.rows, "total": table.total}
