"""Grid tasks: the scoped list, one task with its history and alerts, and the §4.1 actions through the alert
engine's state machine (`gridhub.alerts.tasks.apply_action`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gridhub import audit
from gridhub.alerts import changes
from gridhub.alerts.shapes import TASK_COLUMNS, alert_columns, alert_from_row, task_from_row
from gridhub.alerts.tasks import ActionForbidden, IllegalTransition, TaskNotFound, apply_action
from gridhub.api import idempotency, schemas
from gridhub.api.deps import ClientAddress, ConnDep, CurrentUser, SyncPoolDep, require_grid_in_scope
from gridhub.api.idempotency import OfflineDep
from gridhub.api.listing import ListOrder, PageDep, TimeRangeDep, choices, fetch_page
from gridhub.api.routes_alerts import ALERT_TYPES
from gridhub.api.schemas import documented
from gridhub.auth import Principal

router = APIRouter(tags=["tasks"])

TASK_STATES = ("open", "accepted", "on_site", "resolved", "closed")
SEVERITIES = ("critical", "high", "normal", "low")
# a task raised by an alert has the alert's type; the grid's own work (CONTRACT §7) adds three
TASK_TYPES = (*ALERT_TYPES, "patrol", "hazard", "recheck")
Action = Literal["accept", "arrive", "resolve", "close", "reject", "return", "reassign", "extend", "comment"]

# The task in the REST shape (gridhub.alerts.shapes builds it, for the change log too) plus where it is.
TASK_PLACE_COLUMNS = """
       b.name AS building_name, d.kind AS device_kind, d.floor, d.place, g.name AS grid_name,
       w.name AS assignee_name"""
TASK_FROM = """
FROM tasks t
LEFT JOIN buildings b ON b.id = t.building_id
LEFT JOIN devices d ON d.id = t.device_id
LEFT JOIN grids g ON g.id = t.grid_id
LEFT JOIN workers w ON w.id = t.assignee
"""
TASK_SELECT = f"SELECT {TASK_COLUMNS}, {TASK_PLACE_COLUMNS} {TASK_FROM}"
TASK_ORDER = ListOrder(("t.opened_at", "t.id"), (datetime, str))


def task_with_place(row: Mapping[str, Any]) -> dict[str, Any]:
    """The task shape with its `location` and `assignee_name`, as the API answers it."""
    out = task_from_row(row)
    out["location"] = {"grid": row["grid_name"], "building": row["building_name"], "floor": row["floor"],
                       "place": row["place"], "device_kind": row["device_kind"]}
    out["assignee_name"] = row["assignee_name"]
    return out


def _scope(user: Principal) -> tuple[str, list[Any]]:
    """Tasks in the caller's grids, and any task assigned to the caller."""
    cond, params = user.grid_filter("t.grid_id")
    if user.all_grids:
        return cond, params
    return f"({cond} OR t.assignee = %s)", [*params, user.id]


async def scoped_task(conn: ConnDep, user: Principal, task_id: str) -> dict[str, Any]:
    """The task row: 404 if it does not exist, 403 if outside the caller's scope (judged in SQL)."""
    cond, params = _scope(user)
    row = await (await conn.execute(f"SELECT ({cond}) AS in_scope, {TASK_COLUMNS}, {TASK_PLACE_COLUMNS} {TASK_FROM}"
                                    " WHERE t.id = %s", [*params, task_id])).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id} does not exist")
    if not row["in_scope"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"task {task_id} is in grid {row['grid_id']}, outside your scope")
    return row


@router.get("/tasks", response_model=None, responses=documented(schemas.TaskPage))
async def list_tasks(
    conn: ConnDep, user: CurrentUser, page: PageDep, opened: TimeRangeDep,
    state: Annotated[str | None, Query(max_length=100, description="a state or a comma list, e.g. open,accepted")] = None,
    severity: Annotated[str | None, Query(max_length=100, description="a severity or a comma list")] = None,
    assignee: Annotated[str | None, Query(max_length=64, description="`me` or a worker id")] = None,
    grid: Annotated[str | None, Query(max_length=64)] = None,
    type: Annotated[str | None, Query(max_length=500, description="a task type or a comma list, e.g."
                                                                  " fire_alarm,fire_incident")] = None,
) -> dict[str, Any]:
    """Tasks in the caller's scope, newest first; `start` (inclusive) and `end` (exclusive) bound when the task was
    opened (`opened_at`)."""
    require_grid_in_scope(user, grid)
    cond, params = _scope(user)
    where, args = [cond], list(params)
    states = choices(state, TASK_STATES, "state")
    severities = choices(severity, SEVERITIES, "severity")
    types = choices(type, TASK_TYPES, "type")
    for clause, value in (("t.state = ANY(%s)", states), ("t.severity = ANY(%s)", severities),
                          ("t.type = ANY(%s)", types),
                          ("t.assignee = %s", user.id if assignee == "me" else assignee), ("t.grid_id = %s", grid)):
        if value is not None:
            where.append(clause)
            args.append(value)
    in_range, range_args = opened.conditions("t.opened_at")  # on tasks_opened_idx, the list's own order
    where += in_range
    args += range_args
    return await fetch_page(conn, TASK_SELECT, where, args, TASK_ORDER, page, task_with_place)


