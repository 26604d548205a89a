# ruff: noqa: F811
"""`gridhub report monthly` (gridhub/report_monthly.py): a street's November 2022 as the command writes it, in a
subprocess as an operator runs it: the sheets and their Chinese names and headers, the same rows and figures as the
API's ledgers and statistics for that month, months cut at midnight in the district's zone, clear errors (exit 2)
and a workbook that is replaced whole or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from apitools import api, as_, client, make_incident, tokens  # noqa: F401
from test_api_ledgers_patrols import insert_hazard, insert_patrol

from gridhub.api.routes_kpis import kpi_columns
from gridhub.api.routes_ledgers import HAZARD_LEDGER, PATROL_LEDGER, TASK_LEDGER

# the module's work is in November 2022 (and around it), which no other test uses
MONTH = {"start": "2022-11-01T00:00:00+08:00", "end": "2022-12-01T00:00:00+08:00", "street": "xiagang"}
SHEETS = ["巡查计划执行情况", "巡查台账", "隐患台账", "任务台账"]


@pytest.fixture(scope="module")
def november(db_url: str) -> dict[str, str]:
    """u-201's monthly patrol done with a hazard item (its hazard task fixed), u-002's patrol of the month never
    done, u-001's quarter that started in October (not November's); a fire alarm at 23:30 on 30 November (district
    time) and one at 00:30 on 1 December (still 30 November in UTC)."""
    ids: dict[str, str] = {}
    with psycopg.connect(db_url) as conn:
        ids["done"] = insert_patrol(
            conn, "u-201", "2022-11-01T00:00:00+08:00", "2022-12-01T00:00:00+08:00", assignee="w-003",
            frequency="monthly", planned_for="2022-11-18", done_at="2022-11-20T10:30:00+08:00", done_by="w-003",
            results=[{"id": "escape_route", "result": "ok"}, {"id": "ebike", "result": "ok"},
                     {"id": "gas", "result": "hazard", "note": "阀门漏气", "photos": []}], photos=1)
        ids["hazard"] = insert_hazard(conn, "g-xg-02", "b-20", "2022-11-20T10:30:00+08:00", patrol=ids["done"],
                                      resolution="fixed")
        ids["overdue"] = insert_patrol(conn, "u-002", "2022-11-01T00:00:00+08:00", "2022-12-01T00:00:00+08:00",
                                       assignee="w-001", frequency="monthly")
        ids["october"] = insert_patrol(conn, "u-001", "2022-10-01T00:00:00+08:00", "2023-01-01T00:00:00+08:00",
                                       assignee="w-001", frequency="quarterly")
        conn.commit()
    _, ids["late_night"] = make_incident(db_url, "sa-0001", "g-xg-01", "b-12", "w-001")
    _, ids["december"] = make_incident(db_url, "sa-0201", "g-xg-02", "b-20", "w-003")
    with psycopg.connect(db_url) as conn:
        for key, at in (("late_night", "2022-11-30T23:30:00+08:00"), ("december", "2022-12-01T00:30:00+08:00")):
            conn.execute("UPDATE tasks SET opened_at = %s, accept_due = %s::timestamptz + interval '2 minutes',"
                         " resolve_due = %s::timestamptz + interval '30 minutes' WHERE id = %s",
                         (at, at, at, ids[key]))
        conn.commit()
    return ids


def report(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRIDHUB_DATABASE_URL": db_url, "GRIDHUB_TIMEZONE": "Asia/Shanghai"}
    return subprocess.run([sys.executable, "-m", "gridhub.cli", "report", "monthly", *args], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def sheet_rows(path: Path) -> dict[str, list[list[Any]]]:
    import openpyxl

    wb = openpyxl.load_workbook(path)
    return {name: [[c.value for c in row] for row in wb[name].iter_rows()] for name in wb.sheetnames}


def test_one_workbook_with_the_apis_rows_and_figures(db_url: str, tmp_path: Path, client: httpx.Client,
                                                     tokens: dict[str, str], november: dict[str, str]) -> None:
    import openpyxl

    out = tmp_path / "厦港-2022-11.xlsx"
    done = report(db_url, "--street", "xiagang", "--month", "2022-11", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and "巡查台账 2" in done.stdout
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames == SHEETS
    assert wb.properties.title == "厦港街道 2022年11月 安全巡查月报"
    sheets = sheet_rows(out)
    for name, columns in zip(SHEETS, (kpi_columns("grid"), PATROL_LEDGER, HAZARD_LEDGER, TASK_LEDGER), strict=True):
        assert sheets[name][0] == [c.header for c in columns], name
        assert wb[name].freeze_panes == "A2"

    # every ledger sheet has the rows the API's ledger has for the street's month, in its order
    for name, path in (("巡查台账", "patrols"), ("隐患台账", "hazards"), ("任务台账", "tasks")):
        r = client.get(f"/api/v1/ledgers/{path}", params=MONTH, **as_(tokens, "s-001"))
        assert r.status_code == 200, r.text
        assert [row[0] for row in sheets[name][1:]] == [i["id"] for i in r.json()["items"]], name
    assert sorted(row[0] for row in sheets["巡查台账"][1:]) == sorted([november["done"], november["overdue"]])
    tasks = {row[0]: dict(zip(sheets["任务台账"][0], row, strict=True)) for row in sheets["任务台账"][1:]}
    assert november["late_night"] in tasks and november["december"] not in tasks  # months end at local midnight
    assert tasks[november["late_night"]]["立案时间"] == datetime(2022, 11, 30, 23, 30)  # district wall clock
    patrol = {row[0]: dict(zip(sheets["巡查台账"][0], row, strict=True)) for row in sheets["巡查台账"][1:]}
    assert patrol[november["done"]]["巡查时间"] == datetime(2022, 11, 20, 10, 30)
    assert patrol[november["done"]]["发现问题"] == "燃气管道和阀门无泄漏：阀门漏气"
    assert (patrol[november["done"]]["照片数"], patrol[november["done"]]["隐患任务"]) == (1, november["hazard"])
    assert patrol[november["overdue"]]["完成情况"] == "已逾期"

    # the statistics sheet is the API's table for the month (grids of the street), and a last row 合计
    kpi = client.get("/api/v1/kpis/patrols", params={"level": "grid", "year": 2022, "month": 11, "street": "xiagang"},
                     **as_(tokens, "s-001")).json()
    keys = [c.key for c in kpi_columns("grid")]
    assert sheets["巡查计划执行情况"][1:] == [[r[k] for k in keys] for r in kpi["rows"]] + [
        ["合计", None, *(kpi["total"][k] for k in keys[2:])]]
    assert kpi["total"] == {"planned": 2, "done": 1, "done_on_time": 1, "overdue": 1, "hazards_found": 1,
                            "hazards_rectified": 1}  # u-001's October quarter is not November's plan


def test_a_second_run_replaces_the_workbook_whole(db_url: str, tmp_path: Path, november: dict[str, str]) -> None:
    out = tmp_path / "report.xlsx"
    out.write_bytes(b"last month's report")
    assert report(db_url, "--street", "xiagang", "--month", "2022-11", "--out", str(out), "--quiet").returncode == 0
    assert sheet_rows(out)["巡查台账"][1:]  # the new workbook, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.xlsx"]  # no temporary file left behind


def test_clear_errors_and_nothing_written(db_url: str, tmp_path: Path) -> None:
    out = tmp_path / "report.xlsx"
    out.write_bytes(b"an earlier report")
    for args, words in (
        (("--street", "nowhere", "--month", "2022-11"), "no street 'nowhere'"),
        (("--street", "xiagang", "--month", "2022-13"), "the month must be 01 to 12"),
        (("--street", "xiagang", "--month", "11/2022"), "YYYY-MM"),
        (("--street", "xiagang", "--month", "0999-01"), "1901 to 8999"),
    ):
        r = report(db_url, *args, "--out", str(out))
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert out.read_bytes() == b"an earlier report"
    for target, words in ((tmp_path / "missing" / "report.xlsx", "does not exist"),
                          (tmp_path / "report.csv", ".xlsx"), (tmp_path, "is a directory")):
        r = report(db_url, "--street", "xiagang", "--month", "2022-11", "--out", str(target))
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (target, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.xlsx"]
    r = report(db_url, "--street", "xiagang", "--out", str(out))
    assert r.returncode == 2 and "--month" in r.stderr  # argparse: a required option
