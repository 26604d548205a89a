# ruff: noqa: F811
"""GET /api/v1/ledgers/patrols (安全巡查台账, CONTRACT §7): patrols written in the shapes of the patrols migration (a
done one with a hazard item and photos, an overdue one, one done late, an alert patrol), then the ledger's scope
(grid workers included, their own grids only), its rows against /api/v1/tasks?type=patrol, CSV and XLSX.

`insert_patrol` and `insert_hazard` are shared with tests/test_api_kpis.py and tests/test_report_monthly.py."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import date, datetime
from typing import Any

import httpx
import psycopg
import pytest
from apitools import api, as_, bearer, client, tokens  # noqa: F401

from gridhub.api.routes_ledgers import PATROL_LEDGER
from gridhub.settings import Settings

# the module's patrols are in 2024, which no other test uses: the ledger of that year is exactly them
YEAR = {"start": "2024-01-01T00:00:00+08:00", "end": "2025-01-01T00:00:00+08:00"}
HEADERS = [c.header for c in PATROL_LEDGER]
CHECKLIST = [{"id": "escape_route", "label": "安全出口和疏散通道畅通"},
             {"id": "ebike", "label": "电动自行车未在楼道、门厅停放或充电"},
             {"id": "gas", "label": "燃气管道和阀门无泄漏"}]
EVIL_NOTE = "-2+3 巡查备注"
UNIT_PLACE = {"u-001": ("g-xg-01", "b-12", "key"), "u-002": ("g-xg-01", None, "shop"),
              "u-201": ("g-xg-02", "b-20", "major_hazard")}


def insert_patrol(conn: psycopg.Connection[Any], unit: str, period_start: str, period_end: str, *,
                  assignee: str, frequency: str, kind: str = "plan", planned_for: str | None = None,
                  done_at: str | None = None, done_by: str | None = None, results: list[dict[str, Any]] | None = None,
                  note: str | None = None, photos: int = 0) -> str:
    """A patrol task and its `patrols` row as alerts/patrols.py writes them (opened at the period's start, due at
    its end; done: resolved `done`), with `photos` photos on the task. Returns the task id."""
    grid, building, cls = UNIT_PLACE[unit]
    tid = f"tk-p{uuid.uuid4().hex[:12]}"
    done = done_at is not None
    conn.execute(
        "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, unit_id, assignee, accept_due,"
        " resolve_due, opened_at, accepted_at, resolved_at, resolution, last_seen, incident_key)"
        " VALUES (%s, 'patrol', 'normal', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (tid, "resolved" if done else "open", grid, building, unit, assignee, period_end, period_end, period_start,
         done_at, done_at, "done" if done else None, period_start, f"patrol:{tid}"))
    labels = {c["id"]: c["label"] for c in CHECKLIST}  # each result in the shape record_results writes it
    results = [{"label": labels.get(r["id"], r["id"]), "note": None, "photos": [], **r} for r in results or ()] or None
    hazards = sum(1 for r in results or () if r["result"] == "hazard")
    conn.execute(
        "INSERT INTO patrols (task_id, unit_id, class, kind, frequency, period_start, period_end, planned_for,"
        " checklist, results, note, done_at, done_by, hazards) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " %s, %s, %s)",
        (tid, unit, cls, kind, frequency, period_start, period_end, planned_for or period_start[:10],
         json.dumps(CHECKLIST, ensure_ascii=False), json.dumps(results, ensure_ascii=False) if results else None,
         note, done_at, done_by, hazards))
    for _ in range(photos):
        conn.execute("INSERT INTO evidence (id, task_id, kind, data, created_by) VALUES (%s, %s, 'photo', %s, %s)",
                     (f"ev-{uuid.uuid4().hex[:12]}", tid, b"\xff\xd8\xff\xd9", done_by or assignee))
    return tid


def insert_hazard(conn: psycopg.Connection[Any], grid: str, building: str | None, opened_at: str, *,
                  source: str = "patrol", patrol: str | None = None, resolution: str | None = None,
                  dismissed: bool = False, drill: bool = False) -> str:
    """A `hazard` task (found on a patrol, reported, or a facility's expiry): resolved with `resolution`, or
    dismissed (a report 不予立案: closed, never resolved), or open."""
    tid = f"tk-h{uuid.uuid4().hex[:12]}"
    state = "resolved" if resolution else "closed" if dismissed else "open"
    detail = {"source": source, "category": "ebike"} | ({"patrol": patrol} if patrol else {})
    conn.execute(
        "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, opened_at, resolved_at, closed_at,"
        " resolution, last_seen, incident_key, source_task_id, detail, drill)"
        " VALUES (%s, 'hazard', 'high', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (tid, state, grid, building, opened_at, opened_at if resolution else None, opened_at if dismissed else None,
         resolution, opened_at, f"hazard:{tid}", patrol, json.dumps(detail), drill))
    return tid


@pytest.fixture(scope="module")
def patrols(db_url: str) -> dict[str, str]:
    """In 2024: u-001 (g-xg-01) done on time with a hazard item (an open hazard task) and 2 photos; u-002 (g-xg-01)
    never done, past its period (overdue); u-201 (g-xg-02) monthly, done 2 days late; an alert patrol of u-201."""
    ids: dict[str, str] = {}
    with psycopg.connect(db_url) as conn:
        ids["done"] = insert_patrol(
            conn, "u-001", "2024-04-01T00:00:00+08:00", "2024-07-01T00:00:00+08:00", assignee="w-001",
            frequency="quarterly", planned_for="2024-05-15", done_at="2024-05-15T10:00:00+08:00", done_by="w-001",
            results=[{"id": "escape_route", "label": "安全出口和疏散通道畅通", "result": "ok"},
                     {"id": "ebike", "result": "hazard", "note": "楼道充电", "photos": []},
                     {"id": "gas", "label": "燃气管道和阀门无泄漏", "result": "n/a"}],
            note=EVIL_NOTE, photos=2)
        ids["hazard"] = insert_hazard(conn, "g-xg-01", "b-12", "2024-05-15T10:00:00+08:00", patrol=ids["done"])
        ids["overdue"] = insert_patrol(conn, "u-002", "2024-01-01T00:00:00+08:00", "2025-01-01T00:00:00+08:00",
                                       assignee="w-001", frequency="yearly", planned_for="2024-06-20")
        ids["late"] = insert_patrol(
            conn, "u-201", "2024-06-01T00:00:00+08:00", "2024-07-01T00:00:00+08:00", assignee="w-003",
            frequency="monthly", done_at="2024-07-03T09:00:00+08:00", done_by="w-003",
            results=[{"id": c["id"], "label": c["label"], "result": "ok"} for c in CHECKLIST])
        ids["alert"] = insert_patrol(
            conn, "u-201", "2024-06-10T14:00:00+08:00", "2024-06-11T14:00:00+08:00", assignee="w-003",
            frequency="alert", kind="alert", done_at="2024-06-10T16:00:00+08:00", done_by="w-003",
            results=[{"id": c["id"], "result": "ok"} for c in CHECKLIST])
        conn.commit()
    return ids


def ledger(client: httpx.Client, tokens: dict[str, str], wid: str, **params: Any) -> httpx.Response:
    return client.get("/api/v1/ledgers/patrols", params={**YEAR, **params}, **as_(tokens, wid))


def test_json_rows_in_scope(client: httpx.Client, tokens: dict[str, str], patrols: dict[str, str]) -> None:
    r = ledger(client, tokens, "w-001")  # a grid worker keeps the patrol ledger of their own grid
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["id"] for i in items] == [patrols["overdue"], patrols["done"]]  # oldest first, g-xg-01 only
    overdue, done = items
    assert (done["unit_id"], done["unit"], done["class"], done["class_name"]) == ("u-001", "沙坡尾菜市场", "key", "重点单位")
    assert (done["kind"], done["frequency"], done["planned_for"]) == ("plan", "quarterly", "2024-05-15")
    assert done["period_start"] == "2024-04-01T00:00:00.000+08:00"
    assert done["period_end"] == "2024-07-01T00:00:00.000+08:00"
    assert done["done_at"] == "2024-05-15T10:00:00.000+08:00"
    assert (done["done_by_id"], done["done_by"], done["assignee_id"]) == ("w-001", "张三", "w-001")
    assert (done["street"], done["community"], done["grid"], done["building"]) == ("厦港街道", "沙坡尾社区", "一网格", "12号楼")
    assert (done["items_total"], done["items_checked"], done["hazards"], done["photos"]) == (3, 2, 1, 2)
    assert done["findings"] == [{"id": "ebike", "label": "电动自行车未在楼道、门厅停放或充电", "note": "楼道充电"}]
    assert done["hazard_tasks"] == [patrols["hazard"]]
    assert (done["on_time"], done["overdue"], done["status"], done["note"]) == (True, False, "done_on_time", EVIL_NOTE)
    assert (overdue["on_time"], overdue["overdue"], overdue["status"]) == (False, True, "overdue")
    assert (overdue["done_at"], overdue["items_checked"], overdue["findings"], overdue["photos"]) == (None, None, [], 0)
    assert overdue["building_id"] is None and overdue["class_name"] == "个体经营户"

    g2 = ledger(client, tokens, "w-003").json()["items"]
    assert [i["id"] for i in g2] == [patrols["late"], patrols["alert"]]
    late, alert = g2
    assert (late["status"], late["on_time"], late["overdue"], late["items_checked"]) == ("done_late", False, False, 3)
    assert (alert["kind"], alert["frequency"], alert["status"]) == ("alert", "alert", "done_on_time")
    for wid in ("s-001", "b-001", "a-001"):
        assert len(ledger(client, tokens, wid).json()["items"]) == 4, wid


def test_rows_equal_the_patrol_task_list(client: httpx.Client, tokens: dict[str, str],
                                         patrols: dict[str, str]) -> None:
    for wid, grid in (("b-001", None), ("s-001", "g-xg-02"), ("w-001", None), ("w-003", "g-xg-02")):
        extra = {"grid": grid} if grid else {}
        h = bearer(tokens[wid])
        listed = client.get("/api/v1/tasks", params={**YEAR, **extra, "type": "patrol", "limit": 1000},
                            headers=h).json()["items"]
        rows = ledger(client, tokens, wid, **extra).json()["items"]
        assert sorted(t["id"] for t in listed) == sorted(t["id"] for t in rows), wid
        assert rows


def test_scope_and_roles(client: httpx.Client, tokens: dict[str, str], patrols: dict[str, str]) -> None:
    assert [i["id"] for i in ledger(client, tokens, "w-001", grid="g-xg-01").json()["items"]] == [
        patrols["overdue"], patrols["done"]]
    for wid, params in (("w-001", {"grid": "g-xg-02"}), ("w-003", {"grid": "g-xg-01"}),
                        ("w-001", {"community": "shapowei"}), ("w-002", {"street": "xiagang"})):
        for fmt in ("json", "csv", "xlsx"):
            r = ledger(client, tokens, wid, format=fmt, **params)
            assert r.status_code == 403 and "outside your scope" in r.json()["detail"], (wid, params, fmt, r.text)
    assert ledger(client, tokens, "w-001", grid="g-nowhere").status_code == 404
    assert [i["id"] for i in ledger(client, tokens, "s-001", grid="g-xg-02").json()["items"]] == [
        patrols["late"], patrols["alert"]]
    for params in (YEAR, {**YEAR, "format": "xlsx"}):
        for headers in ({}, bearer("garbage")):
            r = client.get("/api/v1/ledgers/patrols", params=params, headers=headers)
            assert r.status_code == 401, r.text
    r = ledger(client, tokens, "b-001", end="2025-01-01T00:00:01+08:00")
    assert r.status_code == 422 and "more than a year" in r.json()["detail"]


def test_csv_has_chinese_headers_and_escaped_notes(client: httpx.Client, tokens: dict[str, str],
                                                   patrols: dict[str, str]) -> None:
    r = ledger(client, tokens, "w-002", format="csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="patrols-20240101-20250101.csv"'
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == HEADERS and len(rows) == 3
    assert HEADERS[:2] == ["巡查编号", "巡查时间"]
    done = dict(zip(rows[0], rows[2], strict=True))
    assert (done["巡查编号"], done["巡查时间"], done["单位"], done["单位类别"]) == (
        patrols["done"], "2024-05-15 10:00:00", "沙坡尾菜市场", "重点单位")
    assert (done["巡查类型"], done["频次"], done["周期开始"], done["周期结束"], done["计划日期"]) == (
        "计划巡查", "每季度", "2024-04-01", "2024-06-30", "2024-05-15")
    assert (done["检查项数"], done["隐患数"], done["照片数"], done["隐患任务"]) == ("2", "1", "2", patrols["hazard"])
    assert done["发现问题"] == "电动自行车未在楼道、门厅停放或充电：楼道充电"
    assert (done["巡查人"], done["负责人"], done["是否按期"], done["完成情况"]) == ("张三", "张三", "是", "按期完成")
    assert done["备注"] == "'" + EVIL_NOTE
    overdue = dict(zip(rows[0], rows[1], strict=True))
    assert (overdue["巡查时间"], overdue["是否按期"], overdue["完成情况"], overdue["检查项数"]) == ("", "否", "已逾期", "")
    assert (overdue["周期开始"], overdue["周期结束"]) == ("2024-01-01", "2024-12-31")
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


def test_xlsx_headers_and_local_times(client: httpx.Client, tokens: dict[str, str], settings: Settings,
                                      patrols: dict[str, str]) -> None:
    import openpyxl

    r = ledger(client, tokens, "s-001", format="xlsx")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="patrols-20240101-20250101.xlsx"'
    wb = openpyxl.load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames == ["巡查台账"]
    ws = wb["巡查台账"]
    rows = [list(row) for row in ws.iter_rows()]
    assert [c.value for c in rows[0]] == HEADERS and len(rows) == 5 and ws.freeze_panes == "A2"
    by_id = {row[0].value: {h: c for h, c in zip(HEADERS, row, strict=True)} for row in rows[1:]}
    late = by_id[patrols["late"]]
    done_at = late["巡查时间"].value
    expected = datetime.fromisoformat("2024-07-03T09:00:00+08:00").astimezone(settings.tz).replace(tzinfo=None)
    assert isinstance(done_at, datetime) and done_at.tzinfo is None and done_at == expected
    assert late["巡查时间"].is_date
    assert late["计划日期"].value == datetime(2024, 6, 1) and late["计划日期"].is_date  # a date cell, not text
    assert late["周期结束"].value == datetime(2024, 6, 30)
    assert (late["完成情况"].value, late["是否按期"].value, late["检查项数"].value) == ("逾期完成", "否", 3)
    assert (late["单位"].value, late["网格"].value, late["巡查人"].value) == ("加油站", "二网格", "赵六")
    done = by_id[patrols["done"]]
    assert done["备注"].value == EVIL_NOTE and done["备注"].data_type == "s"
    assert date(2024, 5, 15) == done["计划日期"].value.date()


def test_a_patrol_done_through_the_api_is_in_the_ledger(client: httpx.Client, tokens: dict[str, str],
                                                        db_url: str) -> None:
    """A 2021 patrol (a year no other test uses) done today by its worker with the §4.1 actions: accept, a photo,
    resolve with the checklist (a hazard item opens a hazard task). Its ledger row is what the worker recorded."""
    from apitools import tiny_jpeg

    with psycopg.connect(db_url) as conn:
        tid = insert_patrol(conn, "u-002", "2021-03-01T00:00:00+08:00", "2021-04-01T00:00:00+08:00",
                            assignee="w-001", frequency="monthly", planned_for="2021-03-15")
        conn.commit()
    h = as_(tokens, "w-001")
    assert client.post(f"/api/v1/tasks/{tid}/accept", json={}, **h).status_code == 200
    r = client.post(f"/api/v1/tasks/{tid}/photos", files={"photo": ("p.jpg", tiny_jpeg(), "image/jpeg")}, **h)
    assert r.status_code == 201, r.text
    ev = r.json()["id"]
    checklist = [{"id": "escape_route", "result": "ok"},
                 {"id": "ebike", "result": "hazard", "note": "门厅停放电动车", "photos": [ev]},
                 {"id": "gas", "result": "n/a"}]
    r = client.post(f"/api/v1/tasks/{tid}/resolve", json={"checklist": checklist, "note": "店主在场"}, **h)
    assert r.status_code == 200, r.text
    row = ledger(client, tokens, "w-001", start="2021-01-01T00:00:00+08:00", end="2022-01-01T00:00:00+08:00")
    [item] = row.json()["items"]
    hazards = [t["id"] for t in client.get("/api/v1/tasks", params={"type": "hazard", "limit": 1000}, **h).json()[
        "items"] if t["source_task_id"] == tid]
    assert len(hazards) == 1 and item["hazard_tasks"] == hazards
    assert (item["id"], item["done_by_id"], item["done_by"], item["state"]) == (tid, "w-001", "张三", "resolved")
    assert (item["items_checked"], item["hazards"], item["photos"], item["note"]) == (2, 1, 1, "店主在场")
    assert item["findings"] == [{"id": "ebike", "label": "电动自行车未在楼道、门厅停放或充电", "note": "门厅停放电动车"}]
    assert (item["status"], item["on_time"]) == ("done_late", False)  # done now, for a month of 2021
    kpi = client.get("/api/v1/kpis/patrols", params={"year": 2021}, **h).json()
    assert kpi["total"] == {"planned": 1, "done": 1, "done_on_time": 0, "overdue": 0, "hazards_found": 0,
                            "hazards_rectified": 0}  # its hazard task was opened today, not in 2021
