# ruff: noqa: F811
"""Patrol plans and patrol tasks (巡查, CONTRACT §7) on the real database: plan timers on an injected clock make
exactly the year's patrols, none before its period, across a restart and an outage; the grid's units are spread over
the period and its workers; a facility's expiry opens one hazard; a major hazard unit is patrolled on an alert; and
through the real app a worker resolves a patrol with its checklist, each `hazard` item opening a linked hazard task,
with bad checklists refused before anything changes and scope holding."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from apitools import api, as_, client, tiny_jpeg, tokens  # noqa: F401

from gridhub.alerts import changes, patrols, timers
from gridhub.alerts.rules import load_rules
from gridhub.alerts.tasks import open_or_join_task

SH = ZoneInfo("Asia/Shanghai")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=SH)  # type: ignore[misc]


def actions() -> dict[str, timers.TimerAction]:
    """The timer actions as the alerts service has them after a start: a new rule book each time (a restart)."""
    from gridhub.alerts import tasks

    rules = load_rules()
    return {**tasks.timer_actions(rules), **patrols.timer_actions(rules)}


def add_unit(conn: psycopg.Connection[Any], unit_id: str, cls: str, grid: str = "g-xg-01",
             building: str | None = "b-12") -> None:
    conn.execute("INSERT INTO units (id, name, class, grid_id, building_id) VALUES (%s, %s, %s, %s, %s)",
                 (unit_id, f"单位{unit_id}", cls, grid, building))


def patrol_rows(conn: psycopg.Connection[Any], units: list[str]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT p.unit_id, p.period_start, p.period_end, t.opened_at, p.planned_for, t.assignee,"
                        " t.type, t.severity, t.state FROM patrols p JOIN tasks t ON t.id = p.task_id"
                        " WHERE p.unit_id = ANY(%s) AND p.kind = 'plan' ORDER BY p.unit_id, p.period_start",
                        (units,)).fetchall()


@pytest.fixture
def own_db(make_registry_database: Callable[[], str]) -> str:
    return make_registry_database()


def test_three_key_units_get_twelve_patrols_over_a_year_none_before_its_quarter_across_a_restart(own_db: str) -> None:
    units = ["u-k1", "u-k2", "u-k3"]
    start = local(2027, 1, 1) - timedelta(hours=1)
    with psycopg.connect(own_db, autocommit=True) as conn:
        for u in units:
            add_unit(conn, u, "key")
        patrols.sync_plans(conn, start)  # as the alerts service does at start
        assert patrol_rows(conn, units) == []
        now = start
        fired = actions()
        while now < local(2028, 1, 1) - timedelta(hours=2):
            if local(2027, 5, 1) <= now < local(2027, 5, 2):  # a restart: new rule book, new connection
                conn.close()
                conn = psycopg.connect(own_db, autocommit=True)
                patrols.sync_plans(conn, now)  # idempotent: no second timer, no patrol of its own
                fired = actions()
            timers.fire_due(conn, now, fired)
            for unit_id, p_start, _end, opened_at, *_ in patrol_rows(conn, units):
                assert p_start <= now, f"{unit_id}'s patrol of {p_start} exists at {now}, before its quarter"
                assert opened_at >= p_start
            now += timedelta(hours=6)
        rows = patrol_rows(conn, units)
        in_2027 = [r for r in rows if local(2027, 1, 1) <= r[1] < local(2028, 1, 1)]
        assert len(in_2027) == 12, rows
        quarters = [local(2027, m, 1) for m in (1, 4, 7, 10)]
        for u in units:
            mine = [r for r in in_2027 if r[0] == u]
            assert [r[1] for r in mine] == quarters
            assert [r[2] for r in mine] == [*quarters[1:], local(2028, 1, 1)]
        assert {(r[6], r[7], r[8]) for r in rows} == {("patrol", "normal", "open")}
        assert len(rows) == 15  # the clock started in 2026's last quarter: its patrols too, and no more
        # nobody did them: the grid head was told once of each patrol whose quarter ended (2026 Q4, 2027 Q1-Q3)
        steps = conn.execute("SELECT p.period_start, count(h.id) FROM patrols p LEFT JOIN task_history h"
                             " ON h.task_id = p.task_id AND h.action = 'escalate' WHERE p.unit_id = ANY(%s)"
                             " GROUP BY p.task_id, p.period_start", (units,)).fetchall()
        assert sorted(n for start_, n in steps if start_ < local(2027, 10, 1)) == [1] * 12
        assert [n for start_, n in steps if start_ == local(2027, 10, 1)] == [0] * 3
        conn.close()


def test_a_hub_down_over_a_quarter_start_catches_up_on_start(own_db: str) -> None:
    with psycopg.connect(own_db, autocommit=True) as conn:
        add_unit(conn, "u-k9", "key")
        patrols.sync_plans(conn, local(2027, 2, 10))
        timers.fire_due(conn, local(2027, 2, 10), actions())
        assert [r[1] for r in patrol_rows(conn, ["u-k9"])] == [local(2027, 1, 1)]
        # down from February to August: Q2 and Q3 started meanwhile
        back = local(2027, 8, 3, 9, 30)
        patrols.sync_plans(conn, back)
        timers.fire_due(conn, back, actions())
        rows = patrol_rows(conn, ["u-k9"])
        assert [r[1] for r in rows] == [local(2027, m, 1) for m in (1, 4, 7)]
        assert rows[1][3] == back, "the missed quarter's patrol is created when the hub is back, not backdated"
        assert timers.due_at(conn, "patrol_plan", "u-k9") == local(2027, 10, 1)


def test_a_grids_units_are_spread_over_the_period_and_its_workers(own_db: str) -> None:
    units = [f"u-s{i}" for i in range(4)]
    with psycopg.connect(own_db, autocommit=True) as conn:
        conn.execute("INSERT INTO workers (id, name, role, active) VALUES ('w-009', '王五', 'grid_worker', true)")
        conn.execute("INSERT INTO worker_grids (worker_id, grid_id) VALUES ('w-009', 'g-xg-01')")
        for u in units:
            add_unit(conn, u, "general")
        conn.execute("UPDATE units SET class = 'key' WHERE class = 'general' AND id <> ALL(%s)", (units,))
        now = local(2027, 1, 1, 8)
        patrols.sync_plans(conn, now)
        timers.fire_due(conn, now, actions())
        rows = patrol_rows(conn, units)
        assert [r[4].isoformat() for r in rows] == ["2027-01-01", "2027-04-02", "2027-07-02", "2027-10-01"]
        assert [r[5] for r in rows] == ["w-001", "w-009", "w-001", "w-009"]
        assert {(r[1], r[2]) for r in rows} == {(local(2027, 1, 1), local(2028, 1, 1))}


def test_a_facilitys_expiry_opens_one_hazard_task(own_db: str) -> None:
    with psycopg.connect(own_db, autocommit=True) as conn:
        patrols.sync_plans(conn, local(2027, 6, 1))
        assert timers.due_at(conn, "facility_expiry", "f-001") == local(2027, 7, 1)  # expires 2027-06-30
        timers.fire_due(conn, local(2027, 6, 30, 23, 59), actions())

        def hazards() -> list[tuple[Any, ...]]:
            return conn.execute("SELECT type, severity, grid_id, building_id, detail->>'source', detail->>'facility',"
                                " detail->>'expires' FROM tasks WHERE incident_key LIKE 'facility:%'").fetchall()

        assert hazards() == []
        timers.fire_due(conn, local(2027, 7, 1, 0, 1), actions())
        assert hazards() == [("hazard", "high", "g-xg-01", "b-12", "facility", "f-001", "2027-06-30")]
        patrols.sync_plans(conn, local(2027, 7, 2))  # a registry import or a restart: no second task
        timers.fire_due(conn, local(2027, 7, 3), actions())
        assert len(hazards()) == 1
        # a new extinguisher: the new date gets its own timer
        conn.execute("UPDATE facilities SET expires = '2028-06-30' WHERE id = 'f-001'")
        patrols.sync_plans(conn, local(2027, 7, 4))
        assert timers.due_at(conn, "facility_expiry", "f-001") == local(2028, 7, 1)


def test_an_alert_in_a_major_hazard_units_building_patrols_it_once_while_open(own_db: str) -> None:
    rules = load_rules()
    now = datetime.now(UTC)

    def alert_task(n: int) -> None:
        alert_id = f"al-{uuid.uuid4().hex[:10]}"
        conn.execute("INSERT INTO alerts (id, building_id, grid_id, type, severity, first_seen, last_seen)"
                     " VALUES (%s, 'b-20', 'g-xg-02', 'tamper', 'high', %s, %s)", (alert_id, now, now))
        with changes.UnitOfWork(conn) as uow:
            open_or_join_task(uow, alert_id=alert_id, alert_type="tamper", severity="high",
                              incident_key=f"test:{n}", grid_id="g-xg-02", building_id="b-20", device_id=None,
                              seen=now, now=now, rules=rules, note="test")

    with psycopg.connect(own_db) as conn:
        alert_task(1)
        alert_task(2)
        rows = conn.execute("SELECT p.unit_id, p.kind, t.assignee, t.state FROM patrols p JOIN tasks t"
                            " ON t.id = p.task_id WHERE p.kind = 'alert'").fetchall()
        assert rows == [("u-201", "alert", "w-003", "open")]


# ------------------------------------------------------------------ through the app


def new_patrol(db_url: str, cls: str = "key", grid: str = "g-xg-01") -> str:
    """A unit of its own in the session's database and its current patrol (as the plan timer makes it)."""
    unit_id = f"u-t{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url) as conn:
        add_unit(conn, unit_id, cls, grid, "b-12" if grid == "g-xg-01" else "b-20")
        with changes.UnitOfWork(conn) as uow:
            made = patrols.generate_due(uow, unit_id, datetime.now(UTC), load_rules())
    assert len(made) == 1
    return made[0]


