# ruff: noqa: F811
"""Alerts, tasks, task actions, photos, evidence, summary and KPIs through the real app, for every role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from apitools import (  # noqa: F401
    ALL_WORKERS,
    all_pages,
    api,
    as_,
    bearer,
    client,
    make_incident,
    tiny_jpeg,
    tokens,
)

from gridhub.alerts.shapes import task_shape

G1_PEOPLE = {"w-001", "w-002", "s-001", "b-001", "a-001"}
G2_PEOPLE = {"w-003", "w-004", "s-001", "b-001", "a-001"}


@pytest.fixture(scope="module")
def g1(db_url: str) -> tuple[str, str]:
    return make_incident(db_url, "sa-0001", "g-xg-01", "b-12", "w-001")


@pytest.fixture(scope="module")
def g2(db_url: str) -> tuple[str, str]:
    return make_incident(db_url, "sa-0201", "g-xg-02", "b-20", "w-003", alert_type="exit_blocked", severity="high")


def test_every_route_needs_a_valid_token(client: httpx.Client, g1: tuple[str, str]) -> None:
    alert_id, task_id = g1
    routes = [("GET", "/api/v1/alerts"), ("POST", f"/api/v1/alerts/{alert_id}/ack"), ("GET", "/api/v1/tasks"),
              ("GET", f"/api/v1/tasks/{task_id}"), ("POST", f"/api/v1/tasks/{task_id}/accept"),
              ("POST", f"/api/v1/tasks/{task_id}/photos"), ("GET", "/api/v1/evidence"),
              ("GET", "/api/v1/evidence/ev-x"), ("GET", "/api/v1/summary"), ("GET", "/api/v1/kpis"),
              ("GET", "/api/v1/stream"), ("GET", "/api/v1/me")]
    for method, path in routes:
        for headers in ({}, bearer("garbage"), bearer(tokens_signed_by_someone_else())):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["detail"]
    r = client.get("/api/v1/stream", params={"access_token": "garbage"})
    assert r.status_code == 401


def tokens_signed_by_someone_else() -> str:
    from gridhub.auth import issue_token

    return issue_token("a-001", "another-key-" + "y" * 40, 3600, 1.0)


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_alert_list_and_one_task_are_scoped(client: httpx.Client, tokens: dict[str, str], wid: str,
                                            g1: tuple[str, str], g2: tuple[str, str]) -> None:
    ids = {a["id"] for a in all_pages(client, "/api/v1/alerts", bearer(tokens[wid]))}
    assert (g1[0] in ids) == (wid in G1_PEOPLE)
    assert (g2[0] in ids) == (wid in G2_PEOPLE)
    task_ids = {t["id"] for t in all_pages(client, "/api/v1/tasks", bearer(tokens[wid]))}
    assert (g1[1] in task_ids) == (wid in G1_PEOPLE)
    assert (g2[1] in task_ids) == (wid in G2_PEOPLE)
    for (_alert_id, task_id), people in ((g1, G1_PEOPLE), (g2, G2_PEOPLE)):
        r = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, wid))
        assert r.status_code == (200 if wid in people else 403), r.text
    assert client.get("/api/v1/tasks/tk-nope", **as_(tokens, wid)).status_code == 404
    assert client.post("/api/v1/alerts/al-nope/ack", **as_(tokens, wid)).status_code == 404
    assert client.post("/api/v1/tasks/tk-nope/comment", json={"note": "x"}, **as_(tokens, wid)).status_code == 404
    assert client.get("/api/v1/evidence/ev-nope", **as_(tokens, wid)).status_code == 404


def test_task_shape_matches_the_alert_engines(client: httpx.Client, tokens: dict[str, str], db_url: str,
                                              g1: tuple[str, str]) -> None:
    r = client.get(f"/api/v1/tasks/{g1[1]}", **as_(tokens, "w-001"))
    body = r.json()
    with psycopg.connect(db_url) as conn:
        engine = task_shape(conn, g1[1])
    assert engine is not None
    for key, value in engine.items():
        assert body[key] == value, key
    assert [a["id"] for a in body["alerts"]] == [g1[0]] and body["alerts"][0]["type"] == "fire_alarm"
    assert body["location"] == {"grid": "一网格", "building": "12号楼", "floor": 3, "place": "301 厨房",
                                "device_kind": "smoke_alarm"}
    listed = [t for t in all_pages(client, "/api/v1/tasks", bearer(tokens["w-001"])) if t["id"] == g1[1]]
    assert listed[0] == {k: v for k, v in body.items() if k != "alerts"}


def test_alert_filters_pagination_and_ack(client: httpx.Client, tokens: dict[str, str], g1: tuple[str, str],
                                          g2: tuple[str, str]) -> None:
    h = bearer(tokens["b-001"])
    everything = all_pages(client, "/api/v1/alerts", h, limit=1)
    stamps = [(datetime.fromisoformat(a["last_seen"]), a["id"]) for a in everything]
    assert stamps == sorted(stamps, reverse=True)
    assert len({a["id"] for a in everything}) == len(everything)
    assert {a["id"] for a in all_pages(client, "/api/v1/alerts", h, type="exit_blocked")} >= {g2[0]}
    assert all(a["severity"] == "high" for a in all_pages(client, "/api/v1/alerts", h, severity="high"))
    twin = next(a for a in everything if a["id"] == g2[0])["device_id"]
    assert [a["id"] for a in all_pages(client, "/api/v1/alerts", h, device=twin, state="active")] == [g2[0]]
    assert client.get("/api/v1/alerts", params={"severity": "urgent"}, headers=h).status_code == 422
    assert client.get("/api/v1/alerts", params={"grid": "g-xg-02"}, **as_(tokens, "w-001")).status_code == 403
    assert client.post(f"/api/v1/alerts/{g2[0]}/ack", **as_(tokens, "w-001")).status_code == 403
    r = client.post(f"/api/v1/alerts/{g2[0]}/ack", **as_(tokens, "w-004"))
    assert r.status_code == 200 and r.json()["acked"] is True
    assert client.post(f"/api/v1/alerts/{g2[0]}/ack", **as_(tokens, "w-003")).json()["acked"] is True


def test_task_filters(client: httpx.Client, tokens: dict[str, str], g1: tuple[str, str], db_url: str) -> None:
    _, task_id = make_incident(db_url, "sl-0001", "g-xg-01", "b-12", "w-002", alert_type="light_fault",
                               severity="normal")
    h = bearer(tokens["w-002"])
    mine = all_pages(client, "/api/v1/tasks", h, assignee="me")
    assert task_id in {t["id"] for t in mine} and all(t["assignee"] == "w-002" for t in mine)
    assert {t["id"] for t in all_pages(client, "/api/v1/tasks", h, assignee="w-001")} >= {g1[1]}
    normal = all_pages(client, "/api/v1/tasks", h, severity="normal,low")
    assert task_id in {t["id"] for t in normal} and g1[1] not in {t["id"] for t in normal}
    assert all(t["state"] in ("open", "accepted") for t in all_pages(client, "/api/v1/tasks", h, state="open,accepted"))
    assert client.get("/api/v1/tasks", params={"state": "done"}, headers=h).status_code == 422
    assert client.get("/api/v1/tasks", params={"grid": "g-xg-02"}, headers=h).status_code == 403
    pages = all_pages(client, "/api/v1/tasks", bearer(tokens["a-001"]), limit=1)
    opened = [(datetime.fromisoformat(t["opened_at"]), t["id"]) for t in pages]
    assert opened == sorted(opened, reverse=True)


def test_the_task_lifecycle_through_the_state_machine(client: httpx.Client, tokens: dict[str, str],
                                                      db_url: str) -> None:
    alert_id, task_id = make_incident(db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    url = f"/api/v1/tasks/{task_id}"

    def act(wid: str, action: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return client.post(f"{url}/{action}", json=body, **as_(tokens, wid))

    assert act("w-003", "accept").status_code == 403  # outside scope
    r = act("w-001", "arrive")
    assert r.status_code == 409 and "open" in r.json()["detail"]
    assert act("w-001", "close").status_code == 403  # a grid worker never closes
    assert act("w-001", "dance").status_code == 422
    assert act("w-001", "accept", {"surprise": 1}).status_code == 422
    r = act("w-001", "accept")
    assert r.status_code == 200 and r.json()["state"] == "accepted"
    alert = [a for a in all_pages(client, "/api/v1/alerts", bearer(tokens["w-001"])) if a["id"] == alert_id][0]
    assert alert["acked"] is True
    assert act("b-001", "arrive").status_code == 403
    assert act("w-001", "accept").status_code == 409
    assert act("w-001", "arrive").json()["state"] == "on_site"
    r = act("w-001", "resolve", {"note": "烟雾来自做饭"})
    assert r.status_code == 422 and "resolution" in r.json()["detail"]
    assert act("w-001", "resolve", {"resolution": "maybe"}).status_code == 422
    assert act("w-001", "resolve", {"resolution": "false_alarm", "note": "烟雾来自做饭"}).json()["state"] == "resolved"
    assert act("w-002", "reject").status_code == 422  # a reason is required
    assert act("w-002", "reject", {"note": "请拍照"}).json()["state"] == "accepted"
    assert act("w-001", "resolve", {"resolution": "false_alarm"}).json()["state"] == "resolved"
    assert act("w-004", "close").status_code == 403  # another grid's head
    r = act("b-001", "close", {"note": "核查结案"})
    assert r.status_code == 200 and r.json()["state"] == "closed"
    for wid, action in (("w-001", "accept"), ("w-002", "reassign"), ("w-002", "extend"), ("w-001", "return")):
        assert act(wid, action, {"note": "x", "worker_id": "w-001",
                                 "until": "2030-01-01T00:00:00+08:00"}).status_code == 409, (wid, action)
    assert act("s-001", "comment", {"note": "已复查"}).status_code == 200
    history = client.get(url, **as_(tokens, "b-001")).json()["history"]
    assert [h["action"] for h in history] == ["open", "accept", "arrive", "resolve", "reject", "resolve", "close",
                                              "comment"]
    assert history[1]["actor"] == "w-001" and history[-1]["note"] == "已复查"


def test_supervisor_actions(client: httpx.Client, tokens: dict[str, str], db_url: str) -> None:
    _, task_id = make_incident(db_url, "sl-0001", "g-xg-01", "b-12", "w-001", alert_type="device_offline",
                               severity="normal")
    url = f"/api/v1/tasks/{task_id}"
    r = client.post(f"{url}/extend", json={"until": "2099-01-01T08:00:00+08:00", "note": "等配件"},
                    **as_(tokens, "w-002"))
    assert r.status_code == 200 and datetime.fromisoformat(r.json()["resolve_due"]).year == 2099
    r = client.post(f"{url}/extend", json={"until": "2099-01-01T08:00:00"}, **as_(tokens, "w-002"))
    assert r.status_code == 422  # a time without offset
    r = client.post(f"{url}/reassign", json={"worker_id": "w-003"}, **as_(tokens, "w-002"))
    assert r.status_code == 422 and "w-003" in r.json()["detail"]  # not responsible for the grid
    assert client.post(f"{url}/reassign", json={"worker_id": "w-002"}, **as_(tokens, "w-001")).status_code == 403
    r = client.post(f"{url}/reassign", json={"worker_id": "w-002"}, **as_(tokens, "a-001"))
    assert r.status_code == 200 and r.json()["assignee"] == "w-002" and r.json()["state"] == "open"
    r = client.post(f"{url}/return", json={"note": "不是我的"}, **as_(tokens, "w-001"))
    assert r.status_code == 403  # no longer the assignee
    r = client.post(f"{url}/accept", **as_(tokens, "s-001"))
    assert r.status_code == 200 and r.json()["assignee"] == "s-001"


def test_photos_and_evidence(client: httpx.Client, tokens: dict[str, str], g2: tuple[str, str]) -> None:
    _, task_id = g2
    url = f"/api/v1/tasks/{task_id}/photos"
    jpeg = tiny_jpeg()

    def upload(wid: str, data: bytes, name: str = "p.jpg") -> httpx.Response:
        return client.post(url, files={"photo": (name, data, "image/jpeg")}, data={"note": "电动车已清走"},
                           **as_(tokens, wid))

    assert upload("w-001", jpeg).status_code == 403  # outside scope
    assert upload("w-004", jpeg).status_code == 403  # in scope, not the assignee
    assert upload("w-003", b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9").status_code == 422
    assert upload("w-003", b"GIF89a....").status_code == 422
    r = client.post(url, data={"note": "no file"}, **as_(tokens, "w-003"))
    assert r.status_code == 422
    r = upload("w-003", jpeg)
    assert r.status_code == 201, r.text
    evidence_id = r.json()["id"]
    history = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "w-003")).json()["history"]
    assert history[-1]["action"] == "photo" and evidence_id in history[-1]["note"]
    assert "电动车已清走" in history[-1]["note"]
    for wid in ALL_WORKERS:
        r = client.get(f"/api/v1/evidence/{evidence_id}", **as_(tokens, wid))
        assert r.status_code == (200 if wid in G2_PEOPLE else 403), wid
        if r.status_code == 200:
            assert r.headers["content-type"] == "image/jpeg" and r.content == jpeg
        listed = {e["id"] for e in all_pages(client, "/api/v1/evidence", bearer(tokens[wid]), task=task_id)}
        assert (evidence_id in listed) == (wid in G2_PEOPLE)
    assert client.post("/api/v1/tasks/tk-nope/photos", files={"photo": ("p.jpg", jpeg, "image/jpeg")},
                       **as_(tokens, "w-003")).status_code == 404


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_summary_by_role(client: httpx.Client, tokens: dict[str, str], wid: str, db_url: str,
                         g1: tuple[str, str], g2: tuple[str, str]) -> None:
    r = client.get("/api/v1/summary", **as_(tokens, wid))
    if wid.startswith("w-"):
        assert r.status_code == 403
        return
    assert r.status_code == 200, r.text
    streets = r.json()["streets"]
    assert [s["name"] for s in streets] == ["厦港街道"]
    grids = {g["id"]: g for g in streets[0]["communities"][0]["grids"]}
    assert set(grids) == {"g-xg-01", "g-xg-02"}
    with psycopg.connect(db_url) as conn:
        for gid, cell in grids.items():
            active: dict[str, int] = dict(conn.execute("SELECT severity, count(*) FROM alerts WHERE state = 'active' AND grid_id = %s"
                                       " GROUP BY severity", (gid,)).fetchall())
            assert cell["alerts"] == {s: active.get(s, 0) for s in ("critical", "high", "normal", "low")}
            row = conn.execute("SELECT count(*) FROM tasks WHERE state <> 'closed' AND NOT drill AND grid_id = %s",
                               (gid,)).fetchone()  # drills (演练) are left out of the summary
            assert row and cell["tasks"]["open"] == row[0]
            devices = conn.execute("SELECT count(*) FROM devices d JOIN buildings b ON b.id = d.building_id"
                                   " WHERE b.grid_id = %s AND NOT d.retired", (gid,)).fetchone()
            assert devices and cell["devices"]["online"] + cell["devices"]["offline"] == devices[0]
        assert grids["g-xg-01"]["alerts"]["critical"] >= 1 and grids["g-xg-02"]["alerts"]["high"] >= 1


def test_summary_counts_overdue_tasks(client: httpx.Client, tokens: dict[str, str], db_url: str) -> None:
    before = client.get("/api/v1/summary", **as_(tokens, "b-001")).json()
    make_incident(db_url, "sp-0201", "g-xg-02", "b-20", "w-003", alert_type="sprinkler_low", severity="high",
                  accept_in_s=-60)
    after = client.get("/api/v1/summary", **as_(tokens, "b-001")).json()

    def cell(s: dict[str, Any]) -> dict[str, Any]:
        return {g["id"]: g for g in s["streets"][0]["communities"][0]["grids"]}["g-xg-02"]

    assert cell(after)["tasks"]["overdue"] == cell(before)["tasks"]["overdue"] + 1
    assert cell(after)["tasks"]["open"] == cell(before)["tasks"]["open"] + 1


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_kpis_by_role(client: httpx.Client, tokens: dict[str, str], wid: str) -> None:
    r = client.get("/api/v1/kpis", params={"level": "community"}, **as_(tokens, wid))
    if ALL_ROLES[wid] == "grid_worker":
        assert r.status_code == 403
        return
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["level"] == "community"
    end = datetime.now(UTC)
    assert [c["id"] for c in body["items"]] == ["shapowei"]
    r = client.get("/api/v1/kpis", params={"level": "grid", "start": (end - timedelta(days=1)).isoformat(),
                                           "end": (end + timedelta(days=2)).isoformat()}, **as_(tokens, wid))
    assert r.status_code == 200
    grids = {g["id"]: g for g in r.json()["items"]}
    assert set(grids) == {"w-002": {"g-xg-01"}, "w-004": {"g-xg-02"}}.get(wid, {"g-xg-01", "g-xg-02"})
    for g in grids.values():
        assert set(g) >= {"closure_rate", "on_time_closure_rate", "mean_accept_s", "mean_resolve_s"}
    assert client.get("/api/v1/kpis", params={"level": "city"}, **as_(tokens, wid)).status_code == 422
    assert client.get("/api/v1/kpis", params={"start": "2025-01-02T00:00:00Z", "end": "2025-01-01T00:00:00Z"},
                      **as_(tokens, wid)).status_code == 422


ALL_ROLES = {"w-001": "grid_worker", "w-002": "grid_head", "w-003": "grid_worker", "w-004": "grid_head",
             "s-001": "street_officer", "b-001": "bureau", "a-001": "admin"}


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_ack_and_comment_by_role(client: httpx.Client, tokens: dict[str, str], wid: str, g1: tuple[str, str],
                                 g2: tuple[str, str]) -> None:
    for (alert_id, task_id), people in ((g1, G1_PEOPLE), (g2, G2_PEOPLE)):
        expected = 200 if wid in people else 403
        r = client.post(f"/api/v1/alerts/{alert_id}/ack", **as_(tokens, wid))
        assert r.status_code == expected, r.text
        if expected == 200:
            assert r.json()["acked"] is True
        r = client.post(f"/api/v1/tasks/{task_id}/comment", json={"note": f"{wid} 已阅"}, **as_(tokens, wid))
        assert r.status_code == expected, r.text
        if expected == 200:
            assert r.json()["history"][-1] == {**r.json()["history"][-1], "actor": wid, "action": "comment"}
        assert client.post(f"/api/v1/tasks/{task_id}/comment", json={}, **as_(tokens, wid)).status_code == (
            422 if expected == 200 else 403)
