"""Grid tasks (CONTRACT §4.1): the one place that decides task transitions — opening or joining a task for an
alert, dispatch, deadlines, reminders, escalation, and the people's actions with their role and state rules.

Every function works inside the caller's transaction on a sync psycopg connection; those that change a task or
an alert take the caller's `changes.UnitOfWork` (its `conn` is the connection) and stage the change on it, and
the unit of work writes the change log when it commits (`with changes.UnitOfWork(conn) as uow: apply_action(uow,
...)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import psycopg

from gridhub.alerts import timers
from gridhub.alerts.changes import UnitOfWork
from gridhub.alerts.rules import RuleBook, load_rules
from gridhub.alerts.shapes import alert_shape, task_shape
from gridhub.auth import Principal
from gridhub.protocol import parse_ts
from gridhub.settings import get_settings

__all__ = ["TaskNotFound", "ActionForbidden", "IllegalTransition", "BadActionBody", "apply_action",
           "task_shape", "alert_shape", "record_history", "open_or_join_task", "escalate", "remind",
           "ACTIONS", "REPORT_ACTIONS", "RESOLUTIONS"]

SYSTEM = "system"
RESOLUTIONS = ("fixed", "false_alarm", "duplicate", "referred_119")
OPEN_STATES = ("open", "accepted", "on_site")
LEVEL_NAMES = {1: "grid head", 2: "street officer", 3: "bureau"}


class TaskNotFound(LookupError):
    """No such task in the caller's scope (404)."""


class ActionForbidden(PermissionError):
    """The caller's role may not take this action (403); the message says who may."""


class IllegalTransition(Exception):
    """The task's state does not allow the action (409); the message says the state and what is allowed."""


class BadActionBody(ValueError):
    """The action's body is missing or invalid (422)."""


@dataclass(frozen=True)
class ActionRule:
    from_states: tuple[str, ...]
    who: str  # human description for ActionForbidden


ACTIONS: dict[str, ActionRule] = {
    "accept": ActionRule(("open",), "the assignee, or a grid head or street officer in scope"),
    "arrive": ActionRule(("accepted",), "the assignee"),
    "resolve": ActionRule(("accepted", "on_site"), "the assignee"),
    "close": ActionRule(("resolved",), "a grid head or street officer in scope, or the bureau"),
    "reject": ActionRule(("resolved",), "a grid head or street officer in scope"),
    "return": ActionRule(("open", "accepted"), "the assignee"),
    "reassign": ActionRule(OPEN_STATES, "a grid head or street officer in scope, or an admin"),
    "extend": ActionRule(OPEN_STATES, "a grid head or street officer in scope"),
    "comment": ActionRule(("open", "accepted", "on_site", "resolved", "closed"), "anyone in scope"),
}
# CONTRACT §7: actions on hazard tasks opened from a report only (alerts/reports.py); kept apart from §4.1's table
# (tests/unit/test_task_states.py pins ACTIONS to §4.1), looked up together in apply_action
REPORT_ACTIONS: dict[str, ActionRule] = {
    "confirm": ActionRule(("open",), "a grid head or street officer in scope"),
    "dismiss": ActionRule(("open",), "a grid head or street officer in scope"),
    "refer": ActionRule(OPEN_STATES, "the assignee, or a grid head or street officer in scope"),
}


@lru_cache(maxsize=1)
def default_rules() -> RuleBook:
    return load_rules(get_settings().rules_file)


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def new_id(prefix: str, now: datetime) -> str:
    import secrets

    return f"{prefix}-{int(now.timestamp() * 1000):011x}{secrets.token_hex(5)}"  # 40 random bits: a storm in one ms


# ------------------------------------------------------------------ history and dispatch

def add_history(conn: psycopg.Connection[Any], task_id: str, at: datetime, actor: str, action: str,
                note: str | None, *, received_at: datetime | None = None) -> None:
    """One step of a task's history at `at`; `received_at` when the hub got it later (an offline replay)."""
    conn.execute("INSERT INTO task_history (task_id, at, actor, action, note, received_at)"
                 " VALUES (%s, %s, %s, %s, %s, %s)",
                 (task_id, at, actor, action, note, received_at if received_at != at else None))