def act(client: httpx.Client, tokens: dict[str, str], wid: str, task_id: str, action: str,
        body: dict[str, Any] | None = None) -> httpx.Response:
    return client.post(f"/api/v1/tasks/{task_id}/{action}", json=body or {}, **as_(tokens, wid))


def photo(client: httpx.Client, tokens: dict[str, str], task_id: str, wid: str = "w-001") -> str:
    r = client.post(f"/api/v1/tasks/{task_id}/photos", files={"photo": ("p.jpg", tiny_jpeg(), "image/jpeg")},
                    **as_(tokens, wid))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def answers(task: dict[str, Any], **special: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": i["id"], "result": "ok", **special.get(i["id"], {})} for i in task["patrol"]["checklist"]]


def test_the_worker_sees_the_patrol_with_its_checklist(client: httpx.Client, tokens: dict[str, str],
                                                       db_url: str) -> None:
    task_id = new_patrol(db_url, "shop")
    r = client.get("/api/v1/tasks", params={"type": "patrol", "assignee": "me", "state": "open"},
                   **as_(tokens, "w-001"))
    assert r.status_code == 200
    task = next(t for t in r.json()["items"] if t["id"] == task_id)
    p = task["patrol"]
    assert p["class"] == "shop" and p["kind"] == "plan" and p["frequency"] == "yearly"
    assert [i["label"] for i in p["checklist"]][:2] == ["安全出口和疏散通道畅通", "灭火器在位且在有效期内"]
    assert "重点部位有人值守" not in [i["label"] for i in p["checklist"]]  # key units only
    assert p["results"] is None and p["done_at"] is None and p["overdue"] is False
    year = datetime.now(SH).year
    assert p["period_start"].startswith(f"{year}-01-01T00:00:00.000+08:00")
    assert p["period_end"].startswith(f"{year + 1}-01-01T00:00:00.000+08:00")
    assert task["unit_id"] == p["unit_id"] and task["resolve_due"] == p["period_end"]
    # another grid's worker neither lists nor opens it
    r = client.get("/api/v1/tasks", params={"type": "patrol"}, **as_(tokens, "w-003"))
    assert task_id not in {t["id"] for t in r.json()["items"]}
    assert all(t["grid_id"] == "g-xg-02" for t in r.json()["items"])
    assert client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "w-003")).status_code == 403
    assert act(client, tokens, "w-003", task_id, "accept").status_code in (403, 404)


