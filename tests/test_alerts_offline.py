"""Offline storms, recovery and drills on the real broker and database (alerts/offline.py): devices vanish with
their last wills, come back with a heartbeat, and the hub's clock (ShiftedClock) moves past recovered_after_s.

The module has a database of its own (the registry imported) so that moving the hub's clock fires nobody else's
timers; the broker is the session's, with the accounts of both databases."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alerts_support import Device
from polling import wait_for

from gridhub.alerts import changes, records
from gridhub.alerts.kpi import kpis
from gridhub.alerts.rules import RuleBook, load_rules
from gridhub.alerts.service import AlertService
from gridhub.alerts.timers import ShiftedClock
from gridhub.api.routes_summary import SUMMARY_SQL
from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.settings import Settings
from gridhub.simulators.cli import main as simulate

GRID = "g-xg-02"
REGISTRY = Path(__file__).parent / "data" / "registry.yaml"
STORM = [f"o1-sa-{i:02d}" for i in range(1, 24)]  # 23 devices of building ob-1
OTHER = ["o2-sa-1", "o2-sa-2", "o2-sa-3"]  # building ob-2: a storm of its own
LONE = "o3-sa-1"  # building ob-3: one device, its own task
FLAP = "o4-sa-1"
RESTART = "o5-sa-1"
RACE = [f"o7-sa-{i:02d}" for i in range(1, 13)]


def quiet_rules() -> RuleBook:
    """Offline only by last will here (heartbeat windows far beyond any clock shift of the module)."""
    data = load_rules().model_dump()
    data["offline"] = {**data["offline"], "heartbeat_factor": 1000, "grace_margin_s": 1}
    return RuleBook.model_validate(data)


@pytest.fixture(scope="module")
def own(make_registry_database: Any, settings: Settings, broker: Any, db_url: str) -> Settings:
    url = make_registry_database()
    mine = Settings(database_url=url, mqtt_url=settings.mqtt_url, data_dir=settings.data_dir,
                    secret_key=settings.secret_key, instance_id=f"off{os.getpid()}")
    with psycopg.connect(url) as conn:
        for b, devs in (("ob-1", STORM), ("ob-2", OTHER), ("ob-3", [LONE]), ("ob-4", [FLAP]), ("ob-5", [RESTART]),
                        ("ob-6", ["o6-sa-1", "o6-sa-2"]), ("ob-7", RACE)):
            conn.execute("INSERT INTO buildings (id, grid_id, name, floors) VALUES (%s, %s, %s, 6)",
                         (b, GRID, f"{b[-1]}号楼"))
            for d in devs:
                conn.execute("INSERT INTO devices (id, kind, building_id, floor, place) VALUES"
                             " (%s, 'smoke_alarm', %s, 1, '一楼')", (d, b))
        conn.commit()
        accounts, workers, hub = build_accounts(conn, mine)
    with psycopg.connect(db_url) as conn:  # keep the session database's accounts too
        theirs, their_workers, _ = build_accounts(conn, settings)
    by_name = {a.username: a for a in [*theirs, *accounts]}
    broker.apply_accounts(passwd_text(list(by_name.values())),
                          acl_text(mine.topic_prefix, hub.username, sorted(set(workers) | set(their_workers))))
    return mine


class Hub:
    """The alerts service, restartable; its clock survives a restart (the offset is the tests' to move)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = ShiftedClock()
        self.svc: AlertService | None = None

    def start(self) -> None:
        self.svc = AlertService(self.settings, clock=self.clock, rules=quiet_rules())
        self.svc.start()
        assert self.svc.ready.wait(15), "alerts service did not subscribe"
        svc = self.svc
        wait_for(lambda: svc.grace_until is not None, 20, "the backlog marker")

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
            self.svc = None

    def later(self, seconds: float) -> None:
        self.clock.offset += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def hub(own: Settings) -> Iterator[Hub]:
    h = Hub(own)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def db(own: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(own.database_url or "", autocommit=True) as conn:
        yield conn


def offline_task(db: psycopg.Connection[Any], device: str) -> str | None:
    row = db.execute("SELECT task_id FROM alerts WHERE device_id = %s AND type = 'device_offline'"
                     " ORDER BY first_seen DESC LIMIT 1", (device,)).fetchone()
    return row[0] if row else None


def active_offline(db: psycopg.Connection[Any], devices: list[str]) -> int:
    row = db.execute("SELECT count(*) FROM alerts WHERE device_id = ANY(%s) AND type = 'device_offline'"
                     " AND state = 'active'", (devices,)).fetchone()
    return int(row[0]) if row else 0


def task_row(db: psycopg.Connection[Any], task_id: str) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
    row = cur.fetchone()
    assert row is not None
    return dict(zip([c.name for c in cur.description or ()], row, strict=True))


def history(db: psycopg.Connection[Any], task_id: str) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2] or "") for r in db.execute(
        "SELECT actor, action, note FROM task_history WHERE task_id = %s ORDER BY id", (task_id,))]


