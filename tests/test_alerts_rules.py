"""Every row of CONTRACT §4.2 on the real broker and database: devices publish with their own accounts, the alerts
service runs in-process, and the outcome is read from the database and from the worker and alert topics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from alerts_support import Device, Listener, add_devices, now_ms
from polling import wait_for

from gridhub.alerts import changes, records
from gridhub.alerts.rules import RuleBook, load_rules
from gridhub.alerts.service import AlertService
from gridhub.alerts.timers import ShiftedClock
from gridhub.settings import Settings

GRID = "g-xg-02"  # one grid worker (w-003), one grid head (w-004)


def fast_rules() -> RuleBook:
    data = load_rules().model_dump()
    data["offline"] = {"heartbeat_factor": 2, "grace_margin_s": 1}
    return RuleBook.model_validate(data)


@pytest.fixture(scope="module")
def fleet(db_url: str, settings: Settings, broker: Any) -> list[str]:
    devs: list[tuple[str, str, int | None]] = []
    for b in range(1, 16):
        devs += [(f"r{b}-sa-1", "smoke_alarm", None), (f"r{b}-sa-2", "smoke_alarm", None),
                 (f"r{b}-sp-1", "sprinkler_pressure", None), (f"r{b}-sl-1", "stairwell_light", None),
                 (f"r{b}-cam-1", "camera", None)]
        add_devices(db_url, settings, broker, f"rb-{b}", GRID, [])
    with psycopg.connect(db_url) as conn:
        for dev, kind, hb in devs:
            bno = dev.split("-")[0][1:]
            conn.execute("INSERT INTO devices (id, kind, building_id, floor, place, heartbeat_s) VALUES"
                         " (%s, %s, %s, 1, '一楼', %s) ON CONFLICT DO NOTHING", (dev, kind, f"rb-{bno}", hb))
    add_devices(db_url, settings, broker, "rb-hb", GRID, [("r-hb-1", "smoke_alarm", 2), ("r-hb-2", "smoke_alarm", 2)])
    return [d for d, _, _ in devs]


@pytest.fixture(scope="module")
def service(settings: Settings, fleet: list[str]) -> Iterator[AlertService]:
    svc = AlertService(settings, clock=ShiftedClock(), rules=fast_rules())
    svc.start()
    assert svc.ready.wait(15), "alerts service did not subscribe"
    wait_for(lambda: svc.grace_until is not None, 20, "the backlog marker")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def listener(broker: Any, service: AlertService) -> Iterator[Listener]:
    lst = Listener(broker.test_url, ["gridhub/v1/workers/+/tasks", "gridhub/v1/alerts"])
    yield lst
    lst.close()


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def alerts_of(db: psycopg.Connection[Any], device: str, typ: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT id, state, count, task_id, acked FROM alerts WHERE device_id = %s AND type = %s"
                      " ORDER BY first_seen, id", (device, typ)).fetchall()


def active(db: psycopg.Connection[Any], device: str, typ: str) -> bool:
    return any(r[1] == "active" for r in alerts_of(db, device, typ))


def cleared(db: psycopg.Connection[Any], device: str, typ: str) -> bool:
    rows = alerts_of(db, device, typ)
    return bool(rows) and all(r[1] == "cleared" for r in rows)


def task_of(db: psycopg.Connection[Any], task_id: str) -> dict[str, Any]:
    cur = db.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
    row = cur.fetchone()
    assert row is not None
    return dict(zip([c.name for c in cur.description or ()], row, strict=True))


def history(db: psycopg.Connection[Any], task_id: str) -> list[str]:
    return [r[0] for r in db.execute("SELECT action FROM task_history WHERE task_id = %s ORDER BY id", (task_id,))]


# ------------------------------------------------------------------ events

def test_fire_alarm_opens_a_task_notifies_the_worker_and_clearing_annotates_it(
        settings: Settings, service: AlertService, listener: Listener, db: psycopg.Connection[Any]) -> None:
    dev = Device(settings, "r1-sa-1")
    dev.event("alarm")
    wait_for(lambda: active(db, "r1-sa-1", "fire_alarm"), what="fire_alarm alert")
    alert = alerts_of(db, "r1-sa-1", "fire_alarm")[0]
    task = task_of(db, alert[3])
    assert (task["type"], task["severity"], task["state"], task["assignee"]) == ("fire_alarm", "critical", "open", "w-003")
    assert (task["accept_due"] - task["opened_at"]) == timedelta(minutes=2)
    assert (task["resolve_due"] - task["opened_at"]) == timedelta(minutes=30)
    pushed = wait_for(lambda: listener.of("/workers/w-003/tasks", id=task["id"]), what="worker notification")
    assert pushed[0]["alert_ids"] == [alert[0]] and pushed[0]["state"] == "open"
    wait_for(lambda: listener.of("/alerts", id=alert[0]), what="alert notification")
    dev.event("alarm_cleared")
    wait_for(lambda: cleared(db, "r1-sa-1", "fire_alarm"), what="alarm cleared")
    assert task_of(db, task["id"])["state"] == "open"  # a person closes it
    assert history(db, task["id"])[-1] == "alert_cleared"
    # the alarm again: a new alert, the same task
    dev.event("alarm")
    wait_for(lambda: active(db, "r1-sa-1", "fire_alarm"), what="fire_alarm again")
    rows = alerts_of(db, "r1-sa-1", "fire_alarm")
    assert len(rows) == 2 and rows[1][3] == task["id"]
    # every change of the task reached the worker's topic once: published by the lane or the notifier, not both

    def log_of_task() -> tuple[int, int]:
        row = db.execute("SELECT count(*) FILTER (WHERE published_at IS NULL),"
                         " count(*) FILTER (WHERE 'w-003' = ANY(recipients)) FROM changes WHERE entity_id = %s",
                         (task["id"],)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    wait_for(lambda: log_of_task()[0] == 0, what="every change of the task published")
    wait_for(lambda: len(listener.of("/workers/w-003/tasks", id=task["id"])) >= log_of_task()[1],
             what="a notification per change of the task")
    assert len(listener.of("/workers/w-003/tasks", id=task["id"])) == log_of_task()[1] >= 2
    dev.close()


def test_a_hundred_concurrent_duplicate_alarms_make_one_alert_and_one_task(
        settings: Settings, service: AlertService, listener: Listener, db: psycopg.Connection[Any]) -> None:
    devs = [Device(settings, "r2-sa-1", will=False) for _ in range(4)]
    base = now_ms()

    def burst(d: Device, k: int) -> None:
        for i in range(25):  # the same 50 events, each sent twice by different connections
            n = (k % 2) * 25 + i
            d.send("event", {"ts": base + n, "seq": n, "type": "alarm", "detail": {}})

    threads = [threading.Thread(target=burst, args=(d, k)) for k, d in enumerate(devs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: (alerts_of(db, "r2-sa-1", "fire_alarm") or [(0, 0, 0)])[0][2] == 50, what="50 distinct alarms counted")
    rows = alerts_of(db, "r2-sa-1", "fire_alarm")
    assert len(rows) == 1
    tasks_n = db.execute("SELECT count(*), max(count) FROM tasks WHERE device_id = 'r2-sa-1' AND type = 'fire_alarm'").fetchone()
    assert tasks_n == (1, 50)
    # workers heard of the task once when it opened, not once per repeat
    pushes = listener.of("/workers/w-003/tasks", id=rows[0][3])
    assert len(pushes) == 1
    # the noisy-device rule saw more than 5 alarms within 24 h
    assert active(db, "r2-sa-1", "noisy_device")
    for d in devs:
        d.close()


def test_two_alarms_in_a_building_are_one_fire_incident(
        settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    a, b = Device(settings, "r3-sa-1"), Device(settings, "r3-sa-2")
    a.event("alarm")
    b.event("alarm")
    wait_for(lambda: db.execute("SELECT 1 FROM alerts WHERE building_id = 'rb-3' AND type = 'fire_incident'"
                                " AND state = 'active'").fetchone(), what="fire incident")
    inc = db.execute("SELECT id, task_id FROM alerts WHERE building_id = 'rb-3' AND type = 'fire_incident'").fetchall()
    assert len(inc) == 1
    tasks_n = db.execute("SELECT count(*) FROM tasks WHERE incident_key = 'fire_incident:rb-3'").fetchone()
    assert tasks_n == (1,)
    linked = {r[0] for r in db.execute("SELECT alert_id FROM task_alerts WHERE task_id = %s", (inc[0][1],))}
    assert {alerts_of(db, "r3-sa-1", "fire_alarm")[0][0], alerts_of(db, "r3-sa-2", "fire_alarm")[0][0]} <= linked
    a.event("alarm_cleared")
    wait_for(lambda: cleared(db, "r3-sa-1", "fire_alarm"), what="first alarm cleared")
    assert db.execute("SELECT state FROM alerts WHERE id = %s", (inc[0][0],)).fetchone() == ("active",)
    b.event("alarm_cleared")
    wait_for(lambda: db.execute("SELECT state FROM alerts WHERE id = %s", (inc[0][0],)).fetchone() == ("cleared",),
             what="incident cleared when all its alarms are")
    a.close()
    b.close()


def test_fire_alarm_with_sprinkler_drop_is_a_fire_incident(
        settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    sp, sa = Device(settings, "r4-sp-1"), Device(settings, "r4-sa-1")
    t = now_ms() - 30_000
    sp.reading(t, pressure_mpa=0.35)
    sp.reading(t + 10_000, pressure_mpa=0.34)
    sp.reading(t + 20_000, pressure_mpa=0.25)  # fell 0.10 within 60 s
    wait_for(lambda: active(db, "r4-sp-1", "sprinkler_drop"), what="sprinkler_drop")
    sa.event("alarm")
    wait_for(lambda: db.execute("SELECT 1 FROM alerts WHERE building_id = 'rb-4' AND type = 'fire_incident'").fetchone(),
             what="fire incident from alarm + drop")
    sp.close()
    sa.close()


@pytest.mark.parametrize(("device", "raise_ev", "clear_ev", "typ", "detail_raise", "detail_clear"), [
    ("r5-sa-1", "fault", "fault_cleared", "device_fault", {}, {}),
    ("r6-sa-1", "self_test", "self_test", "device_fault", {"passed": False}, {"passed": True}),
    ("r5-cam-1", "video_loss", "video_restored", "device_fault", {}, {}),
    ("r5-sa-2", "tamper", "tamper_cleared", "tamper", {}, {}),
    ("r6-cam-1", "exit_blocked", "exit_cleared", "exit_blocked", {"occupancy": 0.2}, {}),
    ("r7-cam-1", "camera_obstructed", "camera_obstructed_cleared", "camera_obstructed", {}, {}),
    ("r5-sl-1", "lamp_fault", "lamp_fault_cleared", "light_fault", {}, {}),
    ("r6-sp-1", "fault", "fault_cleared", "device_fault", {}, {}),
])
def test_event_rows(settings: Settings, service: AlertService, db: psycopg.Connection[Any], device: str,
                    raise_ev: str, clear_ev: str, typ: str, detail_raise: dict[str, Any],
                    detail_clear: dict[str, Any]) -> None:
    d = Device(settings, device)
    d.event(raise_ev, **detail_raise)
    wait_for(lambda: active(db, device, typ), what=f"{typ} from {raise_ev}")
    row = alerts_of(db, device, typ)[0]
    sev = db.execute("SELECT severity FROM alerts WHERE id = %s", (row[0],)).fetchone()
    assert sev is not None and sev[0] == load_rules().severity_of(typ)
    assert row[3] is not None  # a task for a person
    d.event(clear_ev, **detail_clear)
    wait_for(lambda: cleared(db, device, typ), what=f"{typ} cleared by {clear_ev}")
    d.close()


def test_low_battery_by_event_and_by_reading(settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r7-sa-1")
    t = now_ms() - 60_000
    d.event("low_battery")
    wait_for(lambda: active(db, "r7-sa-1", "low_battery"), what="low_battery from event")
    d.reading(t, battery_pct=25)  # between the thresholds: stays
    d.reading(t + 1000, battery_pct=31)
    wait_for(lambda: cleared(db, "r7-sa-1", "low_battery"), what="low_battery cleared at >= 30")
    d.reading(t + 2000, battery_pct=15)
    wait_for(lambda: active(db, "r7-sa-1", "low_battery"), what="low_battery from battery_pct < 20")
    assert db.execute("SELECT severity FROM alerts WHERE device_id = 'r7-sa-1' AND state = 'active'").fetchone() == ("low",)
    d.close()


# ------------------------------------------------------------------ held thresholds

def test_pressure_flapping_across_0_10_gives_no_alert_until_it_holds(
        settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r8-sp-1")
    t = now_ms() - 3_600_000
    for i in range(30):  # every 5 s for 150 s, alternating 0.09 / 0.11: never 60 s below
        d.reading(t + i * 5000, pressure_mpa=0.09 if i % 2 == 0 else 0.11)
    t += 30 * 5000
    d.reading(t, pressure_mpa=0.30)
    last = t
    wait_for(lambda: db.execute("SELECT 1 FROM rule_state WHERE device_id = 'r8-sp-1'"
                                " AND (state->'drop'->>'last')::bigint = %s", (last,)).fetchone(),
             what="readings evaluated")
    assert alerts_of(db, "r8-sp-1", "sprinkler_low") == []
    for i in range(1, 14):  # below 0.10 in every message for 60 s
        d.reading(t + i * 5000, pressure_mpa=0.08)
    wait_for(lambda: active(db, "r8-sp-1", "sprinkler_low"), what="sprinkler_low after 60 s held")
    first = db.execute("SELECT first_seen FROM alerts WHERE device_id = 'r8-sp-1' AND type = 'sprinkler_low'").fetchone()
    assert first is not None and int(first[0].timestamp() * 1000) == t + 13 * 5000  # held 60 s on device time
    t += 13 * 5000
    d.reading(t + 5000, pressure_mpa=0.11)  # above 0.10 but below the 0.12 clear threshold: hysteresis
    for i in range(2, 16):
        d.reading(t + i * 5000, pressure_mpa=0.13)
    wait_for(lambda: cleared(db, "r8-sp-1", "sprinkler_low"), what="sprinkler_low cleared after >= 0.12 for 60 s")
    d.close()


def test_sparse_reports_two_consecutive_messages_hold(settings: Settings, service: AlertService,
                                                      db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r9-sp-1")
    t = now_ms() - 3_600_000
    d.reading(t, pressure_mpa=0.03)
    d.reading(t + 300_000, pressure_mpa=0.03)  # reports every 5 min: two consecutive messages suffice
    wait_for(lambda: active(db, "r9-sp-1", "sprinkler_critical"), what="sprinkler_critical")
    assert db.execute("SELECT severity FROM alerts WHERE device_id = 'r9-sp-1' AND type = 'sprinkler_critical'"
                      ).fetchone() == ("critical",)
    d.reading(t + 600_000, pressure_mpa=0.5)
    d.reading(t + 900_000, pressure_mpa=0.5)
    wait_for(lambda: cleared(db, "r9-sp-1", "sprinkler_critical"), what="sprinkler_critical cleared")
    d.close()


def test_sprinkler_high(settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r10-sp-1")
    t = now_ms() - 3_600_000
    for i in range(8):
        d.reading(t + i * 10_000, pressure_mpa=1.3)
    wait_for(lambda: active(db, "r10-sp-1", "sprinkler_high"), what="sprinkler_high")
    for i in range(8, 12):
        d.reading(t + i * 10_000, pressure_mpa=1.15)  # under 1.20 but not <= 1.10: stays
    for i in range(12, 20):
        d.reading(t + i * 10_000, pressure_mpa=1.0)
    wait_for(lambda: cleared(db, "r10-sp-1", "sprinkler_high"), what="sprinkler_high cleared")
    d.close()


def test_sprinkler_drop_clears_after_ten_stable_minutes(settings: Settings, service: AlertService,
                                                        db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r11-sp-1")
    t = now_ms() - 3_600_000
    d.reading(t, pressure_mpa=0.40)
    d.reading(t + 30_000, pressure_mpa=0.32)
    wait_for(lambda: active(db, "r11-sp-1", "sprinkler_drop"), what="sprinkler_drop")
    for i in range(1, 11):
        d.reading(t + 30_000 + i * 60_000, pressure_mpa=0.32 + (0.01 if i % 2 else 0))
    wait_for(lambda: cleared(db, "r11-sp-1", "sprinkler_drop"), what="sprinkler_drop cleared after 10 stable minutes")
    d.close()


def test_light_fault_from_readings(settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r12-sl-1")
    t = now_ms() - 3_600_000
    for i in range(5):
        d.reading(t + i * 30_000, lamp_on=False, lux=0.5)  # off and dark: no fault
    t += 150_000
    for i in range(5):
        d.reading(t + i * 30_000, lamp_on=True, lux=2.0)  # on but dark for 120 s
    wait_for(lambda: active(db, "r12-sl-1", "light_fault"), what="light_fault")
    d.reading(t + 200_000, lamp_on=True, lux=40.0)
    wait_for(lambda: cleared(db, "r12-sl-1", "light_fault"), what="light_fault cleared")
    d.close()


# ------------------------------------------------------------------ absence

def test_offline_by_heartbeat_and_back(settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r-hb-1")
    d.event("heartbeat")
    wait_for(lambda: db.execute("SELECT 1 FROM rule_events WHERE device_id = 'r-hb-1'").fetchone(), what="heartbeat")
    assert not active(db, "r-hb-1", "device_offline")
    wait_for(lambda: active(db, "r-hb-1", "device_offline"), 30, "offline after 2 x 2 s of silence")
    d.reading(now_ms(), battery_pct=90)
    wait_for(lambda: cleared(db, "r-hb-1", "device_offline"), what="offline cleared by a reading")
    d.close()


def test_last_will_raises_offline(settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r13-sa-1")
    d.event("heartbeat")
    wait_for(lambda: db.execute("SELECT 1 FROM rule_events WHERE device_id = 'r13-sa-1'").fetchone(), what="heartbeat")
    d.vanish()
    wait_for(lambda: active(db, "r13-sa-1", "device_offline"), 30, "offline from the last will")
    detail = db.execute("SELECT detail FROM alerts WHERE device_id = 'r13-sa-1' AND type = 'device_offline'").fetchone()
    assert detail is not None and "last will" in detail[0]["reason"]
    back = Device(settings, "r13-sa-1")
    back.send("status", "online", retain=True)
    wait_for(lambda: cleared(db, "r13-sa-1", "device_offline"), what="online again")
    back.close()


def test_invalid_messages_are_ignored(settings: Settings, service: AlertService, db: psycopg.Connection[Any]) -> None:
    d = Device(settings, "r14-sa-1")
    d.send("event", b"{not json")
    d.send("event", {"ts": now_ms(), "type": "explode"})
    d.send("event", {"seq": 1, "type": "alarm"})  # no ts
    d.send("event", {"ts": now_ms() + 3_600_000, "type": "alarm"})  # clock skew
    d.send("telemetry", {"ts": now_ms(), "metrics": {"battery_pct": 150}})  # out of range
    d.event("tamper")  # a good one after them
    wait_for(lambda: active(db, "r14-sa-1", "tamper"), what="the valid event")
    assert alerts_of(db, "r14-sa-1", "fire_alarm") == [] and alerts_of(db, "r14-sa-1", "low_battery") == []
    d.close()


def test_noisy_device_clears_after_a_quiet_window(db_url: str, service: AlertService) -> None:
    with psycopg.connect(db_url) as conn:
        p = records.place_of(conn, "r2-sa-1")
        assert p is not None
        rules = load_rules()
        later = service.clock.now() + timedelta(hours=25)
        with changes.UnitOfWork(conn) as uow:
            records.noisy_check(uow, "r2-sa-1", later, rules)
        state = conn.execute("SELECT state FROM alerts WHERE device_id = 'r2-sa-1' AND type = 'noisy_device'").fetchone()
        conn.rollback()
    assert state == ("cleared",)
