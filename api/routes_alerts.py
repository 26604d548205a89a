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
from gridhub.api.listing import ListOrder, PageDep, TimeRangeDep, choices, fetch_page
from gridhub.api.schemas import documented
from gridhub.auth import Principal

router = APIRouter(tags=["alerts"])

Severity = Literal["critical", "high", "normal", "low"]
AlertState = Literal["active", "cleared"]
SEVERITY_ORDER = ("critical", "high", "normal", "low")
ALERT_ORDER = ListOrder(("last_seen", "id"), (datetime, str))
# CONTRACT §4.2, and noisy_device (gridhub/rules.yaml); a test keeps this in step with the rule book
ALERT_TYPES = ("fire_alarm", "fire_incident", "sprinkler_critical", "sprinkler_low", "sprinkler_high", "sprinkler_drop",
               "light_fault", "device_offline", "device_fault", "low_battery", "tamper", "exit_blocked",
               "camera_obstructed", "noisy_device")


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
    conn: ConnDep, user: CurrentUser, page: PageDep, first_seen: TimeRangeDep,
    state: AlertState | None = None,
    type: Annotated[str | None, Query(max_length=500, description="an alert type or a comma list, e.g."
                                                                  " fire_alarm,fire_incident")] = None,
    severity: Severity | None = None,
    device: Annotated[str | None, Query(max_length=64)] = None,
    grid: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """Alerts in the caller's scope, newest activity (`last_seen`) first; `start` (inclusive) and `end` (exclusive)
    bound when the alert was first seen (`first_seen`)."""
    require_grid_in_scope(user, grid)
    cond, params = user.grid_filter("grid_id")
    where, args = [cond], list(params)
    types = choices(type, ALERT_TYPES, "type")
    for clause, value in (("state = %s", state), ("type = ANY(%s)", types), ("severity = %s", severity),
                          ("device_id = %s", device), ("grid_id = %s", grid)):
        if value is not None:
            where.append(clause)
            args.append(value)
    in_range, range_args = first_seen.conditions("first_seen")  # alerts_first_seen_idx
    where += in_range
    args += range_args
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
