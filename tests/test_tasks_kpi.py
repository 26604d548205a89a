"""KPIs over tasks with known times: closure rate, on-time closure rate, mean times, open and overdue by severity."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gridhub.alerts.kpi import kpis

T0 = datetime(2020, 3, 1, tzinfo=UTC)  # before any other test's tasks
H = timedelta(hours=1)


@pytest.fixture
def tx(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url) as conn:
        yield conn
        conn.rollback()


def task(conn: psycopg.Connection[Any], tid: str, grid: str, severity: str, opened: datetime, resolve_due: datetime,
         accepted: datetime | None = None, resolved: datetime | None = None, closed: datetime | None = None) -> None:
    state = "closed" if closed else "resolved" if resolved else "accepted" if accepted else "open"
    conn.execute(
        "INSERT INTO tasks (id, type, severity, state, grid_id, opened_at, accept_due, resolve_due, accepted_at,"
        " resolved_at, closed_at, last_seen, incident_key) VALUES (%s, 'tamper', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (tid, severity, state, grid, opened, opened + H, resolve_due, accepted, resolved, closed, opened, f"kpi:{tid}"))


def test_rates_and_means_per_grid_and_rolled_up(tx: psycopg.Connection[Any]) -> None:
    # g-xg-01: four tasks due in the period: two closed on time, one closed late, one not closed
    task(tx, "k1", "g-xg-01", "high", T0, T0 + 4 * H, T0 + timedelta(minutes=10), T0 + 2 * H, T0 + 3 * H)
    task(tx, "k2", "g-xg-01", "high", T0, T0 + 4 * H, T0 + timedelta(minutes=30), T0 + 3 * H, T0 + 4 * H)
    task(tx, "k3", "g-xg-01", "normal", T0, T0 + 4 * H, T0 + timedelta(minutes=20), T0 + 5 * H, T0 + 6 * H)
    task(tx, "k4", "g-xg-01", "critical", T0, T0 + 4 * H)
    # g-xg-02: one task due after the period, still open
    task(tx, "k5", "g-xg-02", "low", T0, T0 + 100 * H)
    start, end = T0, T0 + 24 * H
    rows = {r["id"]: r for r in kpis(tx, "grid", start, end, None)}
    g1 = rows["g-xg-01"]
    assert (g1["due"], g1["closed"], g1["closed_on_time"]) == (4, 3, 2)
    assert g1["closure_rate"] == 0.75 and g1["on_time_closure_rate"] == 0.5
    assert g1["mean_accept_s"] == 1200.0  # 10, 30 and 20 minutes
    assert g1["mean_resolve_s"] == round((2 + 3 + 5) * 3600 / 3, 1)
    assert g1["open"]["critical"] == 1 and g1["overdue"]["critical"] == 1
    g2 = rows["g-xg-02"]
    assert g2["due"] == 0 and g2["closure_rate"] is None
    assert g2["open"]["low"] == 1 and g2["overdue"]["low"] == 1  # past its accept deadline, not accepted
    street = kpis(tx, "street", start, end, None)
    assert [(r["id"], r["due"], r["closed"]) for r in street] == [("xiagang", 4, 3)]
    community = kpis(tx, "community", start, end, ["g-xg-02"])
    assert [(r["id"], r["due"], r["open"]["low"]) for r in community] == [("shapowei", 0, 1)]


def test_bad_arguments(tx: psycopg.Connection[Any]) -> None:
    with pytest.raises(ValueError):
        kpis(tx, "planet", T0, T0 + H, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        kpis(tx, "grid", T0, T0, None)
