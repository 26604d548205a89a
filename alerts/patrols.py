"""Patrol plans and patrol tasks (巡查计划, CONTRACT §7), and the hazards patrols and facilities raise.

- A unit's plan is a durable timer (`patrol_plan`, keyed by the unit): when it fires it creates the patrol of every
  period of the unit's class frequency that has started and has none yet (catching up after the hub was down), then
  waits for the next period's start. A patrol exists only from its period's start; `patrols_plan_period_key` keeps
  one per unit and period whichever process, restart or catch-up creates it.
- Periods are calendar periods in the district's time zone (weekly from Monday, monthly, quarterly, half-yearly,
  yearly). Within a period, the grid's units of a class are spread over the days (`planned_for`) and over the grid's
  workers (round-robin by unit id), so a quarter's patrols do not all fall on its first day or one worker.
- A patrol is due by its period's end (its accept and resolve deadlines are both the end): not done by then, the
  escalation timer tells the grid head and it shows as overdue; done later it counts as done, not on time.
- Resolving a patrol (`record_results`, called by `tasks.apply_action`) records each checklist item ok / hazard / n/a
  with notes and photos; each hazard item opens a `hazard` task linked to the patrol (`source_task_id`); resolving
  that hazard opens the `recheck` (alerts/reports.py `open_recheck`).
- A unit class in `patrols.on_alert` (major hazards by default) gets an extra patrol (kind `alert`) when an alert
  opens a task in its building, one open at a time.
- A facility whose `expires` date has passed opens one `hazard` task for that expiry (`facility_expiry` timer).

Everything runs in the caller's transaction and stages its changes on the caller's `changes.UnitOfWork`.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.types.json import Jsonb

from gridhub.alerts import timers
from gridhub.alerts.changes import UnitOfWork
from gridhub.alerts.rules import RuleBook
from gridhub.labels import FACILITY_KINDS, FREQUENCY_NAMES, UNIT_CLASSES
from gridhub.settings import get_settings

__all__ = ["CLASS_LABELS", "FREQUENCY_LABELS", "BadChecklist", "period_containing", "sync_plans", "generate_due",
           "record_results", "on_alert", "facility_expired", "timer_actions"]

log = logging.getLogger("gridhub.alerts.patrols")

CLASS_LABELS = UNIT_CLASSES
FREQUENCY_LABELS = FREQUENCY_NAMES
RESULTS = ("ok", "hazard", "n/a")
OPEN_STATES = ("open", "accepted", "on_site")
CATCH_UP = timedelta(days=366)  # after a long outage, periods that started longer ago than this are not created
MAX_NOTE = 2000
MAX_PHOTOS_PER_ITEM = 10


class BadChecklist(ValueError):
    """The results of a patrol are incomplete or invalid (422); the message names the item."""


def _zone() -> ZoneInfo:
    return get_settings().tz


# ------------------------------------------------------------------ periods

def _period_dates(frequency: str, day: date) -> tuple[date, date]:
    """The calendar period of `frequency` containing `day`: [start, end) as local dates."""
    if frequency == "weekly":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    months = {"monthly": 1, "quarterly": 3, "half_yearly": 6, "yearly": 12}[frequency]
    first = (day.month - 1) // months * months + 1
    start = date(day.year, first, 1)
    m = first - 1 + months
    return start, date(day.year + m // 12, m % 12 + 1, 1)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def period_containing(frequency: str, at: datetime, tz: ZoneInfo | None = None) -> tuple[datetime, datetime]:
    """The period of `frequency` containing the instant `at`, as UTC instants of local midnights."""
    tz = tz or _zone()
    start, end = _period_dates(frequency, at.astimezone(tz).date())
    return _local_midnight(start, tz), _local_midnight(end, tz)


# ------------------------------------------------------------------ plans

def sync_plans(conn: psycopg.Connection[Any], now: datetime) -> tuple[int, int]:
    """Give every unit its plan timer and every facility with an expiry date its expiry timer (idempotent: timers that
    exist keep their due time; a changed expiry moves its timer). Returns (plan timers added, expiry timers set)."""
    tz = _zone()
    plans = conn.execute(
        "INSERT INTO timers (kind, key, due_at, partition, payload) SELECT 'patrol_plan', u.id, %s, -1, '{}'::jsonb"
        " FROM units u ON CONFLICT (kind, key) DO NOTHING", (now,)).rowcount
    rows = conn.execute(
        "SELECT f.id, f.expires FROM facilities f WHERE f.expires IS NOT NULL AND NOT EXISTS"
        " (SELECT 1 FROM tasks t WHERE t.incident_key = 'facility:' || f.id || ':' || f.expires::text)"
        " AND NOT EXISTS (SELECT 1 FROM timers m WHERE m.kind = 'facility_expiry' AND m.key = f.id"
        "                 AND m.payload->>'expires' = f.expires::text)").fetchall()
    for fid, expires in rows:
        timers.schedule(conn, "facility_expiry", fid, _local_midnight(expires + timedelta(days=1), tz),
                        payload={"expires": expires.isoformat()}, wake=False)
    if plans or rows:
        conn.execute("SELECT pg_notify(%s, %s)", (timers.CHANNEL, repr(now.timestamp())))
    return plans, len(rows)


def _unit(conn: psycopg.Connection[Any], unit_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT id, name, class, grid_id, building_id FROM units WHERE id = %s", (unit_id,))
    row = cur.fetchone()
    return dict(zip([c.name for c in cur.description or ()], row, strict=True)) if row else None


def generate_due(uow: UnitOfWork, unit_id: str, now: datetime, rules: RuleBook) -> list[str]:
    """The plan timer of one unit: create the patrols of the periods that have started and have none (the current one,
    and after an outage the ones missed, at most `CATCH_UP` back), then wait for the next period. Returns the new
    patrol task ids."""
    conn = uow.conn
    unit = _unit(conn, unit_id)
    if unit is None:
        return []
    tz = _zone()
    freq = rules.patrols.frequency[unit["class"]]
    current_start, current_end = period_containing(freq, now, tz)
    row = conn.execute("SELECT max(period_start) FROM patrols WHERE unit_id = %s AND kind = 'plan'",
                       (unit_id,)).fetchone()
    last = row[0] if row else None
    starts: list[tuple[datetime, datetime]] = []
    if last is None:
        starts.append((current_start, current_end))
    else:
        _, nxt = period_containing(freq, last, tz)
        while nxt <= now:
            s, e = period_containing(freq, nxt, tz)
            if now - s <= CATCH_UP:
                starts.append((s, e))
            nxt = e
    made = [tid for s, e in starts
            if (tid := _create(uow, unit, "plan", freq, s, e, now, rules)) is not None]
    timers.schedule(conn, "patrol_plan", unit_id, current_end, wake=False)
    return made


def _spread(conn: psycopg.Connection[Any], unit: dict[str, Any], start: datetime, end: datetime,
            tz: ZoneInfo) -> tuple[date, str | None]:
    """The unit's planned day in the period and its worker: the grid's units of the class, in id order, spread evenly
    over the period's days and round-robin over the grid's active grid workers."""
    ids = [r[0] for r in conn.execute("SELECT id FROM units WHERE grid_id = %s AND class = %s ORDER BY id",
                                      (unit["grid_id"], unit["class"])).fetchall()]
    idx = ids.index(unit["id"]) if unit["id"] in ids else 0
    first, last = start.astimezone(tz).date(), end.astimezone(tz).date()
    days = max((last - first).days, 1)
    planned = first + timedelta(days=idx * days // max(len(ids), 1))
    workers = [r[0] for r in conn.execute(
        "SELECT w.id FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id WHERE wg.grid_id = %s"
        " AND w.role = 'grid_worker' AND w.active ORDER BY w.id", (unit["grid_id"],)).fetchall()]
    return planned, (workers[idx % len(workers)] if workers else None)


def _create(uow: UnitOfWork, unit: dict[str, Any], kind: str, frequency: str, start: datetime, end: datetime,
            now: datetime, rules: RuleBook, *, note: str | None = None) -> str | None:
    """One patrol task of `unit` for [start, end); None when the plan's period already has its patrol."""
    from gridhub.alerts.tasks import SYSTEM, add_history, choose_assignee, new_id

    conn = uow.conn
    tz = _zone()
    if kind == "plan":
        planned, worker = _spread(conn, unit, start, end, tz)
    else:
        planned, worker = now.astimezone(tz).date(), None
    assignee = worker or choose_assignee(conn, unit["grid_id"])
    task_id = new_id("tk", now)
    conn.execute("SAVEPOINT patrol")
    try:
        conn.execute(
            "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, unit_id, assignee, accept_due,"
            " resolve_due, opened_at, last_seen, incident_key)"
            " VALUES (%s, 'patrol', 'normal', 'open', %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (task_id, unit["grid_id"], unit["building_id"], unit["id"], assignee, end, end, now, now,
             f"patrol:{task_id}"))
        conn.execute(
            "INSERT INTO patrols (task_id, unit_id, class, kind, frequency, period_start, period_end, planned_for,"
            " checklist) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (task_id, unit["id"], unit["class"], kind, frequency, start, end, planned,
             Jsonb(rules.patrols.checklist(unit["class"]))))
    except psycopg.errors.UniqueViolation:
        conn.execute("ROLLBACK TO SAVEPOINT patrol")
        return None
    conn.execute("RELEASE SAVEPOINT patrol")
    last_day = (end.astimezone(tz) - timedelta(days=1)).date()
    who = f"assigned to {assignee}" if assignee else "no one in the grid or street to assign"
    head = (f"巡查计划 {FREQUENCY_LABELS[frequency]} {start.astimezone(tz).date()}–{last_day}" if kind == "plan"
            else f"告警触发巡查 {note or ''}".rstrip())
    add_history(conn, task_id, now, SYSTEM, "open",
                f"{head}: {unit['name']} ({unit['id']}, {CLASS_LABELS[unit['class']]}), 计划 {planned}; {who}")
    timers.schedule(conn, "escalate", task_id, end)
    if kind == "alert":
        uow.notify(task_id, "task.opened", chain="start", at=now)
    uow.stage_task(task_id)  # the worker's list and the board see it; a planned patrol sends no notification
    return task_id


