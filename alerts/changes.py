"""The change log: every alert and task change of a transaction becomes one `changes` row (the REST shape and
who it concerns), written at the end of that transaction in commit order, with pg_notify('gridhub_changes').

A transaction's changes are staged on its `UnitOfWork`, an object passed explicitly to every function that
changes alerts or tasks (there is no global staging area). Used as a context manager it opens the transaction,
writes the change rows (`flush`) just before commit and forgets them if the block raises, so no caller can
forget either::

    with changes.UnitOfWork(conn) as uow:
        records.raise_alert(uow, place, "tamper", seen, now, rules)
    uow.ids  # the change rows it wrote, for the fresh publisher

Staging twice in one transaction still writes one row: one notification per change, not per step.
`flush` takes a transaction-level advisory lock before taking ids from the sequence, so change rows become
visible strictly in id order and a reader that remembers the last id it saw (the API's SSE Last-Event-ID)
never skips one; `flush` refuses to run outside a transaction, where that lock would not hold. Commit soon
after flushing: the lock is held until then. MQTT publishing (`publish.py`) marks each row instead of keeping
a cursor, so it does not depend on that order at all.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from gridhub.alerts.shapes import alert_shape, task_shape
from gridhub.db import CHANGES_CHANNEL, CHANGES_LOCK

__all__ = ["CHANNEL", "Notice", "UnitOfWork", "level_people", "task_recipients"]

CHANNEL = CHANGES_CHANNEL


@dataclass(frozen=True)
class Notice:
    """What a task change asks of notifications (CONTRACT §6); see `UnitOfWork.notify`."""

    event: str  # '' when only the chain changes
    level: int = 0
    chain: str | None = None  # 'start' | 'stop' | None
    at: datetime | None = None  # the engine's time of the change (fallback steps count from it)


class UnitOfWork:
    """The alert and task changes of one transaction on `conn`, written as `changes` rows when it commits.

    `with UnitOfWork(conn) as uow:` opens the transaction (a savepoint if `conn` is already in one, which then
    commits with the caller's), flushes before commit and discards the staged changes if the block raises. Used
    without `with`, the caller runs the transaction and calls `flush` before committing. One unit of work per
    transaction: entering it twice is refused.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.ids: list[int] = []  # the change rows flushed so far
        self._alerts: dict[str, None] = {}  # ordered set: rows are written in staging order
        self._tasks: dict[str, set[str]] = {}  # task id -> extra recipients
        self._loud: set[str] = set()  # tasks whose change is pushed to the workers it concerns
        self._notices: dict[str, list[Notice]] = {}  # task id -> what people must be told (CONTRACT §6)
        self._tx: AbstractContextManager[psycopg.Transaction] | None = None
        self._entered = False

    def stage_alert(self, alert_id: str) -> None:
        self._alerts[alert_id] = None

    def stage_task(self, task_id: str, *, also_notify: tuple[str, ...] = (), quiet: bool = False) -> None:
        """Mark a task changed. `also_notify`: workers it concerns beyond the assignee and the escalation levels
        (a previous assignee). `quiet`: a repeat that only raised the count: logged for the board, not pushed."""
        self._tasks.setdefault(task_id, set()).update(w for w in also_notify if w)
        if not quiet:
            self._loud.add(task_id)

    def notify(self, task_id: str, event: str, *, level: int = 0, chain: str | None = None,
               at: datetime | None = None) -> None:
        """Stage a notice for the task's change (CONTRACT §6): `event` one of task.opened, task.escalated,
        task.reminder, task.changed; `level` the escalation level reached (task.escalated); `chain` 'start' (a
        new accept clock: fallback steps to the next levels while nobody accepts) or 'stop' (accepted, resolved,
        closed: pending fallback steps are skipped). The notice becomes delivery rows in this transaction
        (`gridhub.alerts.notify.plan`), after the change row it belongs to."""
        self._notices.setdefault(task_id, []).append(Notice(event, level, chain, at))
        if event:
            self.stage_task(task_id)

    def _forget(self) -> tuple[dict[str, None], dict[str, set[str]], set[str]]:
        staged = self._alerts, self._tasks, self._loud
        self._alerts, self._tasks, self._loud = {}, {}, set()
        self._notices = {}
        return staged

    def flush(self) -> list[int]:
        """Write the staged changes as `changes` rows (alerts first, then tasks) and forget them; returns their
        ids (also added to `ids`). What is staged afterwards is written by the next flush."""
        notices = self._notices
        alerts, tasks, loud = self._forget()
        if not alerts and not tasks:
            return []
        conn = self.conn
        rows: list[tuple[str, str, str | None, dict[str, Any], list[str]]] = []
        for aid in alerts:
            shape = alert_shape(conn, aid)
            if shape is not None:
                rows.append(("alert", aid, shape.get("grid_id"), shape, []))
        for tid, extra in tasks.items():
            shape = task_shape(conn, tid)
            if shape is None:
                continue
            recipients = sorted(set(task_recipients(conn, shape)) | extra) if tid in loud else []
            rows.append(("task", tid, shape.get("grid_id"), shape, recipients))
        if not rows:
            return []
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            raise RuntimeError("changes.UnitOfWork.flush needs an open transaction (`with changes.UnitOfWork(conn)"
                               " as uow:`, or a connection without autocommit): outside one the ordering lock is gone"
                               " before the rows commit, so a later row could become visible before an earlier one")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGES_LOCK,))
        ids: list[int] = []
        for kind, entity_id, grid_id, payload, recipients in rows:
            row = conn.execute(
                "INSERT INTO changes (kind, entity_id, grid_id, payload, recipients) VALUES (%s, %s, %s, %s, %s)"
                " RETURNING id", (kind, entity_id, grid_id, Jsonb(payload), recipients)).fetchone()
            assert row is not None
            ids.append(int(row[0]))
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(row[0])))
            if kind == "task" and entity_id in notices:
                # the planner reads the notify file; imported when first needed
                from gridhub.alerts.notify import plan

                plan.deliveries(conn, int(row[0]), payload, notices[entity_id])
        self.ids.extend(ids)
        return ids

    def __enter__(self) -> UnitOfWork:
        if self._entered:
            raise RuntimeError("a changes.UnitOfWork is one transaction: make a new one for the next")
        self._entered = True
        tx = self.conn.transaction()
        tx.__enter__()
        self._tx = tx
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        tx, self._tx = self._tx, None
        assert tx is not None
        if exc_type is None:
            try:
                self.flush()
            except BaseException as err:  # the rows are not written: roll back, then raise
                self._forget()
                if not tx.__exit__(type(err), err, err.__traceback__):
                    raise
                return False
            return bool(tx.__exit__(None, None, None))
        self._forget()
        return bool(tx.__exit__(exc_type, exc, tb))


