# ruff: noqa: F811
"""GET /api/v1/kpis/patrols (年度安全巡查计划执行情况统计表, CONTRACT §7): a year of patrols and hazards in both grids,
then the table per grid, community and street, per month, against the patrol and hazard ledgers and the task list,
its scope (a grid worker: their own grid), CSV and XLSX."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from apitools import all_pages, api, as_, bearer, client, tokens  # noqa: F401
from test_api_ledgers_patrols import insert_hazard, insert_patrol

from gridhub.settings import Settings

# the module's patrols and hazards are in 2023, which no other test uses
YEAR = 2023
LEDGER_YEAR = {"start": "2023-01-01T00:00:00+08:00", "end": "2024-01-01T00:00:00+08:00"}
ZERO = {"planned": 0, "done": 0, "done_on_time": 0, "overdue": 0, "hazards_found": 0, "hazards_rectified": 0}
G1 = {"planned": 4, "done": 3, "done_on_time": 2, "overdue": 1, "hazards_found": 3, "hazards_rectified": 2}
G2 = {"planned": 2, "done": 1, "done_on_time": 1, "overdue": 1, "hazards_found": 2, "hazards_rectified": 0}


def q(d: str) -> str:
    return f"{d}T00:00:00+08:00"


@pytest.fixture(scope="module")
def year_of_work(db_url: str) -> dict[str, str]:
    """g-xg-01: u-001 quarterly (Q1 on time, Q2 done late, Q3 never: overdue), u-002 yearly on time; hazards: one
    from Q1's patrol fixed, a report dismissed, a report referred to 119, a drill, a facility's expiry left open.
    g-xg-02: u-201 monthly (March on time, April never) and an alert patrol in March; hazards: a report resolved as a
    false alarm, one from a patrol left open."""
    ids: dict[str, str] = {}
    with psycopg.connect(db_url) as conn:
        ok = [{"id": "escape_route", "result": "ok"}, {"id": "ebike", "result": "ok"}, {"id": "gas", "result": "n/a"}]
        ids["q1"] = insert_patrol(conn, "u-001", q("2023-01-01"), q("2023-04-01"), assignee="w-001",
                                  frequency="quarterly", done_at="2023-02-10T10:00:00+08:00", done_by="w-001",
                                  results=ok)
        insert_patrol(conn, "u-001", q("2023-04-01"), q("2023-07-01"), assignee="w-001", frequency="quarterly",
                      done_at="2023-07-05T10:00:00+08:00", done_by="w-001", results=ok)
        insert_patrol(conn, "u-001", q("2023-07-01"), q("2023-10-01"), assignee="w-001", frequency="quarterly")
        insert_patrol(conn, "u-002", q("2023-01-01"), q("2024-01-01"), assignee="w-001", frequency="yearly",
                      done_at="2023-03-20T15:00:00+08:00", done_by="w-001", results=ok)
        insert_patrol(conn, "u-201", q("2023-03-01"), q("2023-04-01"), assignee="w-003", frequency="monthly",
                      done_at="2023-03-31T23:00:00+08:00", done_by="w-003", results=ok)
        insert_patrol(conn, "u-201", q("2023-03-12"), q("2023-03-13"), assignee="w-003", frequency="alert",
                      kind="alert", done_at="2023-03-12T16:00:00+08:00", done_by="w-003", results=ok)
        insert_patrol(conn, "u-201", q("2023-04-01"), q("2023-05-01"), assignee="w-003", frequency="monthly")
        insert_hazard(conn, "g-xg-01", "b-12", "2023-02-10T10:00:00+08:00", patrol=ids["q1"], resolution="fixed")
        insert_hazard(conn, "g-xg-01", "b-12", "2023-03-05T09:00:00+08:00", source="report", dismissed=True)
        insert_hazard(conn, "g-xg-01", "b-14", "2023-05-01T09:00:00+08:00", source="report", resolution="referred_119")
        insert_hazard(conn, "g-xg-01", "b-12", "2023-05-02T09:00:00+08:00", source="report", resolution="fixed",
                      drill=True)
        insert_hazard(conn, "g-xg-01", "b-12", "2023-08-01T00:00:00+08:00", source="facility")
        insert_hazard(conn, "g-xg-02", "b-20", "2023-03-15T09:00:00+08:00", source="report",
                      resolution="false_alarm")
        insert_hazard(conn, "g-xg-02", "b-20", "2023-04-10T09:00:00+08:00")
        conn.commit()
    return ids


def kpis(client: httpx.Client, tokens: dict[str, str], wid: str, **params: Any) -> httpx.Response:
    return client.get("/api/v1/kpis/patrols", params={"year": YEAR, **params}, **as_(tokens, wid))


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: {k: v for k, v in r.items() if k not in ("id", "name")} for r in body["rows"]}


def test_year_per_grid(client: httpx.Client, tokens: dict[str, str], settings: Settings,
                       year_of_work: dict[str, str]) -> None:
    r = kpis(client, tokens, "b-001", level="grid")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["level"], body["year"], body["month"]) == ("grid", YEAR, None)
    assert body["start"] == "2023-01-01T00:00:00.000+08:00" and body["end"] == "2024-01-01T00:00:00.000+08:00"
    rows = by_id(body)
    assert rows["g-xg-01"] == G1 and rows["g-xg-02"] == G2
    assert {r["id"]: r["name"] for r in body["rows"]}["g-xg-01"] == "一网格"
    assert body["total"] == {k: sum(r[k] for r in rows.values()) for k in ZERO}
    # the board's call: no year is this year (district time), every grid a row even with nothing in it
    this_year = client.get("/api/v1/kpis/patrols", **as_(tokens, "b-001"))
    assert this_year.status_code == 200 and this_year.json()["year"] == datetime.now(UTC).astimezone(settings.tz).year
    assert {r["id"] for r in this_year.json()["rows"]} >= {"g-xg-01", "g-xg-02"}
    empty = by_id(kpis(client, tokens, "b-001", year=1999).json())
    assert empty["g-xg-01"] == ZERO and empty["g-xg-02"] == ZERO


def test_months_communities_and_streets(client: httpx.Client, tokens: dict[str, str],
                                        year_of_work: dict[str, str]) -> None:
    march = kpis(client, tokens, "s-001", month=3).json()
    assert (march["month"], march["start"], march["end"]) == (
        3, "2023-03-01T00:00:00.000+08:00", "2023-04-01T00:00:00.000+08:00")
    assert by_id(march) == {"g-xg-01": ZERO, "g-xg-02": {**ZERO, "planned": 1, "done": 1, "done_on_time": 1,
                                                        "hazards_found": 1}}  # the alert patrol is not planned
    april = by_id(kpis(client, tokens, "s-001", month=4).json())
    assert april["g-xg-01"] == {**ZERO, "planned": 1, "done": 1}  # done in July: done, not on time
    assert april["g-xg-02"] == {**ZERO, "planned": 1, "overdue": 1, "hazards_found": 1}
    december = kpis(client, tokens, "s-001", month=12).json()
    assert december["end"] == "2024-01-01T00:00:00.000+08:00" and december["total"] == ZERO
    both = {k: G1[k] + G2[k] for k in ZERO}
    community = kpis(client, tokens, "s-001", level="community").json()
    assert [(r["id"], r["name"]) for r in community["rows"]] == [("shapowei", "沙坡尾社区")]
    assert by_id(community)["shapowei"] == both and community["total"] == both
    street = kpis(client, tokens, "s-001", level="street").json()
    assert [(r["id"], r["name"]) for r in street["rows"]] == [("xiagang", "厦港街道")]
    assert street["total"] == both
    filtered = kpis(client, tokens, "b-001", level="grid", community="shapowei").json()
    assert sorted(by_id(filtered)) == ["g-xg-01", "g-xg-02"] and filtered["total"] == both


def test_counts_agree_with_the_ledgers_and_the_task_list(client: httpx.Client, tokens: dict[str, str],
                                                         year_of_work: dict[str, str]) -> None:
    for wid, month, grid in (("b-001", None, None), ("s-001", 3, "g-xg-02"), ("w-001", None, "g-xg-01"),
                             ("w-003", 4, "g-xg-02")):
        table = kpis(client, tokens, wid, **({"month": month} if month else {}), **({"grid": grid} if grid else {}))
        assert table.status_code == 200, table.text
        body = table.json()
        rng = {"start": body["start"], "end": body["end"], **({"grid": grid} if grid else {})}
        patrols = client.get("/api/v1/ledgers/patrols", params=rng, **as_(tokens, wid)).json()["items"]
        listed = all_pages(client, "/api/v1/tasks", bearer(tokens[wid]), type="patrol", **rng)
        assert sorted(p["id"] for p in patrols) == sorted(t["id"] for t in listed), wid
        plan = [p for p in patrols if p["kind"] == "plan"]
        total = body["total"]
        assert total["planned"] == len(plan) > 0, wid
        assert total["done"] == sum(p["done_at"] is not None for p in plan)
        assert total["done_on_time"] == sum(p["status"] == "done_on_time" for p in plan)
        assert total["overdue"] == sum(p["status"] == "overdue" for p in plan)
        if wid in ("s-001", "b-001"):  # the hazard ledger: grid heads and up; it lists drills and dismissed reports
            hazards = client.get("/api/v1/ledgers/hazards", params=rng, **as_(tokens, wid)).json()["items"]
            counted = [h for h in hazards if not h["drill"] and not (h["state"] == "closed" and h["resolved_at"] is None)]
            assert total["hazards_found"] == len(counted)
            assert total["hazards_rectified"] == sum(h["resolution"] in ("fixed", "referred_119") for h in counted)
            hazard_tasks = all_pages(client, "/api/v1/tasks", bearer(tokens[wid]), type="hazard", **rng)
            assert len(hazard_tasks) == len(hazards)


def test_scope(client: httpx.Client, tokens: dict[str, str], year_of_work: dict[str, str]) -> None:
    for wid, grid, expected in (("w-001", "g-xg-01", G1), ("w-002", "g-xg-01", G1), ("w-003", "g-xg-02", G2)):
        body = kpis(client, tokens, wid).json()
        assert by_id(body) == {grid: expected} and body["total"] == expected, wid  # their own grid only
    for wid, params in (("w-001", {"grid": "g-xg-02"}), ("w-003", {"grid": "g-xg-01"}),
                        ("w-001", {"street": "xiagang"}), ("w-002", {"community": "shapowei"})):
        for fmt in ("json", "csv", "xlsx"):
            r = kpis(client, tokens, wid, format=fmt, **params)
            assert r.status_code == 403 and "outside your scope" in r.json()["detail"], (wid, params, fmt, r.text)
    for level in ("community", "street"):  # a grid worker's grid is no whole community: a 403 that says so
        r = kpis(client, tokens, "w-001", level=level)
        assert r.status_code == 403 and "level=grid" in r.json()["detail"], r.text
    assert kpis(client, tokens, "b-001", grid="g-nowhere").status_code == 404
    for headers in ({}, bearer("garbage")):
        r = client.get("/api/v1/kpis/patrols", params={"year": YEAR}, headers=headers)
        assert r.status_code == 401, r.text


def test_bad_requests(client: httpx.Client, tokens: dict[str, str]) -> None:
    for params, words in (({"month": 13}, "month"), ({"month": 0}, "month"), ({"level": "district"}, "level"),
                          ({"year": 1900}, "year"), ({"year": 10000}, "year"), ({"format": "pdf"}, "format"),
                          ({"level": "street", "grid": "g-xg-01"}, "level=grid or finer"),
                          ({"level": "community", "grid": "g-xg-01"}, "level=grid")):
        r = kpis(client, tokens, "b-001", **params)
        assert r.status_code == 422 and words in r.json()["detail"], (params, r.text)


def test_csv_and_xlsx(client: httpx.Client, tokens: dict[str, str], settings: Settings,
                      year_of_work: dict[str, str]) -> None:
    import openpyxl

    r = kpis(client, tokens, "w-002", format="csv")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="kpi-patrols-grid-2023.csv"'
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows == [["网格编号", "网格", "计划巡查数", "已完成", "按期完成", "逾期未完成", "发现隐患", "已整改"],
                    ["g-xg-01", "一网格", "4", "3", "2", "1", "3", "2"], ["合计", "", "4", "3", "2", "1", "3", "2"]]
    r = kpis(client, tokens, "s-001", format="xlsx", level="community", month=4)
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'attachment; filename="kpi-patrols-community-202304.xlsx"'
    wb = openpyxl.load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames == ["巡查计划执行情况"]
    values = [[c.value for c in row] for row in wb["巡查计划执行情况"].iter_rows()]
    assert values == [["社区编号", "社区", "计划巡查数", "已完成", "按期完成", "逾期未完成", "发现隐患", "已整改"],
                      ["shapowei", "沙坡尾社区", 2, 1, 0, 1, 1, 0], ["合计", None, 2, 1, 0, 1, 1, 0]]