def test_a_checklist_with_two_hazard_items_opens_two_linked_hazard_tasks_and_a_recheck_follows(
        client: httpx.Client, tokens: dict[str, str], db_url: str) -> None:
    task_id = new_patrol(db_url)
    assert act(client, tokens, "w-001", task_id, "accept").status_code == 200
    task = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "w-001")).json()
    ev = photo(client, tokens, task_id)
    body = {"checklist": answers(task, ebike={"result": "hazard", "photos": [ev]},
                                 wiring={"result": "hazard", "note": "二楼私拉电线"}, gas={"result": "n/a"}),
            "note": "商户配合"}
    r = act(client, tokens, "w-001", task_id, "resolve", body)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["state"] == "resolved" and done["resolution"] == "done"
    results = {x["id"]: x for x in done["patrol"]["results"]}
    assert results["ebike"] == {"id": "ebike", "label": "电动自行车未在楼道、门厅停放或充电", "result": "hazard",
                                "note": None, "photos": [ev]}
    assert results["gas"]["result"] == "n/a" and results["escape_route"]["result"] == "ok"
    assert done["patrol"]["hazards"] == 2 and done["patrol"]["note"] == "商户配合"
    assert done["patrol"]["done_by"] == "w-001" and done["patrol"]["done_at"] is not None
    assert "2 hazard" in done["history"][-1]["note"]

    r = client.get("/api/v1/tasks", params={"type": "hazard", "grid": "g-xg-01"}, **as_(tokens, "w-002"))
    found = [t for t in r.json()["items"] if t["source_task_id"] == task_id]
    assert len(found) == 2
    assert {t["severity"] for t in found} == {"high"} and {t["state"] for t in found} == {"open"}
    assert {t["unit_id"] for t in found} == {done["unit_id"]} and {t["assignee"] for t in found} == {"w-001"}
    notes = sorted(t["history"][0]["note"] for t in found)
    assert "电气线路无私拉乱接: 二楼私拉电线" in notes[1] or "电气线路无私拉乱接: 二楼私拉电线" in notes[0]

    # 整改 → 复查: the hazard rectified opens a recheck for the grid worker
    wiring = next(t for t in found if "二楼私拉电线" in t["history"][0]["note"])
    assert act(client, tokens, "w-001", wiring["id"], "accept").status_code == 200
    assert act(client, tokens, "w-001", wiring["id"], "resolve", {"resolution": "fixed"}).status_code == 200
    r = client.get("/api/v1/tasks", params={"type": "recheck"}, **as_(tokens, "w-001"))
    rechecks = [t for t in r.json()["items"] if t["source_task_id"] == wiring["id"]]
    assert len(rechecks) == 1 and rechecks[0]["unit_id"] == done["unit_id"]
    # the grid head checks the patrol's work and closes it
    assert act(client, tokens, "w-002", task_id, "close").status_code == 200


