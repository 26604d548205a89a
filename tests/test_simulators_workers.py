"""The demo district's places and its simulated grid workers (issue 14 item 7): the demo registry imports with units of
every class, facilities with expiry dates around the demo's first days and buildings' coordinates along a street; the
simulated workers (simulators/workers.py), speaking only the REST API of the real app on a database of their own, do
some patrols with their checklists and leave the rest, find hazards that open linked hazard tasks, fix hazards so
that re-checks open, file residents' reports that the grid head confirms, make the same patrol choices from the same
seed, and wait while the API is down."""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apitools import RunningApi, free_port, serve

from gridhub.db import migrate
from gridhub.demo_run import DEMO_DATES_AS_OF, demo_password, demo_registry, simulated_people
from gridhub.registry import export_registry, import_registry, load_file
from gridhub.settings import Settings
from gridhub.simulators.fleet import demo_district_path, load_fleet
from gridhub.simulators.workers import WorkerOptions, WorkerSim, photo_jpeg, roster

SECRET = "workers-test-secret-" + "w" * 32
# three grids of two communities: 沙坡尾's two and 仁安's second (a major hazard, an expired extinguisher)
GRIDS = ("g-shapowei-01", "g-shapowei-02", "g-renan-02")


def _metres(a: Any, b: Any) -> float:
    return math.hypot((a.lat - b.lat) * 110_600, (a.lon - b.lon) * 111_320 * math.cos(math.radians(a.lat)))


# ---------------------------------------------------------------- the demo registry


def test_the_demo_district_has_places_of_every_kind_and_coordinates_along_its_streets() -> None:
    reg = load_file(demo_district_path())
    grids = {g.id: g for d in reg.districts for s in d.streets for c in s.communities for g in c.grids}
    buildings = {b.id: (gid, b) for gid, g in grids.items() for b in g.buildings}
    assert (len(grids), len(buildings), len(reg.devices)) == (12, 36, 373)  # the devices as before
    assert len(load_fleet(demo_district_path()).active) == 372  # sa-0000 retired

    per_grid = Counter(u.grid for u in reg.units)
    assert set(per_grid) == set(grids) and all(3 <= n <= 6 for n in per_grid.values()), per_grid
    assert {u.class_ for u in reg.units} == {"key", "general", "shop", "major_hazard"}
    for u in reg.units:
        assert u.building is None or buildings[u.building][0] == u.grid, u
    assert {f.kind for f in reg.facilities} == {"hydrant", "extinguisher", "hose_reel", "emergency_light", "fire_door"}
    assert all(f.expires for f in reg.facilities if f.kind == "extinguisher")

    # expiry dates as of the day the file was written: some expired, some within the demo's first days
    expires = [f.expires for f in reg.facilities if f.expires]
    expired = [d for d in expires if d < DEMO_DATES_AS_OF]
    soon = [d for d in expires if DEMO_DATES_AS_OF <= d <= DEMO_DATES_AS_OF + timedelta(days=4)]
    assert len(expired) >= 2 and len(soon) >= 3 and len(expires) - len(expired) - len(soon) > 50

    # WGS-84 around Xiamen's old town; neighbours tens of metres apart; a community's grids side by side
    for _, b in buildings.values():
        assert b.lat is not None and b.lon is not None
        assert 24.43 < b.lat < 24.47 and 118.07 < b.lon < 118.10, b
    nearest = [min(_metres(b, o) for _, o in buildings.values() if o is not b) for _, b in buildings.values()]
    assert min(nearest) > 30 and max(nearest) < 80, nearest
    communities = [[b for g in c.grids for b in g.buildings] for d in reg.districts for s in d.streets
                   for c in s.communities]
    for row in communities:
        assert max(_metres(a, b) for a in row for b in row) < 300
        gap = min(_metres(a, b) for a in row[:3] for b in row[3:])  # grid 一 to grid 二
        assert gap < 80


def test_the_demo_moves_facility_dates_to_its_day() -> None:
    later = DEMO_DATES_AS_OF + timedelta(days=40)
    same, moved = demo_registry(DEMO_DATES_AS_OF), demo_registry(later)
    assert [f.expires for f in same.facilities] == [f.expires for f in load_file(demo_district_path()).facilities]
    for a, b in zip(same.facilities, moved.facilities, strict=True):
        assert b.expires == (a.expires + timedelta(days=40) if a.expires else None)
    workers, heads = simulated_people(same)
    assert "w-001" not in workers and "h-001" not in heads  # the printed log-ins are left to the person
    assert len(workers) == 11 and len(heads) == 5
    assert roster(demo_district_path(), grids=GRIDS) == (["w-001", "w-002", "w-006"], ["h-001", "h-003"])


