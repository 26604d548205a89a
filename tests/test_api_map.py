# ruff: noqa: F811
"""GET /api/v1/map/buildings (the board's map, issue 14) through the real app: scope per role (buildings by their
grid, units by theirs), the worst open alert (a cleared one does not count), buildings and units without coordinates
listed with null lat/lon, and the marker's status: critical > high alert > open hazard task > overdue patrol >
normal/low alert > clear. Patrol rows are inserted directly (a `tasks` row of type patrol and its `patrols` row)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

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
        "worst": "high", "open_alerts": 2,  # the cleared critical alert does not count
        "hazards": 0, "overdue_patrols": 0, "status": "high"}
    dark = items[places["dark"]]
    assert dark["lat"] is None and dark["lon"] is None and dark["worst"] is None and dark["open_alerts"] == 0
    assert dark["status"] == "clear"


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


# ---------------------------------------------------------------- patrols and hazards colour the markers too

class Place:
    """A building with a position in g-xg-02 and two units in it (and one in g-xg-01 without a building), all this
    test's own; tasks, patrols and alerts added through `patrol`, `hazard`, `alert` are removed afterwards."""

    def __init__(self, db_url: str) -> None:
        self.db_url, self.tag = db_url, uuid.uuid4().hex[:8]
        self.building = f"b-pm-{self.tag}"
        self.unit, self.other, self.loose = f"u-pm-{self.tag}-a", f"u-pm-{self.tag}-b", f"u-pm-{self.tag}-c"
        self.n = 0

    def _id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-pm-{self.tag}-{self.n}"

    def _task(self, conn: psycopg.Connection[Any], kind: str, unit: str, *, state: str = "open",
              severity: str = "normal", building: str | None = None) -> str:
        task_id, now = self._id("tk"), datetime.now(UTC)
        conn.execute("INSERT INTO tasks (id, type, severity, state, grid_id, building_id, unit_id, opened_at, last_seen,"
                     " incident_key, closed_at) VALUES (%s, %s, %s, %s, 'g-xg-02', %s, %s, %s, %s, %s, %s)",
                     (task_id, kind, severity, state, building or self.building, unit, now, now, task_id,
                      now if state == "closed" else None))
        return task_id

    def patrol(self, unit: str, *, ends_in: timedelta, done: bool = False, state: str = "open") -> str:
        now = datetime.now(UTC)
        with psycopg.connect(self.db_url) as conn:
            task_id = self._task(conn, "patrol", unit, state=state)
            conn.execute("INSERT INTO patrols (task_id, unit_id, class, frequency, period_start, period_end,"
                         " planned_for, checklist, done_at) VALUES (%s, %s, 'key', 'quarterly', %s, %s, %s,"
                         " '[]'::jsonb, %s)", (task_id, unit, now + ends_in - timedelta(days=90), now + ends_in,
                                               (now + ends_in - timedelta(days=45)).date(), now if done else None))
        return task_id

    def hazard(self, unit: str, *, state: str = "open") -> str:
        with psycopg.connect(self.db_url) as conn:
            return self._task(conn, "hazard", unit, state=state, severity="high")

    def alert(self, severity: str) -> str:
        alert_id, now = self._id("al"), datetime.now(UTC)
        with psycopg.connect(self.db_url) as conn:
            conn.execute("INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, state, first_seen,"
                         " last_seen) VALUES (%s, %s, %s, 'g-xg-02', 'smoke_alarm', %s, 'active', %s, %s)",
                         (alert_id, f"dev-{alert_id}", self.building, severity, now, now))
        return alert_id

    def close(self, task_id: str) -> None:
        with psycopg.connect(self.db_url) as conn:
            conn.execute("UPDATE tasks SET state = 'closed', closed_at = now() WHERE id = %s", (task_id,))

    def clear(self, alert_id: str) -> None:
        with psycopg.connect(self.db_url) as conn:
            conn.execute("UPDATE alerts SET state = 'cleared' WHERE id = %s", (alert_id,))