@pytest.mark.parametrize("change, detail", [
    (lambda items, ev: items[:-1], "not answered"),
    (lambda items, ev: [*items, {"id": "nope", "result": "ok"}], "not an item of this patrol"),
    (lambda items, ev: [*items, dict(items[0])], "answered twice"),
    (lambda items, ev: [{**items[0], "result": "hazard"}, *items[1:]], "needs a note or a photo"),
    (lambda items, ev: [{**items[0], "result": "hazard", "photos": ["ev-not-this-task"]}, *items[1:]],
     "not a photo of this patrol"),
])
def test_a_bad_checklist_is_422_and_changes_nothing(client: httpx.Client, tokens: dict[str, str], db_url: str,
                                                    change: Any, detail: str) -> None:
    task_id = new_patrol(db_url)
    act(client, tokens, "w-001", task_id, "accept")
    task = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "w-001")).json()
    r = act(client, tokens, "w-001", task_id, "resolve", {"checklist": change(answers(task), None)})
    assert r.status_code == 422 and detail in r.text, r.text
    after = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "w-001")).json()
    assert after["state"] == "accepted" and after["patrol"]["results"] is None
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE source_task_id = %s", (task_id,)).fetchone()
    assert row is not None and row[0] == 0


def test_a_patrol_needs_its_checklist_and_other_tasks_refuse_one(client: httpx.Client, tokens: dict[str, str],
                                                                 db_url: str) -> None:
    task_id = new_patrol(db_url)
    act(client, tokens, "w-001", task_id, "accept")
    r = act(client, tokens, "w-001", task_id, "resolve", {"note": "都好"})
    assert r.status_code == 422 and "checklist is required" in r.text
    r = act(client, tokens, "w-001", task_id, "resolve", {"resolution": "fixed"})
    assert r.status_code == 422 and "resolved with its checklist" in r.text
    hazard = client.post("/api/v1/reports", data={"category": "gas", "building": "b-12", "description": "燃气味"},
                         **as_(tokens, "w-001")).json()
    act(client, tokens, "w-002", hazard["id"], "confirm")
    act(client, tokens, "w-001", hazard["id"], "accept")
    r = act(client, tokens, "w-001", hazard["id"], "resolve",
            {"resolution": "fixed", "checklist": [{"id": "gas", "result": "ok"}]})
    assert r.status_code == 422 and "checklist is for patrol tasks" in r.text