def test_the_demo_registry_imports_and_exports_its_places(make_database: Callable[[], str]) -> None:
    url = make_database()
    migrate(url)
    with psycopg.connect(url) as conn:
        counts = import_registry(conn, load_file(demo_district_path()))
        exported = export_registry(conn)
        row = conn.execute("SELECT (SELECT count(*) FROM units), (SELECT count(DISTINCT class) FROM units),"
                           " (SELECT count(*) FROM facilities), (SELECT count(*) FROM buildings WHERE lat IS NOT NULL)"
                           ).fetchone()
    assert counts["units"] == 50 and counts["facilities"] == 206
    assert row == (50, 4, 206, 36)
    assert len(exported["units"]) == 50 and len(exported["facilities"]) == 206


# ---------------------------------------------------------------- the simulated workers on the API


def _demo_database(make_database: Callable[[], str]) -> str:
    """A database with the demo district as `gridhub demo` imports it, demo passwords for GRIDS' people, and the
    patrols and facility hazards the alerts service makes at start (its plan and expiry timers fired now)."""
    from gridhub.alerts import patrols, tasks, timers
    from gridhub.alerts.rules import load_rules
    from gridhub.auth import set_password

    url = make_database()
    migrate(url)
    workers, heads = roster(demo_district_path(), grids=GRIDS)
    with psycopg.connect(url) as conn:
        import_registry(conn, demo_registry(datetime.now(Settings().tz).date()))
        for wid in workers + heads:
            set_password(conn, wid, demo_password(wid))
        conn.commit()
    rules = load_rules()
    now = datetime.now(UTC)  # after the import, which may set the timers (due at its own now)
    with psycopg.connect(url, autocommit=True) as conn:
        patrols.sync_plans(conn, now)
        timers.fire_due(conn, now, {**tasks.timer_actions(rules), **patrols.timer_actions(rules)})
    return url


@pytest.fixture
def demo_api(make_database: Callable[[], str], broker: Any, tmp_path: Path) -> Iterator[tuple[str, RunningApi]]:
    url = _demo_database(make_database)
    running = serve(Settings(database_url=url, mqtt_url=broker.test_url, data_dir=tmp_path, secret_key=SECRET,
                             instance_id="workers-test"))
    try:
        yield url, running
    finally:
        running.stop()


def _options(api: str, **kw: Any) -> WorkerOptions:
    workers, heads = roster(demo_district_path(), grids=GRIDS)
    # shares that make a mix all but certain whatever the period (a patrol's choices hang on its unit and period)
    base: dict[str, Any] = {"api": api, "workers": tuple(workers), "heads": tuple(heads), "seed": 3,
                            "per_minute": 0, "done_share": 0.6, "hazard_share": 0.6, "report_every": 10}
    return WorkerOptions(**{**base, **kw})


