"""Alerts: the scoped list, newest first, and acknowledgement."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from gridhub.alerts import changes
from gridhub.alerts.records import AlertNotFound, ack_alert
from gridhub.alerts.shapes import ALERT_COLUMNS, alert_from_row
from gridhub.api import schemas
from gridhub.api.deps import ConnDep, CurrentUser, SyncPoolDep, require_grid_in_scope
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.schemas import documented
from gridhub.auth import Principal

router = APIRouter(tags=["alerts"])

Severity = Literal["critical", "high", "normal", "low"]
AlertState = Literal["active", "cleared"]
SEVERITY_ORDER = ("critical", "high", "normal", "low")
ALERT_ORDER = ListOrder(("last_seen", "id"), (datetime, str))


async def scoped_alert(conn: ConnDep, user: Principal, alert_id: str) -> dict[str, Any]:
    """404 if the alert does not exist, 403 if it is outside the caller's grids (judged in SQL)."""
    cond, params = user.grid_filter("grid_id")
    row = await (await conn.execute(f"SELECT id, grid_id, ({cond}) AS in_scope FROM alerts WHERE id = %s",
                                    [*params, alert_id])).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"alert {alert_id} does not exist")
    if not row["in_scope"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"alert {alert_id} is in grid {row['grid_id']}, outside your scope")
    return row


@router.get("/alerts", response_model=None, responses=documented(schemas.AlertPage))
async def list_alerts(
    conn: ConnDep, user: CurrentUser, page: PageDep,
    state: AlertState | None = None,
    type: Annotated[str | None, Query(max_length=64, description="alert type, e.g. fire_alarm")] = None,
    severity: Severity | None = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    grid: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Alerts in the caller's scope, newest activity (`last_seen`) first."""
    require_grid_in_scope(user, grid)
    cond, params = user.grid_filter("grid_id")
    where, args = [cond], list(params)
    for clause, value in (("state = %s", state), ("type = %s", type), ("severity = %s", severity),
                          ("device_id = %s", device), ("grid_id = %s", grid)):
        if value is not None:
            where.append(clause)
            args.append(value)
    return await fetch_page(conn, f"SELECT {ALERT_COLUMNS} FROM alerts", where, args, ALERT_ORDER, page,
                            alert_from_row)


@router.post("/alerts/{alert_id}/ack", response_model=None, responses=documented(schemas.Alert))
async def acknowledge(alert_id: str, conn: ConnDep, user: CurrentUser, sync_pool: SyncPoolDep) -> dict[str, Any]:
    """Acknowledge an alert (idempotent); the change goes to the live stream."""
    await scoped_alert(conn, user, alert_id)

    def ack() -> dict[str, Any]:
        with sync_pool.connection() as c, changes.UnitOfWork(c) as uow:
            return ack_alert(uow, alert_id, user, datetime.now(UTC))

    try:
        return await run_in_threadpool(ack)
    except AlertNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