def vanish_all(settings: Settings, ids: list[str]) -> None:
    devs = [Device(settings, d) for d in ids]
    for d in devs:
        d.vanish()


def come_back(db: psycopg.Connection[Any], settings: Settings, ids: list[str], *, will: bool = False) -> list[Device]:
    devs = [Device(settings, d, will=will) for d in ids]
    for d in devs:
        d.event("heartbeat")
    wait_for(lambda: active_offline(db, ids) == 0, 30, f"{', '.join(ids)} back online")
    return devs


# ------------------------------------------------------------------ storms


def test_a_building_of_23_devices_offline_within_a_minute_is_one_task_listing_them(
        own: Settings, hub: Hub, db: psycopg.Connection[Any]) -> None:
    vanish_all(own, STORM[:2])  # two first: below the threshold, each its own task for now
    wait_for(lambda: active_offline(db, STORM[:2]) == 2, 30, "the first two offline")
    early = {offline_task(db, d) for d in STORM[:2]}
    assert None not in early and len(early) == 2
    vanish_all(own, STORM[2:] + OTHER + [LONE])
    wait_for(lambda: active_offline(db, STORM + OTHER + [LONE]) == 27, 60, "every device offline")
    # every device keeps its own alert (the device list and the alerts API show each offline)
    assert db.execute("SELECT count(*) FROM alerts WHERE device_id = ANY(%s) AND type = 'device_offline'",
                      (STORM,)).fetchone() == (23,)
    tasks = {offline_task(db, d) for d in STORM}
    assert len(tasks) == 1
    building = tasks.pop()
    assert building is not None
    t = task_row(db, building)
    assert (t["type"], t["incident_key"], t["building_id"], t["state"]) == (
        "device_offline", "device_offline:building:ob-1", "ob-1", "open")
    linked = {r[0] for r in db.execute("SELECT a.device_id FROM task_alerts ta JOIN alerts a ON a.id = ta.alert_id"
                                       " WHERE ta.task_id = %s", (building,))}
    assert linked == set(STORM)
    notes = " | ".join(n for _, _, n in history(db, building))
    assert "1号楼 23 台设备离线" in notes and all(d in notes for d in STORM)
    # the two per-device tasks opened before the threshold: closed by the hub as duplicates, in history
    for early_task in early:
        assert early_task is not None
        e = task_row(db, early_task)
        assert (e["state"], e["resolution"]) == ("closed", "duplicate")
        assert history(db, early_task)[-1][:2] == ("system", "close") and building in history(db, early_task)[-1][2]
    # no per-device task left open for any device of the storm: one incident, one task
    assert db.execute("SELECT count(*) FROM tasks WHERE incident_key = ANY(%s) AND state <> 'closed'",
                      ([f"device_offline:{d}" for d in STORM],)).fetchone() == (0,)
    # the other building: a storm (task) of its own; the lone device its own task
    other = {offline_task(db, d) for d in OTHER}
    assert len(other) == 1 and task_row(db, str(next(iter(other))))["incident_key"] == "device_offline:building:ob-2"
    lone = offline_task(db, LONE)
    assert lone is not None and task_row(db, lone)["incident_key"] == f"device_offline:{LONE}"