def record_history(uow: UnitOfWork, task_id: str, actor_id: str, action: str, note: str | None,
                   *, now: datetime | None = None) -> None:
    """Add a step to a task's history (e.g. action 'photo' when the API stores evidence) and stage the change."""
    conn = uow.conn
    if conn.execute("SELECT 1 FROM tasks WHERE id = %s", (task_id,)).fetchone() is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    add_history(conn, task_id, _now(now), actor_id, action, note)
    uow.stage_task(task_id)


def _fewest_open(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> str | None:
    row = conn.execute(
        f"SELECT w.id FROM ({sql}) w LEFT JOIN tasks t ON t.assignee = w.id AND t.state IN ('open', 'accepted', 'on_site')"
        " GROUP BY w.id ORDER BY count(t.id), w.id LIMIT 1", params).fetchone()
    return row[0] if row else None


def grid_people(conn: psycopg.Connection[Any], grid_id: str | None, role: str, exclude: str | None = None) -> str | None:
    """The active worker of `role` responsible for the grid with the fewest open tasks."""
    if grid_id is None:
        return None
    if role == "street_officer":
        sql = ("SELECT w.id FROM workers w JOIN communities c ON c.street_id = w.street_id"
               " JOIN grids g ON g.community_id = c.id WHERE g.id = %s AND w.role = 'street_officer' AND w.active"
               " AND w.id IS DISTINCT FROM %s")
    else:
        sql = ("SELECT w.id FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id"
               f" WHERE wg.grid_id = %s AND w.role = '{role}' AND w.active AND w.id IS DISTINCT FROM %s")
    return _fewest_open(conn, sql, (grid_id, exclude))


def choose_assignee(conn: psycopg.Connection[Any], grid_id: str | None) -> str | None:
    """The grid worker with the fewest open tasks; no worker: the grid head; none: the street officer."""
    for role in ("grid_worker", "grid_head", "street_officer"):
        who = grid_people(conn, grid_id, role)
        if who:
            return who
    return None


def _schedule_accept(conn: psycopg.Connection[Any], task_id: str, accept_due: datetime, now: datetime,
                     rules: RuleBook, severity: str) -> None:
    d = rules.deadlines(severity)
    timers.schedule(conn, "escalate", task_id, accept_due)
    timers.schedule(conn, "remind", task_id, now + timedelta(seconds=d.remind_s))


def open_or_join_task(uow: UnitOfWork, *, alert_id: str, alert_type: str, severity: str,
                      incident_key: str, grid_id: str | None, building_id: str | None, device_id: str | None,
                      seen: datetime, now: datetime, rules: RuleBook, note: str,
                      drill: bool = False) -> tuple[str, bool]:
    """Open the incident's task assigned by the dispatch rule, or join the one not yet closed (count and
    last_seen rise); link the alert. Returns (task id, opened). A `drill` task (演练) is notified marked as one,
    never by SMS, and is left out of the KPIs."""
    conn = uow.conn
    d = rules.deadlines(severity)
    assignee = choose_assignee(conn, grid_id)
    accept_due = now + timedelta(seconds=d.accept_s)
    resolve_due = now + timedelta(seconds=d.resolve_s)
    row = conn.execute(
        "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, device_id, assignee, accept_due,"
        " resolve_due, opened_at, last_seen, incident_key, drill)"
        " VALUES (%s, %s, %s, 'open', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (incident_key) WHERE state <> 'closed'"
        " DO UPDATE SET count = tasks.count + 1, last_seen = GREATEST(tasks.last_seen, EXCLUDED.last_seen)"
        " RETURNING id, (xmax = 0)",
        (new_id("tk", now), alert_type, severity, grid_id, building_id, device_id, assignee, accept_due,
         resolve_due, now, seen, incident_key, drill)).fetchone()
    assert row is not None
    task_id, opened = str(row[0]), bool(row[1])
    conn.execute("INSERT INTO task_alerts (task_id, alert_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (task_id, alert_id))
    conn.execute("UPDATE alerts SET task_id = %s WHERE id = %s AND task_id IS NULL", (task_id, alert_id))
    if opened:
        who = f"assigned to {assignee}" if assignee else "no one in the grid or street to assign"
        add_history(conn, task_id, now, SYSTEM, "open", f"{note}; {who}")
        _schedule_accept(conn, task_id, accept_due, now, rules, severity)
        uow.notify(task_id, "task.opened", chain="start", at=now)
        if not drill:  # 重大危险源 "at any time": an alert in the building patrols its major hazard units
            from gridhub.alerts.patrols import on_alert

            on_alert(uow, building_id, alert_type, now, rules)
    else:
        add_history(conn, task_id, now, SYSTEM, "alert", note)
    uow.stage_task(task_id)
    return task_id, opened


def link_alert(conn: psycopg.Connection[Any], task_id: str, alert_id: str) -> None:
    conn.execute("INSERT INTO task_alerts (task_id, alert_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (task_id, alert_id))


def note_repeat(uow: UnitOfWork, task_id: str, seen: datetime) -> None:
    """A repeated alert: the task's count and last_seen rise; the board sees it, workers get no push."""
    uow.conn.execute("UPDATE tasks SET count = count + 1, last_seen = GREATEST(last_seen, %s) WHERE id = %s"
                 " AND state <> 'closed'", (seen, task_id))
    uow.stage_task(task_id, quiet=True)


def annotate(uow: UnitOfWork, task_id: str, now: datetime, action: str, note: str) -> None:
    """A system note on a task that is not closed (an alert cleared: a person still closes the task)."""
    conn = uow.conn
    row = conn.execute("SELECT state FROM tasks WHERE id = %s", (task_id,)).fetchone()
    if row is None or row[0] == "closed":
        return
    add_history(conn, task_id, now, SYSTEM, action, note)
    uow.stage_task(task_id)


# ------------------------------------------------------------------ deadlines

def _lock_task(conn: psycopg.Connection[Any], task_id: str) -> dict[str, Any] | None:
    cur = conn.execute(
        "SELECT id, type, severity, state, grid_id, assignee, escalation_level, accept_due, resolve_due"
        " FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
    row = cur.fetchone()
    if row is None:
        return None
    names = [c.name for c in cur.description or ()]
    return dict(zip(names, row, strict=True))


def escalate(uow: UnitOfWork, task_id: str, now: datetime, rules: RuleBook | None = None) -> None:
    """The escalation timer: at each breach (not accepted by accept_due, not resolved by resolve_due, and each
    further window after that) raise the level by one, as far as the severity allows, and notify that level."""
    conn = uow.conn
    rules = rules or default_rules()
    t = _lock_task(conn, task_id)
    if t is None or t["state"] not in OPEN_STATES:
        return
    d = rules.deadlines(t["severity"])
    phase, due, window = (("accept", t["accept_due"], d.accept_s) if t["state"] == "open"
                          else ("resolve", t["resolve_due"], d.resolve_s))
    if due is not None and now < due:  # moved by extend, reassign or return: wait for the new deadline
        timers.schedule(conn, "escalate", task_id, due)
        return
    level = int(t["escalation_level"])
    if level >= d.max_escalation:
        return
    level += 1
    conn.execute("UPDATE tasks SET escalation_level = %s WHERE id = %s", (level, task_id))
    add_history(conn, task_id, now, SYSTEM, "escalate",
                f"not {'accepted' if phase == 'accept' else 'resolved'} by {due.isoformat() if due else 'its deadline'}:"
                f" level {level}, {LEVEL_NAMES[level]} notified")
    uow.stage_task(task_id)
    uow.notify(task_id, "task.escalated", level=level, at=now)
    if level < d.max_escalation:
        timers.schedule(conn, "escalate", task_id, now + timedelta(seconds=window))


def remind(uow: UnitOfWork, task_id: str, now: datetime, rules: RuleBook | None = None) -> None:
    """The reminder timer: while the task is not accepted, remind the assignee every remind_s."""
    conn = uow.conn
    rules = rules or default_rules()
    t = _lock_task(conn, task_id)
    if t is None or t["state"] != "open":
        return
    add_history(conn, task_id, now, SYSTEM, "remind", f"waiting to be accepted by {t['assignee'] or 'someone'}")
    uow.stage_task(task_id)
    uow.notify(task_id, "task.reminder", at=now)
    timers.schedule(conn, "remind", task_id, now + timedelta(seconds=rules.deadlines(t["severity"]).remind_s))


def timer_actions(rules: RuleBook) -> dict[str, timers.TimerAction]:
    return {"escalate": lambda uow, key, payload, now: escalate(uow, key, now, rules),
            "remind": lambda uow, key, payload, now: remind(uow, key, now, rules)}


# ------------------------------------------------------------------ people's actions

def _note(body: dict[str, Any], required: bool) -> str | None:
    note = body.get("note")
    if note is not None and not isinstance(note, str):
        raise BadActionBody("note must be a string")
    if required and not (note and note.strip()):
        raise BadActionBody("note is required for this action: say why")
    return note.strip() if note else None


def _in_grid(conn: psycopg.Connection[Any], worker_id: str, grid_id: str | None) -> tuple[bool, bool]:
    """(exists and active, responsible for the grid)."""
    row = conn.execute("SELECT role, street_id, active FROM workers WHERE id = %s", (worker_id,)).fetchone()
    if row is None or not row[2]:
        return False, False
    role, street_id = row[0], row[1]
    if role in ("grid_worker", "grid_head"):
        ok = conn.execute("SELECT 1 FROM worker_grids WHERE worker_id = %s AND grid_id = %s",
                          (worker_id, grid_id)).fetchone() is not None
    elif role == "street_officer":
        ok = conn.execute("SELECT 1 FROM grids g JOIN communities c ON c.id = g.community_id"
                          " WHERE g.id = %s AND c.street_id = %s", (grid_id, street_id)).fetchone() is not None
    else:
        ok = False
    return True, ok


def _may(action: str, actor: Principal, task: dict[str, Any]) -> bool:
    is_assignee = task["assignee"] is not None and actor.id == task["assignee"]
    supervisor = actor.role in ("grid_head", "street_officer")
    return {
        "accept": is_assignee or supervisor,
        "arrive": is_assignee,
        "resolve": is_assignee,
        "close": supervisor or actor.role == "bureau",
        "reject": supervisor,
        "return": is_assignee,
        "reassign": supervisor or actor.role == "admin",
        "extend": supervisor,
        "comment": True,
        "confirm": supervisor,
        "dismiss": supervisor,
        "refer": is_assignee or supervisor,
    }[action]


def apply_action(uow: UnitOfWork, task_id: str, action: str, actor: Principal,
                 body: dict[str, Any] | None = None, *, now: datetime | None = None,
                 rules: RuleBook | None = None, client_at: datetime | None = None) -> dict[str, Any]:
    """Take a person's action on a task (CONTRACT §4.1) and return the task in the REST shape.

    `client_at`: when the person took it, for an action replayed from a phone that was offline: the history
    step keeps that time (and `received_at`, the hub's), while deadlines, timers and KPIs use `now`, the time
    the hub received it. A `client_at` in the future is taken as `now`.

    Raises TaskNotFound (no such task in the actor's scope), ActionForbidden (role), IllegalTransition (state),
    BadActionBody (body). Checks run in that order. The caller's unit of work writes the change log and commits.
    """
    conn = uow.conn
    body = body or {}
    if not isinstance(body, dict):
        raise BadActionBody("the body must be a JSON object")
    rule = ACTIONS.get(action) or REPORT_ACTIONS.get(action)
    if rule is None:
        raise BadActionBody(f"unknown task action {action!r}: one of {', '.join([*ACTIONS, *REPORT_ACTIONS])}")
    rules = rules or default_rules()
    now = _now(now)
    t = _lock_task(conn, task_id)
    if t is None or not (actor.sees_grid(t["grid_id"]) or actor.id == t["assignee"]):
        raise TaskNotFound(f"task {task_id} does not exist in your scope")
    if not _may(action, actor, t):
        raise ActionForbidden(f"{action} on task {task_id} is for {rule.who}; you are {actor.role} {actor.id}")
    if t["state"] not in rule.from_states:
        raise IllegalTransition(
            f"task {task_id} is {t['state']}: {action} needs it {' or '.join(rule.from_states)}")
    if action in REPORT_ACTIONS or action == "accept":
        _report_rules(conn, action, task_id, t)
    d = rules.deadlines(t["severity"])
    also: tuple[str, ...] = ()
    said_at = min(client_at, now) if client_at is not None else now

    def step(action: str, note: str | None) -> None:  # the person's step in history, at the person's time
        add_history(conn, task_id, said_at, actor.id, action, note, received_at=now)

    if action == "accept":
        note = _note(body, False)
        conn.execute("UPDATE tasks SET state = 'accepted', accepted_at = %s, assignee = %s WHERE id = %s",
                     (now, actor.id, task_id))
        also = (t["assignee"],) if t["assignee"] and t["assignee"] != actor.id else ()
        step("accept", note)
        for (aid,) in conn.execute(
                "UPDATE alerts SET acked = true, acked_by = %s, acked_at = %s WHERE NOT acked AND id IN"
                " (SELECT alert_id FROM task_alerts WHERE task_id = %s) RETURNING id", (actor.id, now, task_id)).fetchall():
            uow.stage_alert(aid)
        timers.cancel(conn, "remind", task_id)
        timers.schedule(conn, "escalate", task_id, t["resolve_due"] or now + timedelta(seconds=d.resolve_s))
        uow.notify(task_id, "", chain="stop", at=now)
    elif action == "arrive":
        conn.execute("UPDATE tasks SET state = 'on_site' WHERE id = %s", (task_id,))
        step("arrive", _note(body, False))
    elif action == "resolve":
        if t["type"] == "patrol":  # CONTRACT §7: the checklist's results; each hazard item opens a hazard task
            from gridhub.alerts.patrols import BadChecklist, record_results

            try:
                text, _ = record_results(uow, t, body, actor.id, now, rules)
            except BadChecklist as exc:
                raise BadActionBody(str(exc)) from exc
            resolution: Any = "done"
            say = text
        else:
            if "checklist" in body:
                raise BadActionBody(f"checklist is for patrol tasks; task {task_id} is {t['type']}")
            resolution = body.get("resolution")
            if resolution not in RESOLUTIONS:
                raise BadActionBody(f"resolution must be one of {', '.join(RESOLUTIONS)}, not {resolution!r}")
            note = _note(body, False)
            say = f"{resolution}: {note}" if note else resolution
        conn.execute("UPDATE tasks SET state = 'resolved', resolved_at = %s, resolution = %s WHERE id = %s",
                     (now, resolution, task_id))
        step("resolve", say)
        timers.cancel(conn, "escalate", task_id)
        uow.notify(task_id, "", chain="stop", at=now)
        if t["type"] == "hazard":  # 整改 → 复查 (alerts/reports.py)
            from gridhub.alerts.reports import open_recheck

            open_recheck(uow, t, resolution, actor.id, now, rules)
    elif action == "close":
        conn.execute("UPDATE tasks SET state = 'closed', closed_at = %s WHERE id = %s", (now, task_id))
        step("close", _note(body, False))
        timers.cancel(conn, "escalate", task_id)
        timers.cancel(conn, "remind", task_id)
        uow.notify(task_id, "", chain="stop", at=now)
    elif action == "reject":
        note = _note(body, True)
        conn.execute("UPDATE tasks SET state = 'accepted', resolved_at = NULL, resolution = NULL WHERE id = %s",
                     (task_id,))
        if t["type"] == "patrol":  # not done until it is resolved again (its results stay until then)
            conn.execute("UPDATE patrols SET done_at = NULL, done_by = NULL WHERE task_id = %s", (task_id,))
        step("reject", note)
        timers.schedule(conn, "escalate", task_id, max(t["resolve_due"] or now, now))
        uow.notify(task_id, "task.changed", at=now)
    elif action == "return":
        note = _note(body, True)
        head = grid_people(conn, t["grid_id"], "grid_head", exclude=actor.id) or grid_people(
            conn, t["grid_id"], "street_officer", exclude=actor.id)
        if head is None:
            raise IllegalTransition(f"task {task_id} cannot be returned: its grid has no grid head or street officer")
        _reopen(conn, task_id, head, now, rules, t["severity"])
        step("return", f"{note}; assigned to {head}")
        also = (actor.id,)
        uow.notify(task_id, "task.changed", chain="start", at=now)
    elif action == "reassign":
        worker_id = body.get("worker_id")
        if not isinstance(worker_id, str) or not worker_id:
            raise BadActionBody("worker_id is required: the worker to take the task")
        exists, responsible = _in_grid(conn, worker_id, t["grid_id"])
        if not exists:
            raise BadActionBody(f"worker {worker_id} does not exist or is not active")
        if not responsible:
            raise BadActionBody(f"worker {worker_id} is not responsible for grid {t['grid_id']}")
        note = _note(body, False)
        _reopen(conn, task_id, worker_id, now, rules, t["severity"])
        step("reassign",
                    f"{t['assignee']} -> {worker_id}" + (f": {note}" if note else ""))
        also = (t["assignee"],) if t["assignee"] else ()
        uow.notify(task_id, "task.changed", chain="start", at=now)
    elif action == "extend":
        until_raw = body.get("until")
        try:
            until = datetime.fromtimestamp(parse_ts(until_raw) / 1000, tz=UTC) if isinstance(until_raw, str) else None
        except ValueError as exc:
            raise BadActionBody(f"until: {exc}") from exc
        if until is None:
            raise BadActionBody("until is required: an RFC 3339 time with offset")
        if until <= now:
            raise BadActionBody(f"until {until_raw} is not in the future")
        note = _note(body, False)
        conn.execute("UPDATE tasks SET resolve_due = %s WHERE id = %s", (until, task_id))
        step("extend", f"resolve by {until_raw}" + (f": {note}" if note else ""))
        if t["state"] != "open":
            timers.schedule(conn, "escalate", task_id, until)
    elif action == "comment":
        step("comment", _note(body, True))
    elif action in REPORT_ACTIONS:
        _report_action(uow, task_id, action, actor, body, now, step)
    uow.stage_task(task_id, also_notify=also)
    shape = task_shape(conn, task_id)
    assert shape is not None
    return shape


def _report_rules(conn: psycopg.Connection[Any], action: str, task_id: str, t: dict[str, Any]) -> None:
    """State rules of a reported hazard (409): confirm/dismiss/refer only on one, confirm and dismiss only before
    it is confirmed, accept only after (立案 first)."""
    from gridhub.alerts.reports import is_report

    reported, confirmed = is_report(conn, task_id) if t["type"] == "hazard" else (False, False)
    if action == "accept":
        if reported and not confirmed:
            raise IllegalTransition(f"task {task_id} is a reported hazard not yet confirmed: a grid head or street"
                                    " officer confirms it (立案) before it is accepted")
        return
    if not reported:
        raise IllegalTransition(f"{action} is for hazard tasks opened from a report; task {task_id} is"
                                f" {'a hazard not opened from a report' if t['type'] == 'hazard' else t['type']}")
    if action in ("confirm", "dismiss") and confirmed:
        raise IllegalTransition(f"task {task_id} is already confirmed (立案): {action} is for a report not yet"
                                " confirmed")


def _report_action(uow: UnitOfWork, task_id: str, action: str, actor: Principal, body: dict[str, Any],
                   now: datetime, step: Any) -> None:
    conn = uow.conn
    if action == "confirm":
        conn.execute("UPDATE tasks SET confirmed_at = %s WHERE id = %s", (now, task_id))
        note = _note(body, False)
        step("confirm", "立案" + (f": {note}" if note else ""))
        uow.notify(task_id, "task.changed", at=now)
    elif action == "dismiss":
        note = _note(body, True)
        conn.execute("UPDATE tasks SET state = 'closed', closed_at = %s WHERE id = %s", (now, task_id))
        step("dismiss", f"不予立案: {note}")
        timers.cancel(conn, "escalate", task_id)
        timers.cancel(conn, "remind", task_id)
        uow.notify(task_id, "", chain="stop", at=now)
    else:  # refer
        from gridhub.alerts.reports import MAX_DEPARTMENT, refer_detail

        department = body.get("department")
        if not isinstance(department, str) or not department.strip():
            raise BadActionBody("department is required: who it is handed to (消防救援, 执法中队, 物业…)")
        department = department.strip()
        if len(department) > MAX_DEPARTMENT:
            raise BadActionBody(f"department: at most {MAX_DEPARTMENT} characters")
        note = _note(body, True)
        assert note is not None
        refer_detail(conn, task_id, department, note, actor.id, now)
        step("refer", f"referred to {department}: {note}")


def _reopen(conn: psycopg.Connection[Any], task_id: str, assignee: str, now: datetime, rules: RuleBook,
            severity: str) -> None:
    """Back to open for a new assignee, whose accept clock starts now."""
    accept_due = now + timedelta(seconds=rules.deadlines(severity).accept_s)
    conn.execute("UPDATE tasks SET state = 'open', assignee = %s, accepted_at = NULL, accept_due = %s WHERE id = %s",
                 (assignee, accept_due, task_id))
    _schedule_accept(conn, task_id, accept_due, now, rules, severity)