def level_people(conn: psycopg.Connection[Any], grid_id: str | None, level: int) -> list[str]:
    """The active people an escalation level reaches for a grid: 1 its grid heads, 2 its street's officers, 3 the
    bureau."""
    if level == 3:
        return [r[0] for r in conn.execute("SELECT id FROM workers WHERE role = 'bureau' AND active ORDER BY id")]
    if grid_id is None:
        return []
    if level == 1:
        sql = ("SELECT w.id FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id"
               " WHERE wg.grid_id = %s AND w.role = 'grid_head' AND w.active ORDER BY w.id")
    elif level == 2:
        sql = ("SELECT w.id FROM workers w JOIN streets s ON s.id = w.street_id"
               " JOIN communities c ON c.street_id = s.id JOIN grids g ON g.community_id = c.id"
               " WHERE g.id = %s AND w.role = 'street_officer' AND w.active ORDER BY w.id")
    else:
        return []
    return [r[0] for r in conn.execute(sql, (grid_id,))]


def task_recipients(conn: psycopg.Connection[Any], task: dict[str, Any]) -> list[str]:
    """The assignee and everyone the escalation level has reached: 1 grid heads, 2 street officers, 3 bureau."""
    out: set[str] = {task["assignee"]} if task.get("assignee") else set()
    for level in range(1, min(int(task.get("escalation_level") or 0), 3) + 1):
        out.update(level_people(conn, task.get("grid_id"), level))
    return sorted(out)