def test_concurrent_offline_alerts_of_one_building_make_one_task(own: Settings, hub: Hub) -> None:
    rules = quiet_rules()
    now = datetime.now(UTC)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(RACE))

    def raise_one(dev: str) -> None:
        try:
            with psycopg.connect(own.database_url or "") as conn:
                p = records.place_of(conn, dev)
                assert p is not None
                barrier.wait()
                with changes.UnitOfWork(conn) as uow:
                    records.raise_alert(uow, p, "device_offline", now, now, rules, {"reason": "test"})
                conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=raise_one, args=(d,)) for d in RACE]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(own.database_url or "") as conn:
        assert conn.execute("SELECT count(*) FROM tasks WHERE incident_key = 'device_offline:building:ob-7'"
                            ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM tasks WHERE incident_key = ANY(%s) AND state <> 'closed'",
                            ([f"device_offline:{d}" for d in RACE],)).fetchone() == (0,)
        assert conn.execute("SELECT count(DISTINCT task_id) FROM alerts WHERE device_id = ANY(%s)",
                            (RACE,)).fetchone() == (1,)


# ------------------------------------------------------------------ recovered


def test_a_device_back_and_staying_back_is_recovered_by_the_hub(
        own: Settings, hub: Hub, db: psycopg.Connection[Any]) -> None:
    task = offline_task(db, LONE)
    assert task is not None
    devs = come_back(db, own, [LONE])
    due = db.execute("SELECT due_at FROM timers WHERE kind = 'recovered' AND key = %s", (task,)).fetchone()
    assert due is not None
    assert task_row(db, task)["state"] == "open"  # not before it stayed back
    hub.later(601)
    wait_for(lambda: task_row(db, task)["state"] == "resolved", 30, "recovered after 600 s back")
    t = task_row(db, task)
    assert t["resolution"] == "recovered" and t["closed_at"] is None  # the grid head still closes it
    actor, action, note = history(db, task)[-1]
    assert (actor, action) == ("system", "resolve") and note.startswith("recovered:") and LONE in note
    assert db.execute("SELECT count(*) FROM timers WHERE key = %s AND kind IN ('escalate', 'remind', 'recovered')",
                      (task,)).fetchone() == (0,)
    for d in devs:
        d.close()


def test_a_building_task_is_recovered_only_when_all_its_devices_stayed_back(
        own: Settings, hub: Hub, db: psycopg.Connection[Any]) -> None:
    task = offline_task(db, OTHER[0])
    assert task is not None
    devs = come_back(db, own, OTHER[:2])
    assert db.execute("SELECT 1 FROM timers WHERE kind = 'recovered' AND key = %s", (task,)).fetchone() is None
    hub.later(601)
    devs += come_back(db, own, OTHER[2:])
    assert task_row(db, task)["state"] == "open"  # one was still offline until now
    hub.later(601)
    wait_for(lambda: task_row(db, task)["state"] == "resolved", 30, "the building task recovered")
    assert task_row(db, task)["resolution"] == "recovered"
    assert "2号楼 3 台设备恢复在线" in history(db, task)[-1][2]
    for d in devs:
        d.close()


def test_a_device_that_flaps_back_offline_before_the_timer_stays_open(
        own: Settings, hub: Hub, db: psycopg.Connection[Any]) -> None:
    vanish_all(own, [FLAP])
    wait_for(lambda: active_offline(db, [FLAP]) == 1, 30, "offline")
    task = offline_task(db, FLAP)
    assert task is not None
    back = come_back(db, own, [FLAP], will=True)
    assert db.execute("SELECT 1 FROM timers WHERE kind = 'recovered' AND key = %s", (task,)).fetchone()
    hub.later(300)
    for d in back:
        d.vanish()  # offline again before the timer
    wait_for(lambda: active_offline(db, [FLAP]) == 1, 30, "offline again")
    assert db.execute("SELECT 1 FROM timers WHERE kind = 'recovered' AND key = %s", (task,)).fetchone() is None
    assert offline_task(db, FLAP) == task  # the same task
    hub.later(601)
    time.sleep(6)  # the timer loop looks at least every 5 s
    assert task_row(db, task)["state"] == "open"
    assert [a for _, a, _ in history(db, task)].count("resolve") == 0


def test_the_recovered_timer_survives_an_alerts_restart(own: Settings, hub: Hub, db: psycopg.Connection[Any]) -> None:
    vanish_all(own, [RESTART])
    wait_for(lambda: active_offline(db, [RESTART]) == 1, 30, "offline")
    task = offline_task(db, RESTART)
    assert task is not None
    devs = come_back(db, own, [RESTART])
    hub.stop()  # the timer lives in the database
    assert db.execute("SELECT 1 FROM timers WHERE kind = 'recovered' AND key = %s", (task,)).fetchone()
    hub.later(601)  # the hub was down while it fell due
    hub.start()
    wait_for(lambda: task_row(db, task)["state"] == "resolved", 30, "recovered by the restarted hub")
    assert task_row(db, task)["resolution"] == "recovered"
    for d in devs:
        d.close()