def test_a_patrol_replayed_from_the_offline_queue_is_done_once(client: httpx.Client, tokens: dict[str, str],
                                                               db_url: str) -> None:
    task_id = new_patrol(db_url)
    act(client, tokens, "w-001", task_id, "accept")
    task = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "w-001")).json()
    body = {"checklist": answers(task, gas={"result": "hazard", "note": "阀门漏气"})}
    headers = {**as_(tokens, "w-001")["headers"], "Idempotency-Key": str(uuid.uuid4()),
               "X-Gridhub-Client-Time": (datetime.now(SH) - timedelta(hours=2)).isoformat()}
    first = client.post(f"/api/v1/tasks/{task_id}/resolve", json=body, headers=headers)
    again = client.post(f"/api/v1/tasks/{task_id}/resolve", json=body, headers=headers)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    step = first.json()["history"][-1]
    assert step["action"] == "resolve" and "received_at" in step  # the worker's own time, and when it arrived
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE source_task_id = %s", (task_id,)).fetchone()
    assert row is not None and row[0] == 1


def test_a_rejected_patrol_is_not_done_and_resolving_it_again_opens_no_second_hazard(
        client: httpx.Client, tokens: dict[str, str], db_url: str) -> None:
    task_id = new_patrol(db_url)
    act(client, tokens, "w-001", task_id, "accept")
    task = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "w-001")).json()
    body = {"checklist": answers(task, ebike={"result": "hazard", "note": "门厅停放三辆"})}
    assert act(client, tokens, "w-001", task_id, "resolve", body).status_code == 200
    r = act(client, tokens, "w-002", task_id, "reject", {"note": "灭火器也要看有效期"})
    assert r.status_code == 200 and r.json()["state"] == "accepted"
    assert r.json()["patrol"]["done_at"] is None  # not counted as done while it is being redone
    body["checklist"] = answers(task, ebike={"result": "hazard", "note": "门厅停放三辆"},
                                extinguisher={"result": "hazard", "note": "过期"})
    again = act(client, tokens, "w-001", task_id, "resolve", body)
    assert again.status_code == 200 and again.json()["patrol"]["hazards"] == 2
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT detail->>'item', count(*) FROM tasks WHERE source_task_id = %s GROUP BY 1"
                            " ORDER BY 1", (task_id,)).fetchall()
    assert rows == [("ebike", 1), ("extinguisher", 1)]
