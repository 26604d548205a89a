# ruff: noqa: F811
"""Devices, readings, commands and quarantine routes against the real app, database and broker, for every role."""

from __future__ import annotations

import json
import queue
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from apitools import ALL_WORKERS, all_pages, api, as_, bearer, client, command_listener, tokens  # noqa: F401
from psycopg.rows import namedtuple_row

from gridhub.auth import PRINCIPAL_SQL, principal_from_row

G1_DEVICES = {"sa-0001", "sa-0002", "sl-0001", "sp-0001", "cam-0001", "sa-0099"}
G2_DEVICES = {"sa-0201", "sp-0201"}
SEES = {"w-001": G1_DEVICES, "w-002": G1_DEVICES, "w-003": G2_DEVICES, "w-004": G2_DEVICES,
        "s-001": G1_DEVICES | G2_DEVICES, "b-001": G1_DEVICES | G2_DEVICES, "a-001": G1_DEVICES | G2_DEVICES}
# Readings far from "now", so that other tests' telemetry never lands in these ranges.
T0 = datetime(2025, 3, 10, 0, 0, tzinfo=UTC)  # 08:00 in Asia/Shanghai


@pytest.fixture(scope="module")
def device_data(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO device_state (device_id, online, last_seen) VALUES ('sp-0001', true, %s),"
            " ('sa-0201', false, %s) ON CONFLICT (device_id) DO UPDATE SET online = EXCLUDED.online,"
            " last_seen = EXCLUDED.last_seen", (T0, T0))
        conn.execute(
            "UPDATE device_state SET latest = '{\"pressure_mpa\": 0.31}', latest_ts = jsonb_build_object("
            "'pressure_mpa', (extract(epoch FROM %s::timestamptz) * 1000)::bigint) WHERE device_id = 'sp-0001'", (T0,))
        with conn.cursor().copy("COPY readings (ts, device_id, seq, metric, value) FROM STDIN") as cp:
            # every 10 minutes for 2 days from 2025-03-09 16:00 UTC (= 2025-03-10 00:00 in Shanghai)
            start = T0 - timedelta(hours=8)
            for i in range(2 * 24 * 6):
                cp.write_row((start + timedelta(minutes=10 * i), "sp-0201", i, "pressure_mpa", 0.30 + (i % 6) / 100))
        with conn.cursor().copy("COPY readings (ts, device_id, seq, metric, value_json) FROM STDIN") as cp:
            for i in range(6):
                cp.write_row((T0 + timedelta(minutes=i), "sl-0001", i, "lamp_on", json.dumps(i % 2 == 0)))


def test_without_or_with_a_bad_token_every_device_route_is_401(client: httpx.Client) -> None:
    routes = [("GET", "/api/v1/devices"), ("GET", "/api/v1/devices/sa-0001"),
              ("GET", "/api/v1/devices/sa-0001/readings?metric=battery_pct"),
              ("POST", "/api/v1/devices/sa-0001/commands"), ("GET", "/api/v1/quarantine")]
    for method, path in routes:
        for headers in ({}, bearer("not-a-token"), bearer("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhLTAwMSJ9.x")):
            r = client.request(method, path, headers=headers, json={"type": "self_test"})
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["detail"]


def devices_in_scope(db_url: str, wid: str) -> set[str]:
    """What the worker's scope holds now (other tests add devices to these grids in a shared session)."""
    with psycopg.connect(db_url) as conn:
        principal = principal_from_row(conn.cursor(row_factory=namedtuple_row).execute(PRINCIPAL_SQL, (wid,)).fetchone())
        cond, params = principal.grid_filter("b.grid_id")
        return {r[0] for r in conn.execute(
            f"SELECT d.id FROM devices d JOIN buildings b ON b.id = d.building_id WHERE {cond}", params)}


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_device_list_is_scoped_by_role(client: httpx.Client, tokens: dict[str, str], wid: str, db_url: str,
                                       device_data: None) -> None:
    items = all_pages(client, "/api/v1/devices", bearer(tokens[wid]), limit=2)
    ids = {d["id"] for d in items}
    assert ids == devices_in_scope(db_url, wid)
    assert SEES[wid] <= ids and not ((G1_DEVICES | G2_DEVICES) - SEES[wid]) & ids
    assert len(ids) == len(items)
    assert [d["id"] for d in items] == sorted(d["id"] for d in items)
    for d in items:
        assert set(d) >= {"id", "kind", "grid_id", "building_id", "floor", "place", "online", "last_seen", "latest"}