def on_alert(uow: UnitOfWork, building_id: str | None, alert_type: str, now: datetime, rules: RuleBook) -> list[str]:
    """An alert opened a task in `building_id`: the units there of a class in `patrols.on_alert` get an extra patrol
    (kind `alert`, due within the normal resolve deadline) unless one is still open."""
    if not building_id or not rules.patrols.on_alert:
        return []
    conn = uow.conn
    made: list[str] = []
    for (unit_id,) in conn.execute(
            "SELECT u.id FROM units u WHERE u.building_id = %s AND u.class = ANY(%s) AND NOT EXISTS"
            " (SELECT 1 FROM patrols p JOIN tasks t ON t.id = p.task_id WHERE p.unit_id = u.id AND p.kind = 'alert'"
            "  AND t.state = ANY(%s)) ORDER BY u.id",
            (building_id, list(rules.patrols.on_alert), list(OPEN_STATES))).fetchall():
        unit = _unit(conn, unit_id)
        assert unit is not None
        end = now + timedelta(seconds=rules.deadlines("normal").resolve_s)
        tid = _create(uow, unit, "alert", "alert", now, end, now, rules, note=f"({alert_type})")
        if tid:
            made.append(tid)
    return made


# ------------------------------------------------------------------ results

def _parse_results(body: dict[str, Any], checklist: list[dict[str, str]], task_photos: set[str]) -> list[dict[str, Any]]:
    raw = body.get("checklist")
    if not isinstance(raw, list):
        raise BadChecklist("checklist is required to resolve a patrol: a list of {id, result: ok|hazard|n/a}, one per"
                           f" item ({', '.join(i['id'] for i in checklist)})")
    labels = {i["id"]: i["label"] for i in checklist}
    answers: dict[str, dict[str, Any]] = {}
    for n, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise BadChecklist(f"checklist[{n}] must be an object with id and result")
        unknown = set(entry) - {"id", "result", "note", "photos"}
        if unknown:
            raise BadChecklist(f"checklist[{n}]: unknown field {', '.join(sorted(unknown))}")
        item = entry.get("id")
        if item not in labels:
            raise BadChecklist(f"checklist[{n}].id: {item!r} is not an item of this patrol's checklist")
        if item in answers:
            raise BadChecklist(f"checklist[{n}].id: {item} is answered twice")
        result = entry.get("result")
        if result not in RESULTS:
            raise BadChecklist(f"checklist[{n}].result ({item}): one of ok, hazard, n/a, not {result!r}")
        note = entry.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
            raise BadChecklist(f"checklist[{n}].note ({item}): a string of at most {MAX_NOTE} characters")
        photos = entry.get("photos") or []
        if not isinstance(photos, list) or len(photos) > MAX_PHOTOS_PER_ITEM or not all(isinstance(p, str) for p in photos):
            raise BadChecklist(f"checklist[{n}].photos ({item}): at most {MAX_PHOTOS_PER_ITEM} evidence ids")
        foreign = [p for p in photos if p not in task_photos]
        if foreign:
            raise BadChecklist(f"checklist[{n}].photos ({item}): {', '.join(foreign)} is not a photo of this patrol:"
                               " upload it with POST /api/v1/tasks/{id}/photos first")
        note = note.strip() if isinstance(note, str) and note.strip() else None
        if result == "hazard" and not note and not photos:
            raise BadChecklist(f"checklist[{n}] ({item}, {labels[item]}): a hazard needs a note or a photo")
        answers[item] = {"id": item, "label": labels[item], "result": result, "note": note, "photos": photos}
    missing = [i for i in labels if i not in answers]
    if missing:
        raise BadChecklist(f"checklist: not answered: {', '.join(f'{i} ({labels[i]})' for i in missing)}")
    return [answers[i["id"]] for i in checklist]


