# ruff: noqa: F811
"""GET /api/v1/map/buildings (the board's map, issue 14) through the real app: scope per role, the worst open
alert (a cleared one does not count), buildings without coordinates listed with null lat/lon."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from apitools import ALL_WORKERS, api, as_, bearer, client, tokens  # noqa: F401
from psycopg.rows import namedtuple_row

from gridhub.auth import PRINCIPAL_SQL, principal_from_row

PATH = "/api/v1/map/buildings"
G1_ONLY = ("w-001", "w-002")
G2_ONLY = ("w-003", "w-004")


def in_scope(db_url: str, wid: str) -> set[str]:
    with psycopg.connect(db_url) as conn:
        principal = principal_from_row(conn.cursor(row_factory=namedtuple_row).execute(PRINCIPAL_SQL, (wid,)).fetchone())
        cond, params = principal.grid_filter("grid_id")
        return {r[0] for r in conn.execute(f"SELECT id FROM buildings WHERE {cond}", params)}


@pytest.fixture
def places(db_url: str) -> Iterator[dict[str, str]]:
    """Two buildings of this test's own in g-xg-02: one at a position with alerts (low and high active, critical
    cleared), one without coordinates or alerts."""
    tag = uuid.uuid4().hex[:8]
    lit, dark = f"b-map-{tag}-a", f"b-map-{tag}-b"
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO buildings (id, name, grid_id, lat, lon) VALUES (%s, '地图甲楼', 'g-xg-02', 24.45, 118.09),"
                     " (%s, '地图乙楼', 'g-xg-02', NULL, NULL)", (lit, dark))
        for i, (severity, state) in enumerate((("low", "active"), ("high", "active"), ("critical", "cleared"))):
            conn.execute("INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, state, first_seen,"
                         " last_seen) VALUES (%s, %s, %s, 'g-xg-02', 'smoke_alarm', %s, %s, %s, %s)",
                         (f"al-map-{tag}-{i}", f"dev-map-{tag}-{i}", lit, severity, state, now, now))
    try:
        yield {"lit": lit, "dark": dark}
    finally:
        with psycopg.connect(db_url) as conn:
            conn.execute("DELETE FROM alerts WHERE id LIKE %s", (f"al-map-{tag}-%",))
            conn.execute("DELETE FROM buildings WHERE id IN (%s, %s)", (lit, dark))


def test_without_a_token_it_is_401(client: httpx.Client) -> None:
    for headers in ({}, bearer("not-a-token")):
        r = client.get(PATH, headers=headers)
        assert r.status_code == 401 and r.json()["detail"]


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_scoped_by_role(client: httpx.Client, tokens: dict[str, str], wid: str, db_url: str,
                        places: dict[str, str]) -> None:
    r = client.get(PATH, **as_(tokens, wid))
    assert r.status_code == 200, r.text
    ids = [b["id"] for b in r.json()["items"]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert set(ids) == in_scope(db_url, wid)
    assert ("b-12" in ids) is (wid not in G2_ONLY) and ("b-14" in ids) is (wid not in G2_ONLY)
    assert ("b-20" in ids) is (wid not in G1_ONLY) and (places["lit"] in ids) is (wid not in G1_ONLY)


def test_worst_open_alert_and_buildings_without_coordinates(client: httpx.Client, tokens: dict[str, str],
                                                            places: dict[str, str]) -> None:
    items = {b["id"]: b for b in client.get(PATH, **as_(tokens, "w-003")).json()["items"]}
    assert items[places["lit"]] == {
        "id": places["lit"], "name": "地图甲楼", "grid_id": "g-xg-02", "grid_name": "二网格",
        "community": {"id": "shapowei", "name": "沙坡尾社区"}, "lat": 24.45, "lon": 118.09, "units": 0,
        "worst": "high", "open_alerts": 2}  # the cleared critical alert does not count
    dark = items[places["dark"]]
    assert dark["lat"] is None and dark["lon"] is None and dark["worst"] is None and dark["open_alerts"] == 0


def test_registry_positions_and_units(client: httpx.Client, tokens: dict[str, str]) -> None:
    items = {b["id"]: b for b in client.get(PATH, **as_(tokens, "a-001")).json()["items"]}
    assert (items["b-12"]["lat"], items["b-12"]["lon"]) == (24.4461, 118.0873)  # WGS-84 as stored, never shifted
    assert items["b-12"]["units"] >= 1 and items["b-14"]["lat"] is None
    assert all(b["worst"] in (None, "critical", "high", "normal", "low") for b in items.values())


def test_a_critical_alert_is_worse_than_a_high_one(client: httpx.Client, tokens: dict[str, str], db_url: str,
                                                   places: dict[str, str]) -> None:
    now = datetime.now(UTC)
    tag = places["lit"].split("-")[2]
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, state, first_seen,"
                     " last_seen) VALUES (%s, %s, %s, 'g-xg-02', 'fire_alarm', 'critical', 'active', %s, %s)",
                     (f"al-map-{tag}-9", f"dev-map-{tag}-9", places["lit"], now, now))
    items = {b["id"]: b for b in client.get(PATH, **as_(tokens, "w-004")).json()["items"]}
    assert items[places["lit"]]["worst"] == "critical" and items[places["lit"]]["open_alerts"] == 3