def test_device_list_filters(client: httpx.Client, tokens: dict[str, str], device_data: None) -> None:
    h = bearer(tokens["b-001"])
    sprinklers = all_pages(client, "/api/v1/devices", h, kind="sprinkler_pressure")
    assert {"sp-0001", "sp-0201"} <= {d["id"] for d in sprinklers}
    assert {d["kind"] for d in sprinklers} == {"sprinkler_pressure"}
    in_g2 = all_pages(client, "/api/v1/devices", h, grid="g-xg-02")
    assert {d["id"] for d in in_g2} >= G2_DEVICES and {d["grid_id"] for d in in_g2} == {"g-xg-02"}
    assert {d["id"] for d in all_pages(client, "/api/v1/devices", h, community="shapowei")} >= G1_DEVICES | G2_DEVICES
    assert {d["id"] for d in all_pages(client, "/api/v1/devices", h, community="nowhere")} == set()
    online = all_pages(client, "/api/v1/devices", h, online="true")
    assert "sp-0001" in {d["id"] for d in online} and all(d["online"] for d in online)
    assert "sp-0001" not in {d["id"] for d in all_pages(client, "/api/v1/devices", h, online="false")}
    r = client.get("/api/v1/devices", params={"kind": "toaster"}, headers=h)
    assert r.status_code == 422 and "kind" in r.json()["detail"]
    r = client.get("/api/v1/devices", params={"grid": "g-xg-02"}, **as_(tokens, "w-001"))
    assert r.status_code == 403 and "g-xg-02" in r.json()["detail"]