@pytest.fixture
def place(db_url: str) -> Iterator[Place]:
    p = Place(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO buildings (id, name, grid_id, lat, lon) VALUES (%s, '巡查楼', 'g-xg-02', 24.447,"
                     " 118.088)", (p.building,))
        conn.execute("INSERT INTO units (id, name, class, grid_id, building_id) VALUES (%s, '甲单位', 'key', 'g-xg-02',"
                     " %s), (%s, '乙单位', 'shop', 'g-xg-02', %s), (%s, '流动摊点', 'general', 'g-xg-01', NULL)",
                     (p.unit, p.building, p.other, p.building, p.loose))
    try:
        yield p
    finally:
        with psycopg.connect(db_url) as conn:
            conn.execute("DELETE FROM patrols WHERE task_id LIKE %s", (f"tk-pm-{p.tag}-%",))
            conn.execute("DELETE FROM tasks WHERE id LIKE %s", (f"tk-pm-{p.tag}-%",))
            conn.execute("DELETE FROM alerts WHERE id LIKE %s", (f"al-pm-{p.tag}-%",))
            conn.execute("DELETE FROM units WHERE id LIKE %s", (f"u-pm-{p.tag}-%",))
            conn.execute("DELETE FROM buildings WHERE id = %s", (p.building,))


def snapshot(client: httpx.Client, tokens: dict[str, str], wid: str) -> tuple[dict[str, Any], dict[str, Any]]:
    r = client.get(PATH, **as_(tokens, wid))
    assert r.status_code == 200, r.text
    body = r.json()
    return {b["id"]: b for b in body["items"]}, {u["id"]: u for u in body["units"]}


def test_an_overdue_patrol_colours_its_unit_and_building(client: httpx.Client, tokens: dict[str, str],
                                                         place: Place) -> None:
    buildings, units = snapshot(client, tokens, "w-003")
    assert buildings[place.building]["status"] == "clear" and units[place.unit]["status"] == "clear"
    # not overdue: a patrol still in its period, one done late, one whose task was closed
    place.patrol(place.unit, ends_in=timedelta(days=3))
    place.patrol(place.unit, ends_in=-timedelta(days=3), done=True, state="closed")
    place.patrol(place.unit, ends_in=-timedelta(days=100), done=True, state="open")
    place.patrol(place.unit, ends_in=-timedelta(days=200), state="closed")
    buildings, units = snapshot(client, tokens, "w-003")
    assert buildings[place.building]["status"] == "clear" and units[place.unit]["status"] == "clear"
    late = place.patrol(place.unit, ends_in=-timedelta(hours=1))
    buildings, units = snapshot(client, tokens, "w-003")
    assert units[place.unit] == {
        "id": place.unit, "name": "甲单位", "class": "key", "grid_id": "g-xg-02", "grid_name": "二网格",
        "community": {"id": "shapowei", "name": "沙坡尾社区"}, "building_id": place.building,
        "building_name": "巡查楼", "lat": 24.447, "lon": 118.088, "hazards": 0, "overdue_patrols": 1,
        "status": "overdue"}
    assert units[place.other]["status"] == "clear"  # the other unit in the building has no late patrol
    b = buildings[place.building]
    assert (b["status"], b["overdue_patrols"], b["hazards"], b["units"]) == ("overdue", 1, 0, 2)
    # a normal or low alert ranks below an overdue patrol
    place.alert("normal")
    place.alert("low")
    b = snapshot(client, tokens, "w-003")[0][place.building]
    assert (b["status"], b["worst"], b["open_alerts"]) == ("overdue", "normal", 2)
    # done late (the patrols row done, the task closed): the colour goes, the alert's shows
    with psycopg.connect(place.db_url) as conn:
        conn.execute("UPDATE patrols SET done_at = now() WHERE task_id = %s", (late,))
    place.close(late)
    buildings, units = snapshot(client, tokens, "w-003")
    assert buildings[place.building]["status"] == "normal" and units[place.unit]["status"] == "clear"


def test_an_open_hazard_task_ranks_between_high_alerts_and_overdue_patrols(client: httpx.Client,
                                                                          tokens: dict[str, str],
                                                                          place: Place) -> None:
    place.patrol(place.unit, ends_in=-timedelta(days=1))
    hazard = place.hazard(place.other)
    buildings, units = snapshot(client, tokens, "w-004")
    assert (units[place.unit]["status"], units[place.other]["status"]) == ("overdue", "hazard")
    b = buildings[place.building]
    assert (b["status"], b["hazards"], b["overdue_patrols"]) == ("hazard", 1, 1)
    # on the same unit too: the hazard outranks its overdue patrol
    second = place.hazard(place.unit, state="resolved")  # rectified, awaiting its check: still open
    assert snapshot(client, tokens, "w-004")[1][place.unit]["status"] == "hazard"
    high = place.alert("high")
    b = snapshot(client, tokens, "w-004")[0][place.building]
    assert (b["status"], b["worst"], b["hazards"]) == ("high", "high", 2)
    critical = place.alert("critical")
    assert snapshot(client, tokens, "w-004")[0][place.building]["status"] == "critical"
    place.clear(critical)
    place.clear(high)
    assert snapshot(client, tokens, "w-004")[0][place.building]["status"] == "hazard"
    # a drill's hazard task does not count (as in /summary)
    drill = place.hazard(place.loose)
    with psycopg.connect(place.db_url) as conn:
        conn.execute("UPDATE tasks SET drill = true WHERE id = %s", (drill,))
    assert snapshot(client, tokens, "a-001")[1][place.loose]["status"] == "clear"
    # a closed hazard task no longer counts (dismissed, or rectified and checked)
    place.close(hazard)
    place.close(second)
    buildings, units = snapshot(client, tokens, "w-004")
    assert buildings[place.building]["status"] == "overdue" and buildings[place.building]["hazards"] == 0
    assert (units[place.unit]["status"], units[place.other]["status"]) == ("overdue", "clear")


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_units_scoped_by_their_grid(client: httpx.Client, tokens: dict[str, str], wid: str, db_url: str,
                                    place: Place) -> None:
    place.hazard(place.unit)
    place.patrol(place.loose, ends_in=-timedelta(days=2))
    buildings, units = snapshot(client, tokens, wid)
    with psycopg.connect(db_url) as conn:
        principal = principal_from_row(conn.cursor(row_factory=namedtuple_row).execute(PRINCIPAL_SQL, (wid,)).fetchone())
        cond, params = principal.grid_filter("grid_id")
        expected = {r[0] for r in conn.execute(f"SELECT id FROM units WHERE {cond}", params)}
    assert set(units) == expected and list(units) == sorted(units)
    assert ("u-001" in units) is (wid not in G2_ONLY) and ("u-201" in units) is (wid not in G1_ONLY)
    assert (place.unit in units) is (wid not in G1_ONLY) and (place.loose in units) is (wid not in G2_ONLY)
    assert (place.building in buildings) is (wid not in G1_ONLY)
    if place.loose in units:  # a unit without a building: listed, no position, its own overdue patrol
        loose = units[place.loose]
        assert (loose["building_id"], loose["lat"], loose["lon"], loose["status"]) == (None, None, None, "overdue")
    if place.unit in units:
        assert units[place.unit]["status"] == "hazard"


def test_registry_units(client: httpx.Client, tokens: dict[str, str]) -> None:
    units = snapshot(client, tokens, "a-001")[1]
    assert (units["u-001"]["building_id"], units["u-001"]["lat"], units["u-001"]["lon"]) == ("b-12", 24.4461, 118.0873)
    assert units["u-001"]["class"] == "key" and units["u-201"]["class"] == "major_hazard"
    assert units["u-201"]["lat"] is None  # b-20 has no position
    assert units["u-002"]["building_id"] is None and units["u-002"]["lat"] is None
