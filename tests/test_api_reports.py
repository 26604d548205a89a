# ruff: noqa: F811
"""Hazard reports (社区提报, CONTRACT §7) through the real app: POST /api/v1/reports, its bounds, the report actions
confirm / dismiss / refer with their role and state rules, and the recheck a resolved hazard opens."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import psycopg
import pytest
from apitools import api, as_, bearer, client, make_incident, tiny_jpeg, tokens  # noqa: F401

from gridhub.api.limits import REPORT_BODY_BYTES, cap_for


def report(client: httpx.Client, tokens: dict[str, str], wid: str, *, photos: int = 0,
           photo: bytes | None = None, **fields: Any) -> httpx.Response:
    data = {"category": "ebike", "building": "b-12", "floor": "3", "place": "三楼楼道",
            "description": "电动自行车在楼道充电", **fields}
    data = {k: v for k, v in data.items() if v is not None}
    files = [("photos", (f"p{i}.jpg", photo if photo is not None else tiny_jpeg(), "image/jpeg"))
             for i in range(photos)]
    return client.post("/api/v1/reports", data=data, files=files or None, **as_(tokens, wid))


def opened(client: httpx.Client, tokens: dict[str, str], wid: str = "w-003", **fields: Any) -> dict[str, Any]:
    r = report(client, tokens, wid, **fields)
    assert r.status_code == 201, r.text
    return r.json()


def act(client: httpx.Client, tokens: dict[str, str], wid: str, task_id: str, action: str,
        **body: Any) -> httpx.Response:
    return client.post(f"/api/v1/tasks/{task_id}/{action}", json=body, **as_(tokens, wid))


def test_a_report_with_two_photos_opens_a_hazard_task_in_the_places_grid(
        client: httpx.Client, tokens: dict[str, str], db_url: str) -> None:
    # w-003 works in g-xg-02 and reports a hazard in g-xg-01's building b-12
    task = opened(client, tokens, "w-003", photos=2)
    assert task["type"] == "hazard" and task["severity"] == "high" and task["state"] == "open"
    assert task["grid_id"] == "g-xg-01" and task["building_id"] == "b-12"
    assert task["assignee"] == "w-001"  # §4.1: the grid's worker
    rep = task["report"]
    assert rep["category"] == "ebike" and rep["floor"] == 3 and rep["place"] == "三楼楼道"
    assert rep["reported_by"] == "w-003" and rep["confirmed"] is False and len(rep["photos"]) == 2
    steps = [(h["actor"], h["action"]) for h in task["history"]]
    assert ("w-003", "report") in steps and steps.count(("w-003", "photo")) == 2
    assert "电动自行车在楼道充电" in task["history"][0]["note"]
    # the photos are evidence of the task, readable in the grid
    r = client.get("/api/v1/evidence", params={"task": task["id"]}, **as_(tokens, "w-001"))
    assert {e["id"] for e in r.json()["items"]} == set(rep["photos"])
    img = client.get(rep["photo_urls"][0], **as_(tokens, "w-002"))
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    with psycopg.connect(db_url) as conn:
        audit = conn.execute("SELECT actor, detail FROM audit_log WHERE action = 'report.create' AND target = %s",
                             (task["id"],)).fetchone()
        assert audit is not None and audit[0] == "w-003" and len(audit[1]["photos"]) == 2
        # the assignee is told, as for an alarm's task (CONTRACT §6)
        notices = conn.execute("SELECT count(*) FROM changes WHERE entity_id = %s AND 'w-001' = ANY(recipients)",
                               (task["id"],)).fetchone()
        assert notices is not None and notices[0] >= 1


def test_the_reporter_sees_their_task_outside_their_scope(client: httpx.Client, tokens: dict[str, str]) -> None:
    task = opened(client, tokens, "w-003", photos=1)
    r = client.get(f"/api/v1/reports/{task['id']}", **as_(tokens, "w-003"))
    assert r.status_code == 200 and r.json()["history"]
    photo = r.json()["report"]["photo_urls"][0]
    assert client.get(photo, **as_(tokens, "w-003")).content[:3] == b"\xff\xd8\xff"  # their own photo too
    assert client.get(photo, **as_(tokens, "w-004")).status_code == 403
    mine = client.get("/api/v1/reports", params={"mine": "true"}, **as_(tokens, "w-003")).json()["items"]
    assert task["id"] in {t["id"] for t in mine}
    # another person of grid 2 did not report it: outside their scope
    assert client.get(f"/api/v1/reports/{task['id']}", **as_(tokens, "w-004")).status_code == 403
    # the grid's own people see it among the tasks
    assert client.get(f"/api/v1/tasks/{task['id']}", **as_(tokens, "w-002")).status_code == 200
    assert client.get("/api/v1/reports/tk-nope", **as_(tokens, "w-003")).status_code == 404
    # reading it is not acting on it: the reporter cannot confirm outside their grid
    assert act(client, tokens, "w-003", task["id"], "confirm").status_code == 403


def test_a_unit_gives_the_grid_and_building(client: httpx.Client, tokens: dict[str, str]) -> None:
    task = opened(client, tokens, "w-001", building=None, unit="u-201", category="gas")
    assert task["grid_id"] == "g-xg-02" and task["building_id"] == "b-20" and task["assignee"] == "w-003"
    shop = opened(client, tokens, "w-001", building=None, unit="u-002")  # a unit without a building
    assert shop["grid_id"] == "g-xg-01" and shop["building_id"] is None


@pytest.mark.parametrize(("fields", "words"), [
    ({"category": "arson"}, "category"),
    ({"building": "b-nope"}, "b-nope"),
    ({"building": None, "unit": "u-nope"}, "u-nope"),
    ({"building": "b-20", "unit": "u-001"}, "unit u-001 is in building b-12"),
    ({"building": None}, "building or unit is required"),
    ({"description": None}, "description"),
    ({"floor": "three"}, "floor"),
])
def test_bad_fields_are_422(client: httpx.Client, tokens: dict[str, str], fields: dict[str, Any],
                            words: str) -> None:
    r = report(client, tokens, "w-001", **fields)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]


def test_photo_bounds(client: httpx.Client, tokens: dict[str, str]) -> None:
    r = report(client, tokens, "w-001", photos=6)
    assert r.status_code == 413 and "at most 5 photos" in r.json()["detail"]
    r = report(client, tokens, "w-001", photos=1, photo=b"\xff\xd8\xff" + b"\0" * (9 * 1024 * 1024))
    assert r.status_code == 413 and "over 8 MiB" in r.json()["detail"]
    r = report(client, tokens, "w-001", photos=1, photo=b"GIF89a not a jpeg at all")
    assert r.status_code == 422 and "not a JPEG" in r.json()["detail"]
    # the body cap of this route only: 5 × 8 MiB + headroom, refused before a byte is read
    assert cap_for("/api/v1/reports", 1 << 20, 10 << 20) == REPORT_BODY_BYTES > 5 * 8 * 1024 * 1024
    assert cap_for("/api/v1/reports/x", 1 << 20, 10 << 20) == 1 << 20
    port = int(str(client.base_url).rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("POST /api/v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {tokens['w-001']}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                      f"Content-Length: {REPORT_BODY_BYTES + 1}\r\n\r\n").encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")


def test_reports_need_a_token(client: httpx.Client) -> None:
    for method, path in (("POST", "/api/v1/reports"), ("GET", "/api/v1/reports"), ("GET", "/api/v1/reports/x"),
                         ("POST", "/api/v1/tasks/x/confirm"), ("POST", "/api/v1/tasks/x/refer")):
        r = client.request(method, path, headers=bearer("garbage"))
        assert r.status_code == 401, (method, path, r.text)


def test_confirm_and_dismiss_roles_and_states(client: httpx.Client, tokens: dict[str, str], db_url: str) -> None:
    task = opened(client, tokens)
    tid = task["id"]
    assert act(client, tokens, "w-001", tid, "confirm").status_code == 403  # the assignee is not the grid head
    assert act(client, tokens, "w-004", tid, "confirm").status_code == 403  # grid 2's head: not in scope
    r = act(client, tokens, "w-001", tid, "accept")
    assert r.status_code == 409 and "立案" in r.json()["detail"]  # confirm first
    assert act(client, tokens, "w-002", tid, "dismiss").status_code == 422  # note required
    r = act(client, tokens, "w-002", tid, "confirm", note="核实属实")
    assert r.status_code == 200 and r.json()["report"]["confirmed"] and r.json()["state"] == "open"
    assert act(client, tokens, "w-002", tid, "confirm").status_code == 409  # twice
    assert act(client, tokens, "w-002", tid, "dismiss", note="x").status_code == 409  # already a case
    # dismiss: open -> closed (不予立案), by the street officer
    other = opened(client, tokens)
    r = act(client, tokens, "s-001", other["id"], "dismiss", note="非安全隐患")
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert r.json()["history"][-1]["action"] == "dismiss" and "不予立案" in r.json()["history"][-1]["note"]
    assert act(client, tokens, "s-001", other["id"], "confirm").status_code == 409  # closed
    # not a reported hazard: 409
    _alert, alarm_task = make_incident(db_url, "sa-0001", "g-xg-01", "b-12", "w-001")
    for action, body in (("confirm", {}), ("dismiss", {"note": "x"}), ("refer", {"department": "物业", "note": "x"})):
        assert act(client, tokens, "w-002", alarm_task, action, **body).status_code == 409
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE action = 'task.confirm' AND target = %s",
                           (tid,)).fetchone()
        assert row is not None and row[0] == 1


def test_refer_names_the_department_and_keeps_the_task_open(client: httpx.Client, tokens: dict[str, str]) -> None:
    tid = opened(client, tokens)["id"]
    assert act(client, tokens, "w-003", tid, "refer", department="物业", note="x").status_code == 403
    assert act(client, tokens, "w-001", tid, "refer", note="x").status_code == 422  # department required
    assert act(client, tokens, "w-001", tid, "refer", department="物业").status_code == 422  # note required
    r = act(client, tokens, "w-001", tid, "refer", department="消防救援", note="楼道堆放易燃物，请消防核查")
    assert r.status_code == 200 and r.json()["state"] == "open"
    assert r.json()["history"][-1]["note"].startswith("referred to 消防救援")
    assert r.json()["report"]["referrals"][0]["department"] == "消防救援"
    assert act(client, tokens, "w-002", tid, "confirm").status_code == 200
    assert act(client, tokens, "w-001", tid, "accept").status_code == 200
    assert act(client, tokens, "w-002", tid, "refer", department="执法中队", note="y").json()["state"] == "accepted"
    assert act(client, tokens, "w-001", tid, "resolve", resolution="fixed").status_code == 200
    assert act(client, tokens, "w-002", tid, "refer", department="物业", note="z").status_code == 409  # resolved


def test_resolving_a_confirmed_hazard_opens_a_recheck_for_the_grid_worker(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    tid = opened(client, tokens, category="escape_route")["id"]
    assert act(client, tokens, "w-002", tid, "confirm").status_code == 200
    assert act(client, tokens, "w-001", tid, "accept").status_code == 200
    r = act(client, tokens, "w-001", tid, "resolve", resolution="fixed", note="已清理")
    assert r.status_code == 200
    note = r.json()["history"][-1]["note"]
    assert r.json()["history"][-1]["action"] == "recheck"
    recheck_id = note.split()[1]
    recheck = client.get(f"/api/v1/tasks/{recheck_id}", **as_(tokens, "w-001")).json()
    assert recheck["type"] == "recheck" and recheck["severity"] == "normal" and recheck["state"] == "open"
    assert recheck["assignee"] == "w-001" and recheck["grid_id"] == "g-xg-01"
    assert tid in recheck["history"][0]["note"]
    # rework and a second resolve: the recheck still open is not doubled
    assert act(client, tokens, "w-002", tid, "reject", note="未整改到位").status_code == 200
    r = act(client, tokens, "w-001", tid, "resolve", resolution="fixed")
    assert "still open" in r.json()["history"][-1]["note"]
    # a false alarm needs no recheck
    other = opened(client, tokens)["id"]
    act(client, tokens, "w-002", other, "confirm")
    act(client, tokens, "w-001", other, "accept")
    r = act(client, tokens, "w-001", other, "resolve", resolution="false_alarm")
    assert r.json()["history"][-1]["action"] == "resolve"
    # the resident's-report path to the end: the recheck resolved and closed
    assert act(client, tokens, "w-001", recheck_id, "accept").status_code == 200
    assert act(client, tokens, "w-001", recheck_id, "resolve", resolution="fixed").json()["state"] == "resolved"
    assert act(client, tokens, "w-002", recheck_id, "close").json()["state"] == "closed"


def test_a_report_sent_twice_with_one_key_opens_one_task(client: httpx.Client, tokens: dict[str, str]) -> None:
    headers = {**bearer(tokens["w-001"]), "Idempotency-Key": "report-twice-1"}
    data = {"category": "gas", "building": "b-14", "description": "燃气味"}
    files = [("photos", ("p.jpg", tiny_jpeg(), "image/jpeg"))]
    first = client.post("/api/v1/reports", data=data, files=files, headers=headers)
    again = client.post("/api/v1/reports", data=data, files=files, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers.get("Idempotency-Replayed") == "true"
