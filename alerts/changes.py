"""The change log: every alert and task change of a transaction becomes one `changes` row (the REST shape and
who it concerns), written at the end of that transaction in commit order, with pg_notify('gridhub_changes').

Callers stage what they changed (`stage_alert`, `stage_task`) while they work and call `flush` just before
commit. Staging twice in one transaction still writes one row: one notification per change, not per step.
`flush` takes a transaction-level advisory lock before taking ids from the sequence, so change rows become
visible strictly in id order and a reader that remembers the last id it saw (the API's SSE Last-Event-ID)
never skips one; `flush` refuses to run outside a transaction, where that lock would not hold. Commit soon
after flushing: the lock is held until then. MQTT publishing (`publish.py`) marks each row instead of keeping
a cursor, so it does not depend on that order at all.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gridhub.alerts.shapes import alert_shape, task_shape
from gridhub.db import CHANGES_CHANNEL, CHANGES_LOCK

CHANNEL = CHANGES_CHANNEL


@dataclass
class _Staged:
    alerts: dict[str, None] = field(default_factory=dict)
    tasks: dict[str, set[str]] = field(default_factory=dict)  # task id -> extra recipients
    loud: set[str] = field(default_factory=set)  # tasks whose change is pushed to the workers it concerns


_staged: weakref.WeakKeyDictionary[Any, _Staged] = weakref.WeakKeyDictionary()


def stage_alert(conn: psycopg.Connection[Any], alert_id: str) -> None:
    _staged.setdefault(conn, _Staged()).alerts[alert_id] = None


def stage_task(conn: psycopg.Connection[Any], task_id: str, *, also_notify: tuple[str, ...] = (),
               quiet: bool = False) -> None:
    """Mark a task changed. `also_notify`: workers it concerns beyond the assignee and the escalation levels
    (a previous assignee). `quiet`: a repeat that only raised the count: logged for the board, not pushed."""
    st = _staged.setdefault(conn, _Staged())
    st.tasks.setdefault(task_id, set()).update(w for w in also_notify if w)
    if not quiet:
        st.loud.add(task_id)


def discard(conn: psycopg.Connection[Any]) -> None:
    """Forget what was staged (the transaction rolled back)."""
    _staged.pop(conn, None)


def task_recipients(conn: psycopg.Connection[Any], task: dict[str, Any]) -> list[str]:
    """The assignee and everyone the escalation level has reached: 1 grid heads, 2 street officers, 3 bureau."""
    out: set[str] = {task["assignee"]} if task.get("assignee") else set()
    level = int(task.get("escalation_level") or 0)
    if level >= 1 and task.get("grid_id"):
        out.update(r[0] for r in conn.execute(
            "SELECT w.id FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id"
            " WHERE wg.grid_id = %s AND w.role = 'grid_head' AND w.active", (task["grid_id"],)))
    if level >= 2 and task.get("grid_id"):
        out.update(r[0] for r in conn.execute(
            "SELECT w.id FROM workers w JOIN streets s ON s.id = w.street_id"
            " JOIN communities c ON c.street_id = s.id JOIN grids g ON g.community_id = c.id"
            " WHERE g.id = %s AND w.role = 'street_officer' AND w.active", (task["grid_id"],)))
    if level >= 3:
        out.update(r[0] for r in conn.execute("SELECT id FROM workers WHERE role = 'bureau' AND active"))
    return sorted(out)


def flush(conn: psycopg.Connection[Any]) -> list[int]:
    """Write the staged changes as `changes` rows (alerts first, then tasks); returns their ids."""
    st = _staged.pop(conn, None)
    if st is None or (not st.alerts and not st.tasks):
        return []
    rows: list[tuple[str, str, str | None, dict[str, Any], list[str]]] = []
    for aid in st.alerts:
        shape = alert_shape(conn, aid)
        if shape is not None:
            rows.append(("alert", aid, shape.get("grid_id"), shape, []))
    for tid, extra in st.tasks.items():
        shape = task_shape(conn, tid)
        if shape is None:
            continue
        recipients = sorted(set(task_recipients(conn, shape)) | extra) if tid in st.loud else []
        rows.append(("task", tid, shape.get("grid_id"), shape, recipients))
    if not rows:
        return []
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        raise RuntimeError("changes.flush needs an open transaction (`with conn.transaction():`, or a connection"
                           " without autocommit): outside one the ordering lock is gone before the rows commit, so a"
                           " later row could become visible before an earlier one")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGES_LOCK,))
    ids: list[int] = []
    for kind, entity_id, grid_id, payload, recipients in rows:
        row = conn.execute(
            "INSERT INTO changes (kind, entity_id, grid_id, payload, recipients) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING id", (kind, entity_id, grid_id, Jsonb(payload), recipients)).fetchone()
        assert row is not None
        ids.append(int(row[0]))
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(row[0])))
    return ids