@router.get("/tasks/{task_id}", response_model=None, responses=documented(schemas.TaskDetail))
async def get_task(task_id: str, conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """One task with its `history` and its `alerts`."""
    out = task_with_place(await scoped_task(conn, user, task_id))
    rows = await (await conn.execute(
        f"SELECT {alert_columns('a')} FROM alerts a"
        " JOIN task_alerts ta ON ta.alert_id = a.id WHERE ta.task_id = %s ORDER BY a.first_seen, a.id", (task_id,)
    )).fetchall()
    out["alerts"] = [alert_from_row(r) for r in rows]
    return out


class ChecklistAnswer(BaseModel):
    """One checklist item of a patrol (CONTRACT §7): `ok`, `hazard` (with a note or a photo) or `n/a`."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64)
    result: Literal["ok", "hazard", "n/a"]
    note: str | None = Field(default=None, max_length=2000)
    photos: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=10)


class TaskActionIn(BaseModel):
    """The body of a task action (CONTRACT §4.1); which fields an action needs is checked by the state machine.
    A patrol is resolved with `checklist` (every item answered once) and no `resolution`."""

    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=2000)
    resolution: Literal["fixed", "false_alarm", "duplicate", "referred_119"] | None = None
    checklist: list[ChecklistAnswer] | None = Field(default=None, max_length=50)
    worker_id: str | None = Field(default=None, max_length=64)
    until: AwareDatetime | None = None


@router.post("/tasks/{task_id}/{action}", response_model=None, responses=documented(schemas.Task))
async def task_action(task_id: str, action: Action, request: Request, conn: ConnDep, user: CurrentUser,
                      sync_pool: SyncPoolDep, offline: OfflineDep, address: ClientAddress,
                      body: Annotated[TaskActionIn | None, Body()] = None) -> dict[str, Any] | JSONResponse:
    """Take a §4.1 action: 403 if your role may not, 409 if the task's state does not allow it, 422 for a bad body.

    `Idempotency-Key`: the same key again answers the first answer without acting twice (the worker page's
    offline queue); `X-Gridhub-Client-Time`: when you acted, kept in the history step (see api/README.md)."""
    payload = body.model_dump(mode="json", exclude_none=True) if body else {}

    async def in_scope() -> None:
        await scoped_task(conn, user, task_id)

    def answer(c: Any) -> dict[str, Any]:
        with c.cursor(row_factory=dict_row) as cur:
            row = cur.execute(f"{TASK_SELECT} WHERE t.id = %s", (task_id,)).fetchone()
        assert row is not None  # the action just took it
        return task_with_place(row)

    return await run_action(request, conn, user, sync_pool, offline, address, task_id, action, payload,
                            in_scope=in_scope, answer=answer)


async def run_action(request: Request, conn: Any, user: Principal, sync_pool: Any, offline: Any, address: str,
                     task_id: str, action: str, payload: dict[str, Any], *,
                     in_scope: Callable[[], Awaitable[None]], answer: Callable[[Any], dict[str, Any]],
                     not_found: Callable[[TaskNotFound], HTTPException] | None = None) -> dict[str, Any] | JSONResponse:
    """A task action as every action route takes it: `in_scope()` first (raising 404/403), then in one transaction
    the idempotency claim, `apply_action`, its audit row and the answer (`answer(conn)`); refusals stored under the
    Idempotency-Key too, so a replay answers the same. `not_found` maps TaskNotFound (default 404)."""
    key, path = offline.key, request.url.path
    fp = idempotency.fingerprint("POST", path, payload)

    def run() -> dict[str, Any]:
        with sync_pool.connection() as c, changes.UnitOfWork(c) as uow:
            if key is not None:
                idempotency.claim(c, user.id, key, "POST", path, fp)
            apply_action(uow, task_id, action, user, payload, client_at=offline.client_at)
            # in the action's transaction: the row exists exactly when the action took effect
            audit.record(c, user.id, f"task.{action}", target=task_id, address=address,
                         detail=audit_detail(payload, offline.client_at))
            out = answer(c)
            if key is not None:
                idempotency.answer(c, user.id, key, 200, out)
            return out

    async def work() -> dict[str, Any]:
        await in_scope()
        try:
            return await run_in_threadpool(run)
        except TaskNotFound as exc:
            raise (not_found(exc) if not_found else HTTPException(status.HTTP_404_NOT_FOUND, str(exc))) from exc
        except ActionForbidden as exc:
            raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
        except IllegalTransition as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    return await idempotency.once(conn, sync_pool, user.id, key, path, fp, work)  # type: ignore[no-any-return]


def audit_detail(payload: Mapping[str, Any], client_at: datetime | None) -> dict[str, Any]:
    """What a task action's audit row keeps of its body: the choices made, the note's length only (notes are free
    text about people and places; the task's history has them for those in scope)."""
    out: dict[str, Any] = {k: payload[k] for k in ("resolution", "worker_id", "until", "department")
                           if payload.get(k) is not None}
    if payload.get("note") is not None:
        out["note_chars"] = len(str(payload["note"]))
    if isinstance(payload.get("checklist"), list):  # a patrol: how many items of each result
        results = [str(i.get("result")) for i in payload["checklist"] if isinstance(i, Mapping)]
        out["checklist"] = {r: results.count(r) for r in sorted(set(results))}
    if client_at is not None:
        out["client_at"] = client_at.isoformat()
    return out


