"""The task state machine (CONTRACT §4.1) on the real database: every action x role x state, bodies, deadlines."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import namedtuple_row

from gridhub.alerts import changes, records, tasks, timers
from gridhub.alerts.rules import load_rules
from gridhub.auth import PRINCIPAL_SQL, Principal, principal_from_row

RULES = load_rules()
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
STATES = ("open", "accepted", "on_site", "resolved", "closed")
# who is who in tests/data/registry.yaml (+ w-005, a second grid worker of g-xg-01 added below)
ACTORS = ("assignee", "other_worker", "head", "street", "bureau", "admin", "worker_out", "head_out")
ACTOR_IDS = {"assignee": "w-001", "other_worker": "w-005", "head": "w-002", "street": "s-001", "bureau": "b-001",
             "admin": "a-001", "worker_out": "w-003", "head_out": "w-004"}
# CONTRACT §4.1, written out independently of the code under test
WHO: dict[str, set[str]] = {
    "accept": {"assignee", "head", "street"},
    "arrive": {"assignee"},
    "resolve": {"assignee"},
    "close": {"head", "street", "bureau"},
    "reject": {"head", "street"},
    "return": {"assignee"},
    "reassign": {"head", "street", "admin"},
    "extend": {"head", "street"},
    "comment": {"assignee", "other_worker", "head", "street", "bureau", "admin"},
}
FROM: dict[str, set[str]] = {
    "accept": {"open"}, "arrive": {"accepted"}, "resolve": {"accepted", "on_site"}, "close": {"resolved"},
    "reject": {"resolved"}, "return": {"open", "accepted"}, "reassign": {"open", "accepted", "on_site"},
    "extend": {"open", "accepted", "on_site"}, "comment": set(STATES),
}
TO = {"accept": "accepted", "arrive": "on_site", "resolve": "resolved", "close": "closed", "reject": "accepted",
      "return": "open", "reassign": "open"}
BODY: dict[str, dict[str, Any]] = {
    "resolve": {"resolution": "fixed", "note": "换了电池"}, "close": {"note": "核查结案"}, "reject": {"note": "返工"},
    "return": {"note": "不是我的网格"}, "reassign": {"worker_id": "w-005"},
    "extend": {"until": (NOW + timedelta(days=2)).isoformat(), "note": "等配件"}, "comment": {"note": "已电话联系"},
}


@pytest.fixture(scope="module")
def people(db_url: str) -> dict[str, Principal]:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO workers (id, name, role) VALUES ('w-005', '吴十', 'grid_worker') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO worker_grids VALUES ('w-005', 'g-xg-01') ON CONFLICT DO NOTHING")
        out = {}
        for key, wid in ACTOR_IDS.items():
            row = conn.cursor(row_factory=namedtuple_row).execute(PRINCIPAL_SQL, (wid,)).fetchone()
            out[key] = principal_from_row(row)
    return out


@pytest.fixture
def tx(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection whose work is rolled back at the end of the test (its units of work are savepoints)."""
    with psycopg.connect(db_url) as conn:
        conn.execute("SELECT 1")  # the test's transaction is open: no unit of work commits on its own
        yield conn
        conn.rollback()


def make_task(conn: psycopg.Connection[Any], state: str, *, severity: str = "high", key: str | None = None) -> str:
    """A task assigned to w-001 in g-xg-01 with one alert, moved straight to `state` (its change logged as such)."""
    p = records.place_of(conn, "sa-0001")
    assert p is not None
    alert_id = tasks.new_id("al", NOW)
    with changes.UnitOfWork(conn) as uow:
        conn.execute("INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, first_seen, last_seen)"
                     " VALUES (%s, 'sa-0001', 'b-12', 'g-xg-01', 'tamper', %s, %s, %s)", (alert_id, severity, NOW, NOW))
        task_id, opened = tasks.open_or_join_task(
            uow, alert_id=alert_id, alert_type="tamper", severity=severity, incident_key=key or f"test:{alert_id}",
            grid_id="g-xg-01", building_id="b-12", device_id="sa-0001", seen=NOW, now=NOW, rules=RULES, note="test")
        assert opened
        conn.execute("UPDATE tasks SET assignee = 'w-001', state = %s WHERE id = %s", (state, task_id))
    return task_id


