"""Durable timers (alerts/timers.py) on the real database: a timer whose action breaks is dropped and logged, but a
timer whose database went away during its action is kept for when it is back (the part waits, gridhub/waiting.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gridhub.alerts import changes, timers


@pytest.fixture
def conn(make_registry_database: Callable[[], str]) -> Any:
    with psycopg.connect(make_registry_database(), autocommit=True) as c:
        yield c


def test_a_broken_action_drops_its_timer_but_a_lost_database_keeps_it(conn: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC)
    timers.schedule(conn, "t-broken", "k1", now - timedelta(seconds=1))
    timers.schedule(conn, "t-lost", "k2", now - timedelta(seconds=1))

    def broken(uow: changes.UnitOfWork, key: str, payload: dict[str, Any], at: datetime) -> None:
        raise ValueError("a bug in one timer")

    def lost(uow: changes.UnitOfWork, key: str, payload: dict[str, Any], at: datetime) -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    assert timers.fire_due(conn, now, {"t-broken": broken}) == 1
    assert timers.due_at(conn, "t-broken", "k1") is None  # dropped, logged
    with pytest.raises(psycopg.OperationalError):
        timers.fire_due(conn, now, {"t-lost": lost})
    assert timers.due_at(conn, "t-lost", "k2") is not None  # kept: it fires when the database is back