def record_results(uow: UnitOfWork, task: dict[str, Any], body: dict[str, Any], actor_id: str, now: datetime,
                   rules: RuleBook) -> tuple[str, list[str]]:
    """Check and store a patrol's results and open a `hazard` task per hazard item. Returns (the history note, the
    hazard task ids). Raises BadChecklist before changing anything."""
    conn = uow.conn
    row = conn.execute("SELECT p.checklist, p.unit_id, u.name FROM patrols p JOIN units u ON u.id = p.unit_id"
                       " WHERE p.task_id = %s", (task["id"],)).fetchone()
    if row is None:
        raise BadChecklist(f"task {task['id']} has no patrol plan row")
    checklist, unit_id, unit_name = row
    if body.get("resolution") not in (None, "done"):
        raise BadChecklist("a patrol is resolved with its checklist; its resolution is `done`, not"
                           f" {body.get('resolution')!r}")
    note = body.get("note")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise BadChecklist(f"note: a string of at most {MAX_NOTE} characters")
    photos = {r[0] for r in conn.execute("SELECT id FROM evidence WHERE task_id = %s", (task["id"],)).fetchall()}
    results = _parse_results(body, checklist, photos)
    hazards = [r for r in results if r["result"] == "hazard"]
    opened = [_open_found_hazard(uow, task, unit_id, unit_name, r, actor_id, now, rules) for r in hazards]
    conn.execute("UPDATE patrols SET results = %s, note = %s, done_at = %s, done_by = %s, hazards = %s"
                 " WHERE task_id = %s", (Jsonb(results), note.strip() if note else None, now, actor_id, len(hazards),
                                         task["id"]))
    counts = {k: sum(1 for r in results if r["result"] == k) for k in RESULTS}
    text = (f"done: {len(results)} items, {counts['ok']} ok, {counts['hazard']} hazard, {counts['n/a']} n/a"
            + (f"; hazard tasks {', '.join(opened)}" if opened else "") + (f"; {note.strip()}" if note else ""))
    return text, opened