def apply_action(conn: psycopg.Connection[Any], task_id: str, action: str, actor: Principal,
                 body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """`tasks.apply_action` in a unit of work of its own, as the API calls it."""
    with changes.UnitOfWork(conn) as uow:
        return tasks.apply_action(uow, task_id, action, actor, body, **kw)


def record_history(conn: psycopg.Connection[Any], task_id: str, actor_id: str, action: str, note: str | None) -> None:
    with changes.UnitOfWork(conn) as uow:
        tasks.record_history(uow, task_id, actor_id, action, note)


def ack_alert(conn: psycopg.Connection[Any], alert_id: str, actor: Principal, now: datetime) -> dict[str, Any]:
    with changes.UnitOfWork(conn) as uow:
        return records.ack_alert(uow, alert_id, actor, now)


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("action", list(WHO))
@pytest.mark.parametrize("actor", ACTORS)
def test_every_action_role_and_state(tx: psycopg.Connection[Any], people: dict[str, Principal], action: str,
                                     actor: str, state: str) -> None:
    task_id = make_task(tx, state)
    who = people[actor]
    if actor in ("worker_out", "head_out"):
        with pytest.raises(tasks.TaskNotFound):
            apply_action(tx, task_id, action, who, BODY.get(action, {}), now=NOW, rules=RULES)
        return
    if actor not in WHO[action]:
        with pytest.raises(tasks.ActionForbidden) as forbidden:
            apply_action(tx, task_id, action, who, BODY.get(action, {}), now=NOW, rules=RULES)
        assert action in str(forbidden.value)
        return
    if state not in FROM[action]:
        with pytest.raises(tasks.IllegalTransition) as illegal:
            apply_action(tx, task_id, action, who, BODY.get(action, {}), now=NOW, rules=RULES)
        assert state in str(illegal.value)
        return
    out = apply_action(tx, task_id, action, who, BODY.get(action, {}), now=NOW, rules=RULES)
    assert out["state"] == TO.get(action, state)
    assert out["history"][-1]["action"] == action
    assert out["history"][-1]["actor"] == who.id
    change = tx.execute("SELECT kind, payload, recipients FROM changes WHERE entity_id = %s ORDER BY id DESC LIMIT 1",
                        (task_id,)).fetchone()
    assert change is not None and change[0] == "task" and change[1]["state"] == out["state"]
    assert out["assignee"] in change[2]


def test_unknown_task_and_action(tx: psycopg.Connection[Any], people: dict[str, Principal]) -> None:
    with pytest.raises(tasks.TaskNotFound):
        apply_action(tx, "tk-nope", "accept", people["head"], {}, now=NOW)
    task_id = make_task(tx, "open")
    with pytest.raises(tasks.BadActionBody):
        apply_action(tx, task_id, "explode", people["head"], {}, now=NOW)


@pytest.mark.parametrize(("action", "state", "actor", "body", "needle"), [
    ("reject", "resolved", "head", {}, "note"),
    ("reject", "resolved", "head", {"note": "  "}, "note"),
    ("return", "open", "assignee", {}, "note"),
    ("comment", "open", "head", {}, "note"),
    ("resolve", "accepted", "assignee", {}, "resolution"),
    ("resolve", "accepted", "assignee", {"resolution": "gone"}, "resolution"),
    ("reassign", "open", "head", {}, "worker_id"),
    ("reassign", "open", "head", {"worker_id": "w-999"}, "w-999"),
    ("reassign", "open", "head", {"worker_id": "w-003"}, "not responsible"),
    ("reassign", "open", "head", {"worker_id": "b-001"}, "not responsible"),
    ("extend", "accepted", "head", {}, "until"),
    ("extend", "accepted", "head", {"until": "tomorrow"}, "until"),
    ("extend", "accepted", "head", {"until": (NOW - timedelta(hours=1)).isoformat()}, "future"),
])
def test_bad_bodies(tx: psycopg.Connection[Any], people: dict[str, Principal], action: str, state: str, actor: str,
                    body: dict[str, Any], needle: str) -> None:
    task_id = make_task(tx, state)
    with pytest.raises(ValueError) as err:
        apply_action(tx, task_id, action, people[actor], body, now=NOW, rules=RULES)
    assert isinstance(err.value, tasks.BadActionBody)
    assert needle in str(err.value)


def test_accept_by_head_takes_the_task_and_acks_its_alerts(tx: psycopg.Connection[Any],
                                                          people: dict[str, Principal]) -> None:
    task_id = make_task(tx, "open")
    out = apply_action(tx, task_id, "accept", people["head"], {}, now=NOW, rules=RULES)
    assert out["assignee"] == "w-002" and out["state"] == "accepted"
    acked = tx.execute("SELECT bool_and(acked), count(*) FROM alerts WHERE id = ANY(%s)", (out["alert_ids"],)).fetchone()
    assert acked == (True, 1)
    rec = tx.execute("SELECT recipients FROM changes WHERE entity_id = %s ORDER BY id DESC LIMIT 1", (task_id,)).fetchone()
    assert rec is not None and set(rec[0]) >= {"w-001", "w-002"}  # the previous assignee hears of it too
    assert timers.due_at(tx, "remind", task_id) is None
    assert timers.due_at(tx, "escalate", task_id) is not None


def test_return_goes_to_the_grid_head_and_restarts_the_accept_clock(tx: psycopg.Connection[Any],
                                                                    people: dict[str, Principal]) -> None:
    task_id = make_task(tx, "accepted")
    later = NOW + timedelta(hours=1)
    out = apply_action(tx, task_id, "return", people["assignee"], {"note": "走错楼"}, now=later, rules=RULES)
    assert out["state"] == "open" and out["assignee"] == "w-002"
    assert out["accept_due"] == tasks.task_shape(tx, task_id)["accept_due"]  # type: ignore[index]
    due = tx.execute("SELECT accept_due FROM tasks WHERE id = %s", (task_id,)).fetchone()
    assert due is not None and due[0] == later + timedelta(seconds=RULES.deadlines("high").accept_s)


def test_extend_moves_resolve_due(tx: psycopg.Connection[Any], people: dict[str, Principal]) -> None:
    task_id = make_task(tx, "on_site")
    until = NOW + timedelta(days=3)
    apply_action(tx, task_id, "extend", people["street"], {"until": until.isoformat()}, now=NOW, rules=RULES)
    row = tx.execute("SELECT resolve_due, state FROM tasks WHERE id = %s", (task_id,)).fetchone()
    assert row == (until, "on_site")
    assert timers.due_at(tx, "escalate", task_id) == until


def test_photo_history(tx: psycopg.Connection[Any]) -> None:
    task_id = make_task(tx, "on_site")
    record_history(tx, task_id, "w-001", "photo", "evidence ev-1")
    shape = tasks.task_shape(tx, task_id)
    assert shape is not None and shape["history"][-1] == {**shape["history"][-1], "action": "photo", "actor": "w-001"}
    with pytest.raises(tasks.TaskNotFound):
        record_history(tx, "tk-nope", "w-001", "photo", None)


def test_shape_times_have_offsets(tx: psycopg.Connection[Any]) -> None:
    task_id = make_task(tx, "open")
    shape = tasks.task_shape(tx, task_id)
    assert shape is not None
    for key in ("accept_due", "resolve_due", "opened_at"):
        parsed = datetime.fromisoformat(shape[key])
        assert parsed.utcoffset() is not None
    assert set(shape) >= {"id", "type", "severity", "state", "grid_id", "building_id", "device_id", "assignee",
                          "escalation_level", "accept_due", "resolve_due", "alert_ids", "count", "history"}
    alert = tasks.alert_shape(tx, shape["alert_ids"][0])
    assert alert is not None and set(alert) >= {"id", "device_id", "building_id", "type", "severity", "state",
                                                "acked", "count", "first_seen", "last_seen", "task_id"}


@pytest.mark.parametrize(("severity", "levels"), [("critical", 3), ("high", 2), ("normal", 1), ("low", 0)])
def test_escalation_one_level_per_breach_as_far_as_severity_allows(tx: psycopg.Connection[Any], severity: str,
                                                                   levels: int) -> None:
    task_id = make_task(tx, "open", severity=severity)
    d = RULES.deadlines(severity)
    actions = tasks.timer_actions(RULES)
    t = NOW
    seen_levels = []
    for _ in range(6):  # more breaches than levels: it stops at the severity's ceiling
        t += timedelta(seconds=d.accept_s + 1)
        timers.fire_due(tx, t, actions, held_back=("remind",))
        row = tx.execute("SELECT escalation_level, assignee FROM tasks WHERE id = %s", (task_id,)).fetchone()
        assert row is not None and row[1] == "w-001"  # escalation notifies, never reassigns
        seen_levels.append(row[0])
    assert seen_levels[:levels] == list(range(1, levels + 1))
    assert max(seen_levels) == levels
    last = tx.execute("SELECT recipients FROM changes WHERE entity_id = %s ORDER BY id DESC LIMIT 1", (task_id,)).fetchone()
    expect = {"w-001"} | ({"w-002"} if levels >= 1 else set()) | ({"s-001"} if levels >= 2 else set()) | (
        {"b-001"} if levels >= 3 else set())
    assert last is not None and set(last[0]) == expect


def test_no_escalation_before_the_deadline_nor_after_accept(tx: psycopg.Connection[Any],
                                                            people: dict[str, Principal]) -> None:
    task_id = make_task(tx, "open", severity="critical")
    actions = tasks.timer_actions(RULES)
    timers.fire_due(tx, NOW + timedelta(seconds=60), actions)
    assert tx.execute("SELECT escalation_level FROM tasks WHERE id = %s", (task_id,)).fetchone() == (0,)
    apply_action(tx, task_id, "accept", people["assignee"], {}, now=NOW + timedelta(seconds=90), rules=RULES)
    timers.fire_due(tx, NOW + timedelta(seconds=200), actions)
    assert tx.execute("SELECT escalation_level FROM tasks WHERE id = %s", (task_id,)).fetchone() == (0,)
    # not resolved within 30 min: the resolve deadline is a breach too
    timers.fire_due(tx, NOW + timedelta(seconds=1801), actions)
    assert tx.execute("SELECT escalation_level FROM tasks WHERE id = %s", (task_id,)).fetchone() == (1,)


def test_reminders_until_accepted(tx: psycopg.Connection[Any], people: dict[str, Principal]) -> None:
    task_id = make_task(tx, "open", severity="critical")
    actions = {"remind": tasks.timer_actions(RULES)["remind"]}
    for i in range(1, 4):
        timers.fire_due(tx, NOW + timedelta(seconds=121 * i), actions)
    n = tx.execute("SELECT count(*) FROM task_history WHERE task_id = %s AND action = 'remind'", (task_id,)).fetchone()
    assert n == (3,)
    apply_action(tx, task_id, "accept", people["assignee"], {}, now=NOW + timedelta(seconds=400), rules=RULES)
    timers.fire_due(tx, NOW + timedelta(seconds=2000), actions)
    n = tx.execute("SELECT count(*) FROM task_history WHERE task_id = %s AND action = 'remind'", (task_id,)).fetchone()
    assert n == (3,)


def test_dispatch_picks_the_grid_worker_with_fewest_open_tasks(tx: psycopg.Connection[Any]) -> None:
    tx.execute("UPDATE tasks SET state = 'closed' WHERE state <> 'closed'")
    first = tasks.choose_assignee(tx, "g-xg-01")
    make_task(tx, "open", key="a")
    tx.execute("UPDATE tasks SET assignee = %s WHERE incident_key = 'a'", (first,))
    second = tasks.choose_assignee(tx, "g-xg-01")
    assert {first, second} == {"w-001", "w-005"}
    # no grid worker: the grid head; no head either: the street officer
    tx.execute("UPDATE workers SET active = false WHERE id IN ('w-001', 'w-005')")
    assert tasks.choose_assignee(tx, "g-xg-01") == "w-002"
    tx.execute("UPDATE workers SET active = false WHERE id = 'w-002'")
    assert tasks.choose_assignee(tx, "g-xg-01") == "s-001"


def test_ack_alert_in_scope_only(tx: psycopg.Connection[Any], people: dict[str, Principal]) -> None:
    task_id = make_task(tx, "open")
    alert_id = tasks.task_shape(tx, task_id)["alert_ids"][0]  # type: ignore[index]
    with pytest.raises(records.AlertNotFound):
        ack_alert(tx, alert_id, people["worker_out"], NOW)
    out = ack_alert(tx, alert_id, people["head"], NOW)
    assert out["acked"] is True
    change = tx.execute("SELECT payload FROM changes WHERE entity_id = %s ORDER BY id DESC LIMIT 1", (alert_id,)).fetchone()
    assert change is not None and change[0]["acked"] is True
