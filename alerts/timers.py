"""Durable timers in the database (offline deadlines, escalations, reminders, noisy-device checks) and the clock
they run on; a due timer is taken with FOR UPDATE SKIP LOCKED, so several processes never fire one twice.

A device's timer carries the device's partition (alerts/partitions.py) and is fired only by a holder of that
partition, whose in-memory state of the device it may read; `ANY_SHARD` (-1) timers (escalations, reminders,
recovery, patrol plans) are fired by any holder of a partition. A standby, holding none, fires nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from gridhub.alerts import changes
from gridhub.db import TIMERS_CHANNEL

log = logging.getLogger("gridhub.alerts.timers")

CHANNEL = TIMERS_CHANNEL
ANY_SHARD = -1  # the `partition` of a timer any holder may fire


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ShiftedClock:
    """The system clock moved by an offset that tests can change (deadlines without sleeping)."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def schedule(conn: psycopg.Connection[Any], kind: str, key: str, due_at: datetime, *, partition: int = ANY_SHARD,
             payload: dict[str, Any] | None = None, wake: bool = True) -> None:
    """Set (or move) the timer `kind`/`key`; the timer loops are woken when the transaction commits (the payload
    is the due time, so that a loop already waking earlier need not look again)."""
    conn.execute(
        "INSERT INTO timers (kind, key, due_at, partition, payload) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (kind, key) DO UPDATE SET due_at = EXCLUDED.due_at, partition = EXCLUDED.partition,"
        " payload = EXCLUDED.payload", (kind, key, due_at, partition, Jsonb(payload or {})))
    if wake:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, repr(due_at.timestamp())))


def cancel(conn: psycopg.Connection[Any], kind: str, key: str) -> None:
    conn.execute("DELETE FROM timers WHERE kind = %s AND key = %s", (kind, key))


def due_at(conn: psycopg.Connection[Any], kind: str, key: str) -> datetime | None:
    row = conn.execute("SELECT due_at FROM timers WHERE kind = %s AND key = %s", (kind, key)).fetchone()
    return row[0] if row else None


TimerAction = Callable[[changes.UnitOfWork, str, dict[str, Any], datetime], None]
"""A timer's action: (the unit of work of the timer's transaction, key, payload, now)."""


def _eligible(kinds: Collection[str], partitions: Collection[int], held_back: Collection[str]) -> tuple[str, list[Any]]:
    """The timers a holder of `partitions` fires: theirs and the ANY_SHARD ones; none without a partition."""
    cond = ("kind = ANY(%s) AND NOT (kind = ANY(%s)) AND cardinality(%s::int[]) > 0"
            " AND (partition = -1 OR partition = ANY(%s::int[]))")
    held = sorted(partitions)
    return cond, [list(kinds), list(held_back), held, held]


def fire_due(conn: psycopg.Connection[Any], now: datetime, actions: dict[str, TimerAction], *,
             partitions: Collection[int] = (0,), held_back: Collection[str] = (), limit: int = 1000) -> int:
    """Fire the timers due at `now`, each in its own transaction and unit of work; returns how many fired.

    A timer is deleted before its action runs, in the same transaction, so an action that reschedules it
    (schedule with the same kind and key) keeps the new due time; an action that fails is rolled back (its
    staged changes with it) and the timer stays deleted. Only the timers of `partitions` (and ANY_SHARD ones, when
    any is held) fire; `held_back` kinds wait (the offline grace).
    """
    cond, params = _eligible(actions.keys(), partitions, held_back)
    fired = 0
    while fired < limit:
        with conn.transaction():
            row = conn.execute(
                f"SELECT kind, key, payload FROM timers WHERE due_at <= %s AND {cond}"
                " ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED", [now, *params]).fetchone()
            if row is None:
                return fired
            kind, key, payload = row
            conn.execute("DELETE FROM timers WHERE kind = %s AND key = %s", (kind, key))
            try:
                with changes.UnitOfWork(conn) as uow:  # a savepoint: flushed before the timer's transaction commits
                    actions[kind](uow, key, payload or {}, now)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise  # the database went away: the transaction fails and the timer stays (gridhub/waiting.py waits)
            except Exception:  # noqa: BLE001 - one broken timer must not stop the others; it is logged
                log.exception("timer %s/%s failed; dropped", kind, key)
        fired += 1
    return fired


def wakes_earlier(payload: str, wake_at: datetime) -> bool:
    """Whether a NOTIFY from `schedule` (payload: due time, epoch seconds) is due before `wake_at`."""
    try:
        return datetime.fromtimestamp(float(payload), UTC) < wake_at
    except (ValueError, OverflowError):
        return True


def next_due(conn: psycopg.Connection[Any], kinds: Collection[str], *, partitions: Collection[int] = (0,),
             held_back: Collection[str] = ()) -> datetime | None:
    cond, params = _eligible(kinds, partitions, held_back)
    row = conn.execute(f"SELECT min(due_at) FROM timers WHERE {cond}", params).fetchone()
    return row[0] if row else None