# ------------------------------------------------------------------ drills


def open_critical(db: psycopg.Connection[Any]) -> int:
    end = datetime.now(UTC) + timedelta(days=30)
    rows = kpis(db, "grid", end - timedelta(days=60), end, [GRID])
    return int(rows[0]["open"]["critical"])


def summary_open(db: psycopg.Connection[Any]) -> int:
    """The summary's open tasks of the grid (GET /api/v1/summary's query, every grid in scope)."""
    rows = db.execute(SUMMARY_SQL.format(scope="true")).fetchall()
    return int(next(r[12] for r in rows if r[4] == GRID))


def test_a_drill_event_makes_a_drill_task_left_out_of_the_kpis(
        own: Settings, hub: Hub, db: psycopg.Connection[Any]) -> None:
    before = open_critical(db)
    a, b = Device(own, "o6-sa-1"), Device(own, "o6-sa-2")
    a.event("alarm", drill=True)
    b.event("alarm", drill=True)
    wait_for(lambda: db.execute("SELECT 1 FROM alerts WHERE building_id = 'ob-6' AND type = 'fire_incident'"
                                " AND state = 'active'").fetchone(), 30, "the drill fire incident")
    rows = db.execute("SELECT a.type, a.detail, t.drill, t.incident_key FROM alerts a JOIN tasks t ON t.id = a.task_id"
                      " WHERE a.building_id = 'ob-6' ORDER BY a.type, a.device_id").fetchall()
    assert [r[0] for r in rows] == ["fire_alarm", "fire_alarm", "fire_incident"]
    assert all(r[1].get("drill") is True and r[2] is True and r[3].endswith(":drill") for r in rows)
    # left out of the KPIs and the summary's task counts
    assert open_critical(db) == before
    counted = summary_open(db)
    with db.transaction():  # the same tasks as real ones would count
        db.execute("UPDATE tasks SET drill = false WHERE building_id = 'ob-6'")
        assert (open_critical(db), summary_open(db)) == (before + 3, counted + 3)
        db.execute("UPDATE tasks SET drill = true WHERE building_id = 'ob-6'")
    # the real thing during a drill: the drill's alert ends and a real task opens
    a.event("alarm")
    wait_for(lambda: db.execute("SELECT 1 FROM tasks WHERE incident_key = 'fire_alarm:o6-sa-1' AND NOT drill"
                                ).fetchone(), 30, "a real task beside the drill's")
    assert db.execute("SELECT count(*) FROM alerts WHERE device_id = 'o6-sa-1' AND type = 'fire_alarm'"
                      " AND state = 'active' AND detail->'drill' IS NULL").fetchone() == (1,)
    a.close()
    b.close()


def test_a_drill_scenario_publishes_drill_events_and_opens_drill_tasks(
        own: Settings, hub: Hub, db: psycopg.Connection[Any], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fire_drill.yaml"
    path.write_text("name: fire_drill\nsummary: a fire drill in one building\nduration_s: 4\ndrill: true\n"
                    "cast:\n  alarms: {ids: [sa-0001, sa-0002]}\n"
                    "steps:\n  - {at: 1, who: alarms, event: alarm, expect: fire_alarm}\n", encoding="utf-8")
    rc = simulate(["scenario", str(path), "--broker", own.mqtt_url or "", "--registry", str(REGISTRY),
                   "--secret", str(own.secret_key)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and not summary["counts"].get("errors"), summary
    wait_for(lambda: db.execute("SELECT count(*) FROM tasks WHERE building_id = 'b-12' AND drill").fetchone() == (3,),
             30, "two drill alarm tasks and the drill incident's")
    # no real alarm task (the quarter's patrol of the building's market, u-001, is the grid's own work)
    assert db.execute("SELECT count(*) FROM tasks WHERE building_id = 'b-12' AND NOT drill"
                      " AND type <> 'patrol'").fetchone() == (0,)
    detail = db.execute("SELECT detail FROM alerts WHERE device_id = 'sa-0001' AND type = 'fire_alarm'").fetchone()
    assert detail is not None and detail[0]["drill"] is True and detail[0]["detail"]["drill"] is True