def test_device_list_pagination_and_limits(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = bearer(tokens["a-001"])
    first = client.get("/api/v1/devices", params={"limit": 3}, headers=h).json()
    assert len(first["items"]) == 3 and first["next"]
    second = client.get("/api/v1/devices", params={"limit": 3, "cursor": first["next"]}, headers=h).json()
    assert first["items"][-1]["id"] < second["items"][0]["id"]
    assert client.get("/api/v1/devices", params={"limit": 5000}, headers=h).status_code == 200  # served at the cap
    for bad in ({"limit": 0}, {"limit": "x"}, {"cursor": "garbage!"}, {"cursor": "WyJhIiwiYiJd"}):
        r = client.get("/api/v1/devices", params=bad, headers=h)
        assert r.status_code == 422, (bad, r.text)


def test_one_device_with_location_and_latest(client: httpx.Client, tokens: dict[str, str], device_data: None) -> None:
    r = client.get("/api/v1/devices/sp-0001", **as_(tokens, "w-001"))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["online"] is True and d["latest"]["pressure_mpa"] == 0.31
    assert datetime.fromisoformat(d["last_seen"]) == T0 and d["last_seen"].endswith("+08:00")
    loc = d["location"]
    assert loc["district"] == {"id": "siming", "name": "思明区"}
    assert loc["street"]["name"] == "厦港街道" and loc["community"]["name"] == "沙坡尾社区"
    assert loc["grid"] == {"id": "g-xg-01", "name": "一网格"} and loc["building"]["name"] == "12号楼"
    assert loc["floor"] == 1
    cam = client.get("/api/v1/devices/cam-0001", **as_(tokens, "w-001")).json()
    assert cam["location"]["place"] == "一楼安全出口" and cam["latest"] == {} and cam["online"] is False


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_one_device_outside_scope_is_403_and_unknown_is_404(client: httpx.Client, tokens: dict[str, str],
                                                             wid: str) -> None:
    for dev in ("sa-0001", "sa-0201"):
        expected = 200 if dev in SEES[wid] else 403
        assert client.get(f"/api/v1/devices/{dev}", **as_(tokens, wid)).status_code == expected
        r = client.get(f"/api/v1/devices/{dev}/readings", params={"metric": "battery_pct"}, **as_(tokens, wid))
        assert r.status_code == expected
    r = client.get("/api/v1/devices/sa-9999", **as_(tokens, wid))
    assert r.status_code == 404 and "sa-9999" in r.json()["detail"]
    assert client.get("/api/v1/devices/sa-9999/readings?metric=x", **as_(tokens, wid)).status_code == 404


def test_raw_readings_oldest_first_in_range(client: httpx.Client, tokens: dict[str, str], device_data: None) -> None:
    start = T0.isoformat()
    end = (T0 + timedelta(hours=1)).isoformat()
    r = client.get("/api/v1/devices/sp-0201/readings", params={"metric": "pressure_mpa", "start": start, "end": end},
                   **as_(tokens, "w-003"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["device_id"] == "sp-0201" and body["metric"] == "pressure_mpa"
    times = [datetime.fromisoformat(p["ts"]) for p in body["points"]]
    assert len(times) == 6 and times == sorted(times) and times[0] == T0  # start inclusive, end exclusive
    assert all(p["ts"].endswith("+08:00") for p in body["points"])
    lamp = client.get("/api/v1/devices/sl-0001/readings", params={"metric": "lamp_on", "start": start, "end": end},
                      **as_(tokens, "w-001")).json()
    assert [p["value"] for p in lamp["points"]] == [True, False, True, False, True, False]


def test_bucketed_readings_align_in_the_district_time_zone(client: httpx.Client, tokens: dict[str, str],
                                                           device_data: None) -> None:
    start = T0 - timedelta(hours=8)  # 2025-03-10 00:00+08:00
    params = {"metric": "pressure_mpa", "start": "2025-03-10T00:00:00+08:00", "end": "2025-03-12T00:00:00+08:00",
              "bucket": "1d"}
    days = client.get("/api/v1/devices/sp-0201/readings", params=params, **as_(tokens, "b-001")).json()["points"]
    assert [p["ts"] for p in days] == ["2025-03-10T00:00:00+08:00", "2025-03-11T00:00:00+08:00"]
    assert [p["count"] for p in days] == [144, 144]
    assert days[0]["min"] == pytest.approx(0.30) and days[0]["max"] == pytest.approx(0.35)
    assert days[0]["avg"] == pytest.approx(0.325)
    hours = client.get("/api/v1/devices/sp-0201/readings", **as_(tokens, "b-001"),
                       params={**params, "bucket": "1h", "start": start.isoformat(),
                               "end": (start + timedelta(hours=3, minutes=30)).isoformat()}).json()["points"]
    assert [p["count"] for p in hours] == [6, 6, 6, 3]
    assert datetime.fromisoformat(hours[1]["ts"]) == start + timedelta(hours=1)
    six = client.get("/api/v1/devices/sp-0201/readings", **as_(tokens, "b-001"),
                     params={**params, "bucket": "6h", "start": "2025-03-10T03:00:00+08:00"}).json()["points"]
    assert six[0]["ts"] == "2025-03-10T00:00:00+08:00" and six[0]["count"] == 18  # bucket start, partial range
    lamp = client.get("/api/v1/devices/sl-0001/readings", **as_(tokens, "w-001"),
                      params={"metric": "lamp_on", "bucket": "1h", "start": T0.isoformat(),
                              "end": (T0 + timedelta(hours=1)).isoformat()}).json()["points"]
    assert lamp == [{"ts": "2025-03-10T08:00:00+08:00", "min": 0.0, "max": 1.0, "avg": 0.5, "count": 6}]


def test_readings_defaults_and_bad_parameters(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = as_(tokens, "a-001")
    r = client.get("/api/v1/devices/sp-0201/readings", params={"metric": "pressure_mpa"}, **h)
    assert r.status_code == 200
    body = r.json()
    span = datetime.fromisoformat(body["end"]) - datetime.fromisoformat(body["start"])
    assert span == timedelta(hours=24)
    bad = [{}, {"metric": "pressure_mpa", "bucket": "2h"}, {"metric": "pressure_mpa", "start": "2025-03-10T00:00:00"},
           {"metric": "pressure_mpa", "start": "yesterday"},
           {"metric": "pressure_mpa", "start": "2025-03-11T00:00:00Z", "end": "2025-03-10T00:00:00Z"},
           {"metric": "pressure_mpa", "start": "2000-01-01T00:00:00Z", "end": "2025-01-01T00:00:00Z", "bucket": "1m"}]
    for params in bad:
        r = client.get("/api/v1/devices/sp-0201/readings", params=params, **h)
        assert r.status_code == 422, (params, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_commands_by_role_and_scope(client: httpx.Client, tokens: dict[str, str], wid: str, settings: Any,
                                    command_listener: queue.Queue[tuple[str, bytes]]) -> None:
    allowed_role = wid in ("w-002", "w-004", "s-001", "a-001")
    for dev in ("sa-0001", "sa-0201"):
        r = client.post(f"/api/v1/devices/{dev}/commands", json={"type": "self_test"}, **as_(tokens, wid))
        if not allowed_role:
            assert r.status_code == 403, r.text
            continue
        if dev not in SEES[wid]:
            assert r.status_code == 403 and "scope" in r.json()["detail"]
            continue
        assert r.status_code == 202, r.text
        sent = r.json()
        topic, payload = command_listener.get(timeout=10)
        assert topic == f"{settings.topic_prefix}/devices/{dev}/command"
        assert json.loads(payload) == {"id": sent["id"], "type": "self_test"}
    assert command_listener.empty()


def test_command_errors(client: httpx.Client, tokens: dict[str, str],
                        command_listener: queue.Queue[tuple[str, bytes]]) -> None:
    h = as_(tokens, "a-001")
    for body in ({}, {"type": "explode"}, {"type": 3}):
        r = client.post("/api/v1/devices/sa-0001/commands", json=body, **h)
        assert r.status_code == 422 and "type" in r.json()["detail"]
    assert client.post("/api/v1/devices/sa-9999/commands", json={"type": "silence"}, **h).status_code == 404
    r = client.post("/api/v1/devices/sa-0099/commands", json={"type": "silence"}, **h)
    assert r.status_code == 409 and "retired" in r.json()["detail"]
    assert command_listener.empty()


@pytest.fixture(scope="module")
def quarantined(db_url: str) -> list[int]:
    marker = uuid.uuid4().hex[:8]
    ids = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for i, reason in enumerate(["invalid_json", "schema", "invalid_json", "bad_topic"]):
            row = conn.execute(
                "INSERT INTO quarantine (received_at, topic, device_id, reason, detail, payload) VALUES"
                " (now() + %s * interval '1 ms', %s, %s, %s, %s, %s) RETURNING id",
                (i, f"gridhub/v1/devices/q-{marker}/telemetry", f"q-{marker}", reason, f"detail {i}", "{bad"),
            ).fetchone()
            assert row
            ids.append(row[0])
    return ids


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_quarantine_is_admin_only(client: httpx.Client, tokens: dict[str, str], wid: str,
                                  quarantined: list[int]) -> None:
    r = client.get("/api/v1/quarantine", **as_(tokens, wid))
    assert r.status_code == (200 if wid == "a-001" else 403)


def test_quarantine_newest_first_paginated_and_filtered(client: httpx.Client, tokens: dict[str, str],
                                                        quarantined: list[int]) -> None:
    h = bearer(tokens["a-001"])
    items = all_pages(client, "/api/v1/quarantine", h, limit=1)
    mine = [q for q in items if q["id"] in {str(i) for i in quarantined}]
    assert [q["id"] for q in mine] == [str(i) for i in reversed(quarantined)]
    stamps = [datetime.fromisoformat(q["received_at"]) for q in items]
    assert stamps == sorted(stamps, reverse=True)
    q = mine[0]
    assert set(q) >= {"id", "received_at", "topic", "device_id", "reason", "detail", "payload"}
    assert q["reason"] == "bad_topic" and q["payload"] == "{bad"
    only = all_pages(client, "/api/v1/quarantine", h, reason="invalid_json")
    assert {q["reason"] for q in only} == {"invalid_json"}
    assert {str(quarantined[0]), str(quarantined[2])} <= {q["id"] for q in only}
    assert client.get("/api/v1/quarantine", params={"reason": "nope"}, headers=h).status_code == 422


def test_a_command_while_the_broker_is_unreachable_is_a_503(settings: Any, passwords: dict[str, str]) -> None:
    from apitools import free_port, serve

    running = serve(settings.model_copy(update={"mqtt_url": f"mqtt://nobody:nothing@127.0.0.1:{free_port()}"}))
    try:
        with httpx.Client(base_url=running.url, timeout=60) as c:
            token = c.post("/api/v1/auth/token", data={"username": "a-001", "password": passwords["a-001"]})
            r = c.post("/api/v1/devices/sa-0001/commands", json={"type": "snapshot"},
                       headers=bearer(token.json()["access_token"]))
            assert r.status_code == 503 and "broker" in r.json()["detail"]
    finally:
        running.stop()
