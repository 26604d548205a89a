# ruff: noqa: F811
"""GET /api/v1/ledgers/tasks (任务台账, CONTRACT §7): scope, JSON, CSV (BOM, formula escaping), XLSX, errors."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
from apitools import api, as_, bearer, client, make_incident, tokens  # noqa: F401

from gridhub.api.routes_ledgers import TASK_LEDGER
from gridhub.settings import Settings

# the module's tasks are moved to one day of 2025, which no other test uses: the ledger of that day is exactly them
DAY = {"start": "2025-03-10T00:00:00+08:00", "end": "2025-03-11T00:00:00+08:00"}
EVIL_PLACE = "=cmd|' /C calc'!A0"
EVIL_NOTE = "+SUM(1+1)*cmd"
HEADERS = [c.header for c in TASK_LEDGER]


@pytest.fixture(scope="module")
def ledger_tasks(db_url: str) -> dict[str, str]:
    """A resolved fire alarm in g-xg-01 whose device place and resolve note are formulas, an open exit_blocked
    task in g-xg-02; both opened on DAY."""
    _, t1 = make_incident(db_url, "sa-0001", "g-xg-01", "b-12", "w-001")
    _, t2 = make_incident(db_url, "sa-0201", "g-xg-02", "b-20", "w-003", alert_type="exit_blocked", severity="high")
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE devices SET place = %s WHERE id = (SELECT device_id FROM tasks WHERE id = %s)",
                     (EVIL_PLACE, t1))
        conn.execute(
            "UPDATE tasks SET opened_at = '2025-03-10 09:30:00+08', accept_due = '2025-03-10 09:32:00+08',"
            " resolve_due = '2025-03-10 10:00:00+08', accepted_at = '2025-03-10 09:31:00+08',"
            " resolved_at = '2025-03-10 09:50:00+08', state = 'resolved', resolution = 'fixed' WHERE id = %s", (t1,))
        conn.execute("INSERT INTO task_history (task_id, at, actor, action, note)"
                     " VALUES (%s, '2025-03-10 09:50:00+08', 'w-001', 'resolve', %s)", (t1, EVIL_NOTE))
        conn.execute("UPDATE tasks SET opened_at = '2025-03-10 14:00:00+08', accept_due = '2025-03-10 14:02:00+08',"
                     " resolve_due = '2025-03-10 15:00:00+08' WHERE id = %s", (t2,))
        conn.commit()
    return {"g1": t1, "g2": t2}


def ledger(client: httpx.Client, tokens: dict[str, str], wid: str, **params: Any) -> httpx.Response:
    return client.get("/api/v1/ledgers/tasks", params={**DAY, **params}, **as_(tokens, wid))


def test_json_ledger_is_scoped(client: httpx.Client, tokens: dict[str, str], ledger_tasks: dict[str, str]) -> None:
    r = ledger(client, tokens, "w-002")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["id"] for i in body["items"]] == [ledger_tasks["g1"]]  # the grid head of g-xg-01 only
    assert body["start"].startswith("2025-03-10T00:00:00") and body["end"].startswith("2025-03-11T00:00:00")
    row = body["items"][0]
    assert row["opened_at"] == "2025-03-10T09:30:00.000+08:00"
    assert (row["type"], row["type_name"], row["grid_id"], row["grid"], row["street"], row["community"]) == (
        "fire_alarm", "火警", "g-xg-01", "一网格", "厦港街道", "沙坡尾社区")
    assert (row["assignee_id"], row["assignee"], row["on_time"], row["resolution"]) == ("w-001", "张三", True, "fixed")
    assert row["place"] == EVIL_PLACE and row["resolve_note"] == EVIL_NOTE  # JSON is data: nothing escaped
    for wid in ("s-001", "b-001", "a-001"):
        ids = [i["id"] for i in ledger(client, tokens, wid).json()["items"]]
        assert ids == [ledger_tasks["g1"], ledger_tasks["g2"]], wid  # oldest first
    g2 = ledger(client, tokens, "w-004").json()["items"]
    assert [i["id"] for i in g2] == [ledger_tasks["g2"]] and g2[0]["on_time"] is False  # open past its due


def test_ledger_rows_equal_the_task_list(client: httpx.Client, tokens: dict[str, str],
                                         ledger_tasks: dict[str, str]) -> None:
    h = bearer(tokens["b-001"])
    for grid in (None, "g-xg-01"):
        extra = {"grid": grid} if grid else {}
        listed = client.get("/api/v1/tasks", params={**DAY, **extra, "limit": 1000}, headers=h).json()["items"]
        rows = ledger(client, tokens, "b-001", **extra).json()["items"]
        assert sorted(t["id"] for t in listed) == sorted(t["id"] for t in rows)


def test_filters_and_scope(client: httpx.Client, tokens: dict[str, str], ledger_tasks: dict[str, str]) -> None:
    assert [i["id"] for i in ledger(client, tokens, "s-001", grid="g-xg-02").json()["items"]] == [ledger_tasks["g2"]]
    assert len(ledger(client, tokens, "s-001", street="xiagang", community="shapowei").json()["items"]) == 2
    assert ledger(client, tokens, "w-002", grid="g-xg-01").status_code == 200
    for wid, params in (("w-002", {"grid": "g-xg-02"}), ("w-002", {"community": "shapowei"}),
                        ("w-004", {"street": "xiagang"})):
        r = ledger(client, tokens, wid, **params)
        assert r.status_code == 403 and "outside your scope" in r.json()["detail"], (wid, params, r.text)
    for wid in ("w-001", "w-003"):  # grid workers keep no ledger
        assert ledger(client, tokens, wid).status_code == 403
        assert ledger(client, tokens, wid, format="csv").status_code == 403
    assert ledger(client, tokens, "b-001", grid="g-nowhere").status_code == 404
    assert ledger(client, tokens, "s-001", street="nowhere").status_code == 404


def test_csv_has_bom_chinese_headers_and_escaped_formulas(client: httpx.Client, tokens: dict[str, str],
                                                          ledger_tasks: dict[str, str]) -> None:
    import csv

    r = ledger(client, tokens, "s-001", format="csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="tasks-20250310-20250311.csv"'
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == HEADERS
    assert rows[0][:4] == ["任务编号", "类型", "紧急程度", "状态"]
    assert len(rows) == 3
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["任务编号"] == ledger_tasks["g1"]
    assert (first["类型"], first["紧急程度"], first["状态"], first["处置结果"]) == ("火警", "紧急", "已办结", "已处置")
    assert first["位置"] == "'" + EVIL_PLACE and first["办结说明"] == "'" + EVIL_NOTE
    assert (first["立案时间"], first["办结时间"], first["是否按期"], first["演练"]) == (
        "2025-03-10 09:30:00", "2025-03-10 09:50:00", "是", "否")
    assert (first["楼栋"], first["网格"], first["负责人"]) == ("12号楼", "一网格", "张三")
    second = dict(zip(rows[0], rows[2], strict=True))
    assert (second["状态"], second["是否按期"], second["办结时间"]) == ("待接单", "否", "")
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


def test_xlsx_opens_with_openpyxl(client: httpx.Client, tokens: dict[str, str], settings: Settings,
                                  ledger_tasks: dict[str, str]) -> None:
    import openpyxl

    r = ledger(client, tokens, "b-001", format="xlsx")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert r.headers["content-disposition"] == 'attachment; filename="tasks-20250310-20250311.xlsx"'
    wb = openpyxl.load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames == ["任务台账"]
    ws = wb["任务台账"]
    rows = [list(row) for row in ws.iter_rows()]
    assert [c.value for c in rows[0]] == HEADERS
    assert ws.freeze_panes == "A2"
    assert ws.column_dimensions["A"].width == TASK_LEDGER[0].width
    first = {h: c for h, c in zip(HEADERS, rows[1], strict=True)}
    opened = first["立案时间"].value
    assert isinstance(opened, datetime) and opened.tzinfo is None  # an Excel datetime, local wall clock
    expected = datetime.fromisoformat("2025-03-10T09:30:00+08:00").astimezone(settings.tz).replace(tzinfo=None)
    assert opened == expected
    assert first["立案时间"].is_date
    assert first["位置"].value == EVIL_PLACE and first["位置"].data_type == "s"  # a string cell, never a formula
    assert first["办结说明"].data_type == "s"
    assert (first["类型"].value, first["楼层"].value, first["升级级别"].value) == ("火警", 3, 0)
    assert len(rows) == 3


def test_range_errors(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = as_(tokens, "b-001")
    url = "/api/v1/ledgers/tasks"
    year = {"start": "2025-01-01T00:00:00+08:00", "end": "2026-01-01T00:00:00+08:00"}
    assert client.get(url, params=year, **h).status_code == 200  # exactly one year
    for params, words in (
        ({"start": "2025-01-01T00:00:00+08:00", "end": "2026-01-01T00:00:01+08:00"}, "more than a year"),
        ({"end": "2025-03-11T00:00:00+08:00"}, "start"),
        ({"start": "2025-03-10T00:00:00+08:00"}, "end"),
        ({"start": "2025-03-10T00:00:00", "end": "2025-03-11T00:00:00+08:00"}, "no offset"),
        ({"start": "2025-03-10", "end": "2025-03-11T00:00:00+08:00"}, "RFC 3339"),
        ({"start": "2025-03-11T00:00:00+08:00", "end": "2025-03-10T00:00:00+08:00"}, "before end"),
        ({**DAY, "format": "pdf"}, "format"),
        ({"start": "9999-12-31T00:00:00+00:00", "end": "9999-12-31T12:00:00+00:00"}, "out of range"),
        ({"start": "0001-01-01T00:00:00+14:00", "end": "0001-01-02T00:00:00+14:00"}, "out of range"),
    ):
        r = client.get(url, params=params, **h)
        assert r.status_code == 422 and words in r.json()["detail"], (params, r.text)


def test_ledger_needs_a_token(client: httpx.Client) -> None:
    for params in (DAY, {**DAY, "format": "csv"}, {}):
        for headers in ({}, bearer("garbage")):
            r = client.get("/api/v1/ledgers/tasks", params=params, headers=headers)
            assert r.status_code == 401 and r.json()["detail"], r.text
