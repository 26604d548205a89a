"""`gridhub report monthly --street xiagang --month 2026-11 --out report.xlsx`: a street's month in one workbook, as
the bureau files it (CONTRACT §7).

Sheets, Chinese names and headers, times in the district's zone (GRIDHUB_TIMEZONE): 巡查计划执行情况 (the patrol plan's
statistics per grid of the street, and 合计), then 巡查台账, 隐患台账 and 任务台账 (the patrol, hazard and task ledgers
of tasks opened in the month). The figures are the API's own: the sheets are written from the same queries and
cells as GET /api/v1/kpis/patrols and /api/v1/ledgers/* (api/routes_kpis.py, api/routes_ledgers.py), read in one
snapshot (a repeatable-read transaction), so that the statistics and the ledgers agree with each other.

The workbook is written to a temporary file beside `--out` and renamed over it at the end: a reader never sees half
a workbook, and a failed run leaves any earlier report as it was. A progress bar on stderr (rich) while the ledgers
are read, when stderr is a terminal."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

__all__ = ["ReportError", "ReportResult", "parse_month", "run", "write_report"]

MONTH_RE = re.compile(r"(\d{4})-(\d{2})")


class ReportError(Exception):
    """A report that cannot be made as asked (unknown street, bad month, no such directory): the message says why;
    the command exits 2."""


@dataclass
class ReportResult:
    path: Path
    street: str
    street_name: str
    rows: dict[str, int] = field(default_factory=dict)  # sheet name → data rows


class Progress(Protocol):
    def start(self, sheet: str, total: int) -> None: ...

    def advance(self, rows: int) -> None: ...


class NoProgress:
    def start(self, sheet: str, total: int) -> None:
        pass

    def advance(self, rows: int) -> None:
        pass


def parse_month(text: str) -> tuple[int, int]:
    """`YYYY-MM` → (year, month); ReportError saying what is wrong otherwise."""
    m = MONTH_RE.fullmatch(text.strip())
    if m is None:
        raise ReportError(f"--month: {text!r} is not a month: write it YYYY-MM, e.g. 2026-11")
    year, month = int(m[1]), int(m[2])
    if not 1 <= month <= 12:
        raise ReportError(f"--month: {text!r}: the month must be 01 to 12")
    if not 1900 < year < 9000:
        raise ReportError(f"--month: {text!r}: the year must be 1901 to 8999")
    return year, month


def check_out(out: Path) -> Path:
    """The workbook's path: an .xlsx name in a directory that exists (the report makes no directories)."""
    if out.is_dir():
        raise ReportError(f"--out: {out} is a directory; name the workbook, e.g. {out / 'report.xlsx'}")
    if out.suffix.lower() != ".xlsx":
        raise ReportError(f"--out: {out} must name an .xlsx file (Excel opens a workbook by its extension)")
    parent = out.parent  # "." for a bare name
    if not parent.is_dir():
        raise ReportError(f"--out: the directory {parent} does not exist; create it first")
    return out


async def write_report(conn: Any, *, street: str, year: int, month: int, out: Path, zone: ZoneInfo,
                       now: datetime | None = None, progress: Progress | None = None) -> ReportResult:
    """Write the street's month to `out` (atomically). `conn`: an async psycopg connection (autocommit, dict rows),
    read in one repeatable-read snapshot. ReportError for an unknown street."""
    from psycopg import IsolationLevel

    from gridhub.api.ledger_formats import XlsxBook
    from gridhub.api.routes_kpis import KPI_SHEET, kpi_cells, kpi_columns, patrol_kpis, period
    from gridhub.api.routes_ledgers import HAZARDS, PATROLS, TASKS, ledger_batches, ledger_conditions

    progress = progress or NoProgress()
    now = now or datetime.now(UTC)
    check_out(out)
    row = await (await conn.execute("SELECT name FROM streets WHERE id = %s", (street,))).fetchone()
    if row is None:
        known = [r["id"] for r in await (await conn.execute("SELECT id FROM streets ORDER BY id")).fetchall()]
        raise ReportError(f"--street: no street {street!r} in the registry; streets: {', '.join(known) or 'none'}")
    result = ReportResult(out, street, row["name"])
    t0, t1 = period(year, month, zone)
    book = XlsxBook(zone)
    book.title(f"{row['name']} {year}年{month}月 安全巡查月报")
    units = [("street", street)]
    await conn.set_isolation_level(IsolationLevel.REPEATABLE_READ)
    async with conn.transaction():
        table = await patrol_kpis(conn, level="grid", t0=t0, t1=t1, now=now, scope=None, units=units)
        book.sheet(kpi_columns("grid"), KPI_SHEET).add(kpi_cells(table))
        result.rows[KPI_SHEET] = len(table.rows)
        where, args = ledger_conditions(t0, t1, ("TRUE", []), units)
        for ledger in (PATROLS, HAZARDS, TASKS):
            sql, params = ledger.query(where, args)
            count = await (await conn.execute(f"SELECT count(*) AS n FROM ({sql}) q", params)).fetchone()
            progress.start(ledger.sheet, int(count["n"]))
            sheet = book.sheet(ledger.columns, ledger.sheet)
            result.rows[ledger.sheet] = 0
            async for batch in ledger_batches(conn, ledger, where, args):
                sheet.add([ledger.to_cells(r, zone) for r in batch])
                result.rows[ledger.sheet] += len(batch)
                progress.advance(len(batch))
    with atomic_file(out) as f:
        book.save(f)
    return result


@contextmanager
def atomic_file(path: Path) -> Iterator[Any]:
    """A file opened for writing beside `path` (same directory, so the rename stays on one file system), flushed
    to disk and renamed over `path` when the block ends; removed if the block fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def bar(enabled: bool) -> Iterator[Progress]:
    """A progress bar per sheet on stderr (rich), when stderr is a terminal; nothing otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield NoProgress()
        return
    with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as rich_progress:

        class Bar:
            task: Any = None

            def start(self, sheet: str, total: int) -> None:
                if self.task is not None:
                    rich_progress.update(self.task, visible=False)
                self.task = rich_progress.add_task(sheet, total=total)

            def advance(self, rows: int) -> None:
                rich_progress.advance(self.task, rows)

        yield Bar()


def run(url: str, *, street: str, month: str, out: Path, zone: ZoneInfo, show_progress: bool = True) -> ReportResult:
    """The command: checks the month and the path before touching the database, then writes the workbook."""
    import psycopg
    from psycopg.rows import dict_row

    from gridhub.db import DatabaseUnavailable, redact

    year, mon = parse_month(month)
    check_out(out)

    async def main() -> ReportResult:
        try:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
        async with conn:
            with bar(show_progress) as progress:
                return await write_report(conn, street=street, year=year, month=mon, out=out, zone=zone,
                                          progress=progress)

    return asyncio.run(main())


def summary(result: ReportResult) -> str:
    sheets = ", ".join(f"{name} {n}" for name, n in result.rows.items())
    return f"wrote {result.path} ({result.street_name}): {sheets} rows"