def _open_found_hazard(uow: UnitOfWork, patrol: dict[str, Any], unit_id: str, unit_name: str, item: dict[str, Any],
                       actor_id: str, now: datetime, rules: RuleBook) -> str:
    from gridhub.alerts.reports import HAZARD_SEVERITY, _new_task, _start
    from gridhub.alerts.tasks import SYSTEM, _in_grid, add_history, choose_assignee

    conn = uow.conn
    again = conn.execute("SELECT id FROM tasks WHERE source_task_id = %s AND type = 'hazard' AND detail->>'item' = %s"
                         " AND state <> 'closed'", (patrol["id"], item["id"])).fetchone()
    if again is not None:  # the patrol was rejected and is resolved again: the item's hazard is already open
        add_history(conn, str(again[0]), now, actor_id, "found", f"巡查再次确认: {item['label']}"
                    + (f": {item['note']}" if item["note"] else "") + f" (patrol {patrol['id']})")
        uow.stage_task(str(again[0]))
        return str(again[0])
    category = rules.patrols.items[item["id"]].category if item["id"] in rules.patrols.items else "other"
    _, responsible = _in_grid(conn, actor_id, patrol["grid_id"])
    assignee = actor_id if responsible else choose_assignee(conn, patrol["grid_id"])
    building = conn.execute("SELECT building_id FROM tasks WHERE id = %s", (patrol["id"],)).fetchone()
    building_id = building[0] if building else None
    detail = {"source": "patrol", "patrol": patrol["id"], "item": item["id"], "label": item["label"],
              "category": category, "note": item["note"], "photos": item["photos"], "unit": unit_id}
    task_id, accept_due = _new_task(uow, task_type="hazard", severity=HAZARD_SEVERITY, place_grid=patrol["grid_id"],
                                    building_id=building_id, now=now, rules=rules, reported_by=None, detail=detail,
                                    source_task_id=patrol["id"], assignee=assignee, unit_id=unit_id)
    who = f"assigned to {assignee}" if assignee else "no one in the grid or street to assign"
    add_history(conn, task_id, now, actor_id, "found",
                f"巡查发现隐患 {unit_name} ({unit_id}): {item['label']}" + (f": {item['note']}" if item["note"] else "")
                + f" (patrol {patrol['id']})")
    add_history(conn, task_id, now, SYSTEM, "open", f"hazard found on patrol {patrol['id']}; {who}")
    _start(uow, task_id, patrol["grid_id"], accept_due, now, rules, HAZARD_SEVERITY, tell_heads=False)
    return task_id


