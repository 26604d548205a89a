"""The change log's unit of work (alerts/changes.py) on the real database: one row per entity and transaction,
written just before commit; nothing written when the block raises; inside a caller's transaction a savepoint that
commits or rolls back with it; one unit of work per transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from gridhub.alerts import changes


def new_alert(conn: psycopg.Connection[Any]) -> str:
    """A cleared alert of sa-0001 (cleared: no clash with any test's active alert of the same type)."""
    alert_id = f"al-uow-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    conn.execute("INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, state, first_seen,"
                 " last_seen) VALUES (%s, 'sa-0001', 'b-12', 'g-xg-01', 'tamper', 'high', 'cleared', %s, %s)",
                 (alert_id, now, now))
    return alert_id


def logged(db_url: str, entity: str) -> list[tuple[int, bool]]:
    """The committed change rows of `entity` (id, acked in the payload), read on a connection of their own."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        return [(int(r[0]), bool(r[1])) for r in conn.execute(
            "SELECT id, (payload->>'acked')::boolean FROM changes WHERE entity_id = %s ORDER BY id", (entity,))]


def test_staging_twice_writes_one_row_with_the_committed_shape(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        alert_id = new_alert(conn)
        with changes.UnitOfWork(conn) as uow:
            uow.stage_alert(alert_id)
            conn.execute("UPDATE alerts SET acked = true WHERE id = %s", (alert_id,))
            uow.stage_alert(alert_id)
            assert uow.ids == []  # written just before commit, not while staging
        assert len(uow.ids) == 1
        assert logged(db_url, alert_id) == [(uow.ids[0], True)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # committed


def test_a_block_that_raises_writes_nothing(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        alert_id = new_alert(conn)
        with pytest.raises(LookupError), changes.UnitOfWork(conn) as uow:
            conn.execute("UPDATE alerts SET acked = true WHERE id = %s", (alert_id,))
            uow.stage_alert(alert_id)
            raise LookupError("the caller's work failed")
        assert uow.ids == [] and logged(db_url, alert_id) == []
        assert conn.execute("SELECT acked FROM alerts WHERE id = %s", (alert_id,)).fetchone() == (False,)
        with changes.UnitOfWork(conn) as quiet:  # psycopg.Rollback: rolled back without an error, nothing written
            quiet.stage_alert(alert_id)
            raise psycopg.Rollback
        assert quiet.ids == [] and logged(db_url, alert_id) == []


def test_inside_a_transaction_it_is_a_savepoint_of_it(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        alert_id = new_alert(conn)
        conn.commit()
        conn.execute("SELECT 1")  # the caller's transaction
        with changes.UnitOfWork(conn) as uow:
            uow.stage_alert(alert_id)
        assert len(uow.ids) == 1
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # the caller commits
        assert logged(db_url, alert_id) == []
        conn.rollback()
        assert logged(db_url, alert_id) == []
        conn.execute("SELECT 1")
        with changes.UnitOfWork(conn) as again:
            again.stage_alert(alert_id)
        conn.commit()
        assert [i for i, _ in logged(db_url, alert_id)] == again.ids


def test_one_unit_of_work_per_transaction(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        uow = changes.UnitOfWork(conn)
        with uow:
            pass
        with pytest.raises(RuntimeError, match="one transaction"), uow:
            pass
