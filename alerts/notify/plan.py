"""Deliveries planned in the transaction of the task change that needs them (CONTRACT §6).

`deliveries()` is called by `changes.UnitOfWork.flush` right after it wrote the task's `changes` row, so a
delivery row exists exactly when its change committed: a crash can lose neither, and a change made while no
notify file was configured has no delivery row at all (an upgrade with a long `changes` log sends nothing).

Per notice (`changes.Notice`):

- `task.opened`, `task.reminder`, `task.changed` go to the assignee on the channels of the severity's
  `assignee` entry; `task.escalated` to the people of the level reached on that level's entry.
- chain `start` (opened, reassigned, returned: a new accept clock) plans one *fallback* row per person and channel
  of each further level k (1 grid heads, 2 street officers, 3 the bureau), due `k × fallback_after_s` later; the
  sender sends such a row only if the task is still not accepted and the escalation has not reached k by then.
  A new chain skips the old chain's pending rows; chain `stop` (accepted, resolved, closed) skips them
  (`state = 'skipped'`, the reason in `answer`): accepting stops the chain.
- A group robot (WeCom, DingTalk) gets one row per change naming the people (`mentions`); every other channel
  one row per person. SMS is never used for a drill, nor for a person without a phone: such rows are written as
  `skipped` at once, so the task's deliveries show why nobody was texted.
- Quiet hours of the severity's route hold a row until they end.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gridhub import metrics
from gridhub.alerts.changes import Notice, level_people
from gridhub.notifyfile import NotifyFile, NotifyFileError, Route, load
from gridhub.settings import get_settings

__all__ = ["DELIVERIES_CHANNEL", "configured", "deliveries", "new_delivery_id", "reset_config"]

log = logging.getLogger("gridhub.notify")
DELIVERIES_CHANNEL = "gridhub_deliveries"
GROUP_TYPES = ("wecom_robot", "dingtalk_robot")
_cache: dict[str, Any] = {}


def reset_config() -> None:
    """Forget the cached notify file (tests, and a reload after the file changed)."""
    _cache.clear()


def configured(path: Path | None = None) -> NotifyFile | None:
    """The notify file in force (`GRIDHUB_NOTIFY_FILE`), re-read when its modification time changes; None when
    unset. A file that became invalid keeps the last good one in force and says so in the log."""
    path = path or get_settings().notify_file
    if path is None:
        return None
    try:
        stamp = (str(path), path.stat().st_mtime_ns)
    except OSError:
        stamp = (str(path), -1)
    if _cache.get("stamp") == stamp:
        return _cache.get("file")
    try:
        nf = load(path)
    except NotifyFileError as exc:
        log.error("notify file not used: %s", exc)
        if "file" not in _cache:
            raise
        return _cache["file"]  # type: ignore[no-any-return]
    _cache.update(stamp=stamp, file=nf)
    return nf


def new_delivery_id(now: datetime) -> str:
    return f"nd-{int(now.timestamp() * 1000):011x}{secrets.token_hex(4)}"


def deliveries(conn: psycopg.Connection[Any], change_id: int, task: dict[str, Any], notices: list[Notice],
               *, now: datetime | None = None) -> int:
    """Write the delivery rows of one task change; returns how many. Never raises for a bad notify file: an
    alarm's transaction must not fail because of it (the file is checked when the parts start)."""
    try:
        nf = configured()
    except NotifyFileError:
        return 0
    if nf is None:
        return 0
    written = 0
    for notice in notices:
        now = notice.at or now or datetime.now(UTC)
        if notice.chain in ("start", "stop"):
            why = ("a new accept clock (reassigned or returned)" if notice.chain == "start"
                   else f"not needed: task {task['state']}")
            _skip_fallbacks(conn, task["id"], why, now)
        if notice.event in ("task.opened", "task.reminder", "task.changed"):
            if task.get("assignee"):
                written += _plan(conn, nf, change_id, task, notice.event, "assignee", [task["assignee"]], now, now)
        elif notice.event == "task.escalated" and 1 <= notice.level <= 3:
            _skip_fallbacks(conn, task["id"], f"escalation reached level {notice.level}", now,
                            max_level=notice.level)
            written += _plan(conn, nf, change_id, task, notice.event, f"level{notice.level}",
                             level_people(conn, task.get("grid_id"), notice.level), now, now)
        if notice.chain == "start":
            written += _plan_fallbacks(conn, nf, change_id, task, now)
    if written:
        conn.execute("SELECT pg_notify(%s, %s)", (DELIVERIES_CHANNEL, str(change_id)))
    return written


def _skip_fallbacks(conn: psycopg.Connection[Any], task_id: str, why: str, now: datetime,
                    max_level: int = 3) -> None:
    routes = [f"level{k}" for k in range(1, max_level + 1)]
    conn.execute(
        "UPDATE notify_deliveries SET state = 'skipped', answer = %s, finished_at = %s"
        " WHERE task_id = %s AND fallback AND state = 'pending' AND route = ANY(%s)", (why, now, task_id, routes))


def _plan_fallbacks(conn: psycopg.Connection[Any], nf: NotifyFile, change_id: int, task: dict[str, Any],
                    now: datetime) -> int:
    after = nf.fallback_s(task["severity"])
    route = nf.route(task["severity"])
    if after is None or route is None:
        return 0
    written = 0
    for k in (1, 2, 3):
        if route.channels(f"level{k}"):
            people = level_people(conn, task.get("grid_id"), k)
            written += _plan(conn, nf, change_id, task, "task.escalated", f"level{k}", people, now,
                             now + timedelta(seconds=k * after), fallback=True)
    return written


def _people(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, dict[str, Any]]:
    cur = conn.execute("SELECT id, phone, active FROM workers WHERE id = ANY(%s)", (ids,))
    return {r[0]: {"phone": r[1], "active": r[2]} for r in cur}


def _plan(conn: psycopg.Connection[Any], nf: NotifyFile, change_id: int, task: dict[str, Any], event: str,
          level: str, people: list[str], now: datetime, due: datetime, *, fallback: bool = False) -> int:
    route: Route | None = nf.route(task["severity"])
    if route is None or not people:
        return 0
    quiet_end = route.quiet_until(due, get_settings().tz)
    if quiet_end is not None:
        due = max(due, quiet_end)
    expires = due + timedelta(seconds=nf.expire_after_s)
    drill = bool(task.get("drill"))
    known = _people(conn, people)
    people = [p for p in people if known.get(p, {}).get("active")]
    written = 0
    for name in route.channels(level):
        ch = nf.channels[name]
        if ch.type in GROUP_TYPES:
            rows: list[tuple[str | None, list[str], str | None]] = [(None, people, None)]
        else:
            rows = []
            for p in people:
                skip = None
                if ch.type == "sms" and drill:
                    skip = "drill: never by SMS"
                elif ch.type == "sms" and not known[p]["phone"]:
                    skip = f"{p} has no phone"
                rows.append((p, [], skip))
        for recipient, mentions, skip in rows:
            conn.execute(
                "INSERT INTO notify_deliveries (id, task_id, change_id, event, recipient, mentions, route, channel,"
                " channel_type, severity, drill, fallback, state, created_at, due_at, expires_at, finished_at,"
                " answer, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (new_delivery_id(now), task["id"], change_id, event, recipient, mentions, level, name, ch.type,
                 task["severity"], drill, fallback, "skipped" if skip else "pending", now, due, expires,
                 now if skip else None, skip, Jsonb(task)))
            written += 1
            if skip:
                metrics.bump(conn, {("gridhub_notifications_total", f'channel="{name}",result="skipped"'): 1})
    return written