# ------------------------------------------------------------------ facilities

def facility_expired(uow: UnitOfWork, facility_id: str, payload: dict[str, Any], now: datetime,
                     rules: RuleBook) -> str | None:
    """The expiry timer of a facility: its `expires` date has passed: one `hazard` task for that expiry (none if the
    date was changed since, or the task exists in any state)."""
    from gridhub.alerts.reports import HAZARD_SEVERITY, _new_task, _start
    from gridhub.alerts.tasks import SYSTEM, add_history, choose_assignee

    conn = uow.conn
    row = conn.execute("SELECT f.kind, f.building_id, f.floor, f.place, f.expires, b.grid_id, b.name FROM facilities f"
                       " JOIN buildings b ON b.id = f.building_id WHERE f.id = %s", (facility_id,)).fetchone()
    if row is None or row[4] is None or row[4].isoformat() != payload.get("expires"):
        return None
    kind, building_id, floor, place, expires, grid_id, building_name = row
    if now < _local_midnight(expires + timedelta(days=1), _zone()):
        return None
    key = f"facility:{facility_id}:{expires.isoformat()}"
    if conn.execute("SELECT 1 FROM tasks WHERE incident_key = %s", (key,)).fetchone():
        return None
    assignee = choose_assignee(conn, grid_id)
    detail = {"source": "facility", "facility": facility_id, "kind": kind, "expires": expires.isoformat(),
              "category": "fire_equipment", "floor": floor, "place": place}
    task_id, accept_due = _new_task(uow, task_type="hazard", severity=HAZARD_SEVERITY, place_grid=grid_id,
                                    building_id=building_id, now=now, rules=rules, reported_by=None, detail=detail,
                                    source_task_id=None, assignee=assignee, incident_key=key)
    where = f"{building_name} ({building_id})" + (f" {floor}F" if floor is not None else "") + (f" {place}" if place else "")
    add_history(conn, task_id, now, SYSTEM, "open",
                f"{FACILITY_KINDS.get(kind, kind)} {facility_id} at {where} 已过有效期 {expires.isoformat()};"
                f" assigned to {assignee or 'no one'}")
    _start(uow, task_id, grid_id, accept_due, now, rules, HAZARD_SEVERITY, tell_heads=False)
    return task_id


def timer_actions(rules: RuleBook) -> dict[str, timers.TimerAction]:
    return {"patrol_plan": lambda uow, key, payload, now: (generate_due(uow, key, now, rules), None)[1],
            "facility_expiry": lambda uow, key, payload, now: (facility_expired(uow, key, payload, now, rules), None)[1]}