def _patrol_choices(url: str) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """unit → (done, the hazard items found)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT unit_id, done_at IS NOT NULL, results FROM patrols WHERE kind = 'plan'").fetchall()
    return {u: (done, tuple(r["id"] for r in results or [] if r["result"] == "hazard")) for u, done, results in rows}


def test_simulated_workers_do_patrols_find_and_fix_hazards_and_report(
        demo_api: tuple[str, RunningApi], make_database: Callable[[], str], broker: Any, tmp_path: Path) -> None:
    url, running = demo_api
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT p.unit_id, t.assignee, t.state FROM patrols p JOIN tasks t ON t.id = p.task_id"
                              " JOIN units u ON u.id = p.unit_id WHERE u.grid_id = ANY(%s)", (list(GRIDS),)).fetchall()
        facility_hazards = conn.execute("SELECT t.detail->>'facility', t.building_id FROM tasks t WHERE t.type ="
                                        " 'hazard' AND t.detail->>'source' = 'facility'").fetchall()
    # the first patrols exist as soon as the alerts part starts: one per unit of the three grids, all open
    assert len(before) == 13 and {s for *_, s in before} == {"open"}
    assert {a for _, a, _ in before} == {"w-001", "w-002", "w-006"}
    assert {b for _, b in facility_hazards} >= {"b-shapowei-01", "b-renan-04"}  # expired extinguishers

    stats = asyncio.run(WorkerSim(_options(running.url)).run(until_idle=True, max_actions=400))
    assert stats.get("refused", 0) == 0 and stats.get("api_down", 0) == 0, stats
    assert stats["patrols_done"] >= 3 and stats["patrols_left"] >= 1, stats
    assert stats["patrols_done"] + stats["patrols_left"] == 13, stats
    assert stats["hazards_found"] >= 1 and stats["hazards_fixed"] >= 1 and stats["rechecks_done"] >= 1, stats
    assert stats["reports_filed"] >= 1 and stats["photos"] >= stats["hazards_found"] // 2, stats

    with psycopg.connect(url) as conn:
        done = conn.execute("SELECT count(*) FROM patrols p JOIN tasks t ON t.id = p.task_id WHERE p.done_at IS NOT"
                            " NULL AND t.state = 'resolved' AND t.resolution = 'done'").fetchone()
        left = conn.execute("SELECT count(*) FROM patrols p JOIN tasks t ON t.id = p.task_id WHERE p.done_at IS NULL"
                            " AND t.state = 'open' AND t.grid_id = ANY(%s)", (list(GRIDS),)).fetchone()
        found = conn.execute("SELECT count(*), count(*) FILTER (WHERE h.detail->>'source' = 'patrol'"
                             " AND h.unit_id = p.unit_id AND jsonb_typeof(h.detail->'photos') = 'array')"
                             " FROM tasks h JOIN patrols p ON p.task_id = h.source_task_id WHERE h.type = 'hazard'"
                             ).fetchone()
        per_patrol = conn.execute("SELECT sum(hazards) FROM patrols").fetchone()
        rechecks = conn.execute("SELECT count(*), count(*) FILTER (WHERE state = 'resolved') FROM tasks"
                                " WHERE type = 'recheck'").fetchone()
        reports = conn.execute("SELECT count(*), count(confirmed_at) FROM tasks WHERE reported_by IS NOT NULL"
                               ).fetchone()
        photos = conn.execute("SELECT count(*) FROM evidence e JOIN patrols p ON p.task_id = e.task_id").fetchone()
    assert done == (stats["patrols_done"],) and left == (stats["patrols_left"],)
    assert found == (stats["hazards_found"], stats["hazards_found"]) and per_patrol == (stats["hazards_found"],)
    # every hazard fixed opened its re-check (those from reports once confirmed), and every re-check was done
    assert rechecks == (stats["hazards_fixed"], stats["rechecks_done"]) and rechecks[0] == rechecks[1], rechecks
    assert reports is not None and reports[0] == stats["reports_filed"]
    assert reports[1] == stats.get("reports_confirmed", 0)
    assert photos == (stats["photos"],)

    # the same seed makes the same patrol choices on another hub; another seed other ones
    first = _patrol_choices(url)
    again = _demo_database(make_database)
    other = serve(Settings(database_url=again, mqtt_url=broker.test_url, data_dir=tmp_path, secret_key=SECRET,
                           instance_id="workers-test-2"))
    try:
        asyncio.run(WorkerSim(_options(other.url, report_every=0, fix_share=0)).run(until_idle=True, max_actions=200))
    finally:
        other.stop()
    assert _patrol_choices(again) == first


def test_simulated_workers_wait_while_the_api_is_down_and_move_on_after_a_refusal() -> None:
    async def down() -> dict[str, int]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        sim = WorkerSim(WorkerOptions(api=f"http://127.0.0.1:{free_port()}", workers=("w-001",), retry_s=0.05,
                                      per_minute=0, timeout_s=1))
        return await sim.run(stop)

    assert asyncio.run(down())["api_down"] >= 2


def test_a_refused_log_in_is_logged_and_the_simulator_moves_on(demo_api: tuple[str, RunningApi],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    _, running = demo_api
    options = _options(running.url, workers=("w-001",), heads=(), password="wrong-{id}")
    stats = asyncio.run(WorkerSim(options).run(until_idle=True, max_actions=5))
    assert stats == {"refused": 1}
    assert "wrong user or password" in caplog.text


def test_the_workers_command_prints_its_counts(capsys: pytest.CaptureFixture[str]) -> None:
    from gridhub.simulators.cli import main

    rc = main(["workers", "--api", f"http://127.0.0.1:{free_port()}", "--grids", "g-shapowei-01", "--duration", "0.3",
               "--per-minute", "0"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["api_down"] >= 1


def test_a_generated_photo_is_a_small_jpeg() -> None:
    from gridhub.images import check_jpeg

    data = photo_jpeg(1)
    assert data[:3] == b"\xff\xd8\xff" and len(data) < 40_000
    assert check_jpeg(data, 10_000_000) == (320, 240)
    assert photo_jpeg(1) == data != photo_jpeg(2)


def test_a_quiet_district_still_gets_reports_now_and_then(demo_api: tuple[str, RunningApi]) -> None:
    url, running = demo_api

    async def go() -> dict[str, int]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(4.0, stop.set)
        # 1,000 actions between reports at 60,000 a minute: a report when nothing else was to do for a second
        options = _options(running.url, per_minute=60_000, report_every=1000, idle_s=0.1)
        return await WorkerSim(options).run(stop)

    stats = asyncio.run(go())
    assert stats["patrols_done"] >= 3 and sum(v for k, v in stats.items() if k.startswith("action_")) < 1000
    assert stats["reports_filed"] >= 1, stats
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE reported_by IS NOT NULL").fetchone() == (
            stats["reports_filed"],)
