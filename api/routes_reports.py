"""Hazard reports (社区提报, CONTRACT §7): `POST /reports` opens a `hazard` task for the place's grid, the reporter's
own reports (`GET /reports`, `GET /reports/{id}`, readable by the reporter outside their scope), and the report
actions `confirm`, `dismiss`, `refer` on `/tasks/{id}/…` (the state machine is `gridhub.alerts.tasks.apply_action`;
the report's logic `gridhub.alerts.reports`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from gridhub import audit
from gridhub.alerts import changes
from gridhub.alerts.reports import CATEGORIES, MAX_DEPARTMENT, UnknownPlace, open_report, place_of
from gridhub.alerts.tasks import TaskNotFound, default_rules
from gridhub.api import idempotency
from gridhub.api.deps import ClientAddress, ConnDep, CurrentUser, SyncPoolDep
from gridhub.api.idempotency import OfflineDep
from gridhub.api.limits import REPORT_MAX_PHOTOS, BodyTooLarge
from gridhub.api.listing import PageDep, fetch_page
from gridhub.api.routes_evidence import MAX_PHOTO, is_jpeg
from gridhub.api.routes_tasks import TASK_ORDER, TASK_SELECT, run_action, task_with_place
from gridhub.auth import Principal
from gridhub.images import PHOTO_MAX_PIXELS, ImageTooLarge, NotAnImage, check_jpeg

router = APIRouter(tags=["reports"])

MAX_DESCRIPTION = 2000
MAX_PLACE = 200
REPORT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["category", "description"], "properties": {
        "category": {"type": "string", "enum": list(CATEGORIES)},
        "building": {"type": "string", "description": "a building id (or give `unit`)"},
        "unit": {"type": "string", "description": "a unit id; the unit gives the building and grid"},
        "floor": {"type": "integer"}, "place": {"type": "string", "maxLength": MAX_PLACE},
        "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
        "photos": {"type": "array", "maxItems": REPORT_MAX_PHOTOS,
                   "items": {"type": "string", "format": "binary"}, "description": "JPEGs of at most 8 MiB each"}}}}}}}


def _text(form: Mapping[str, Any], name: str, limit: int, required: bool = False) -> str | None:
    value = form.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise HTTPException(422, f"{name}: field required")
        return None
    if not isinstance(value, str):
        raise HTTPException(422, f"{name}: must be text, not a file")
    value = value.strip()
    if len(value) > limit:
        raise HTTPException(422, f"{name}: at most {limit} characters, not {len(value)}")
    return value


async def read_report(request: Request) -> tuple[dict[str, Any], list[bytes]]:
    """The report's fields and photos; 413 for a 6th photo (refused as its part starts) or one over 8 MiB, 422 for
    anything else wrong. The body is capped by api/limits.py (REPORT_BODY_BYTES) before this reads it."""
    try:
        form = await request.form(max_files=REPORT_MAX_PHOTOS, max_fields=16, max_part_size=64 * 1024)
    except BodyTooLarge:
        raise
    except StarletteHTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                f"photos: at most {REPORT_MAX_PHOTOS} photos per report") from exc
        raise HTTPException(422, f"not a multipart report body ({exc.detail})") from exc
    try:
        category = _text(form, "category", 64, required=True)
        if category not in CATEGORIES:
            raise HTTPException(422, f"category: must be one of {', '.join(CATEGORIES)}, not {category!r}")
        fields: dict[str, Any] = {
            "category": category, "building": _text(form, "building", 64), "unit": _text(form, "unit", 64),
            "place": _text(form, "place", MAX_PLACE),
            "description": _text(form, "description", MAX_DESCRIPTION, required=True)}
        floor = _text(form, "floor", 8)
        try:
            fields["floor"] = int(floor) if floor is not None else None
        except ValueError as exc:
            raise HTTPException(422, f"floor: must be a whole number, not {floor!r}") from exc
        if fields["floor"] is not None and not -10 <= fields["floor"] <= 300:
            raise HTTPException(422, f"floor: {fields['floor']} is not a floor of a building")
        photos: list[bytes] = []
        for i, part in enumerate(form.getlist("photos"), 1):
            if not isinstance(part, UploadFile):
                raise HTTPException(422, f"photos: item {i} is text, not a JPEG file")
            data = await part.read(MAX_PHOTO + 1)
            if len(data) > MAX_PHOTO:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                                    f"photos: photo {i} ({part.filename or 'unnamed'}) is over"
                                    f" {MAX_PHOTO // (1024 * 1024)} MiB")
            photos.append(data)
        unknown = set(form.keys()) - {"category", "building", "unit", "place", "description", "floor", "photos"}
        if unknown:
            raise HTTPException(422, f"unknown field(s): {', '.join(sorted(unknown))}")
        return fields, photos
    finally:
        await form.close()


def check_photos(photos: list[bytes]) -> list[dict[str, Any]]:
    """Each photo a JPEG within the pixel budget (from the header, then a decode): 422 naming the photo."""
    out = []
    for i, data in enumerate(photos, 1):
        try:
            width, height = check_jpeg(data, PHOTO_MAX_PIXELS)
        except ImageTooLarge as exc:
            raise HTTPException(422, f"photos: photo {i}: {exc}") from exc
        except NotAnImage as exc:
            raise HTTPException(422, f"photos: photo {i} is not a JPEG image (send image/jpeg): {exc}") from exc
        if not is_jpeg(data):
            raise HTTPException(422, f"photos: photo {i} is not a JPEG image (send image/jpeg)")
        out.append({"bytes": len(data), "width": width, "height": height, "sha256": hashlib.sha256(data).hexdigest()})
    return out


@router.post("/reports", status_code=status.HTTP_201_CREATED, response_model=None, openapi_extra=REPORT_BODY)
async def create_report(request: Request, conn: ConnDep, user: CurrentUser, sync_pool: SyncPoolDep,
                        offline: OfflineDep, address: ClientAddress) -> dict[str, Any] | JSONResponse:
    """Report a hazard (社区提报), any logged-in person: opens a `hazard` task (severity high) for the place's grid,
    assigned as §4.1 assigns, with the photos as its evidence. 413: more than 5 photos or one over 8 MiB; 422: a bad
    category, an unknown building or unit, a photo that is not a JPEG. Answers the task (201); the reporter reads it
    later at `GET /api/v1/reports/{task id}` whatever their scope. `Idempotency-Key` as for task actions."""
    fields, photos = await read_report(request)
    key, path = offline.key, request.url.path
    fp = idempotency.fingerprint("POST", path, [fields, [hashlib.sha256(p).hexdigest() for p in photos]])

    async def work() -> dict[str, Any]:
        metas = await run_in_threadpool(check_photos, photos)

        def store() -> dict[str, Any]:
            with sync_pool.connection() as c, changes.UnitOfWork(c) as uow:
                if key is not None:
                    idempotency.claim(c, user.id, key, "POST", path, fp)
                try:
                    place = place_of(c, fields["building"], fields["unit"])
                except UnknownPlace as exc:
                    raise HTTPException(422, str(exc)) from exc
                task_id, evidence = open_report(
                    uow, reporter=user.id, category=fields["category"], place=place, floor=fields["floor"],
                    place_text=fields["place"], description=fields["description"],
                    photos=list(zip(photos, metas, strict=True)), now=datetime.now(UTC), rules=default_rules())
                audit.record(c, user.id, "report.create", target=task_id, address=address,
                             detail={"category": fields["category"], "grid": place.grid_id,
                                     "building": place.building_id, "unit": place.unit_id,
                                     "description_chars": len(fields["description"]),
                                     "photos": [{"evidence_id": e, **m} for e, m in zip(evidence, metas, strict=True)]})
                out = _report_out(c, task_id)
                if key is not None:
                    idempotency.answer(c, user.id, key, 201, out)
                return out

        return await run_in_threadpool(store)

    return await idempotency.once(conn, sync_pool, user.id, key, path, fp, work)  # type: ignore[no-any-return]


REPORT_COLUMNS = "t.reported_by, t.detail AS report_detail, t.confirmed_at"


def _with_report(row: Mapping[str, Any]) -> dict[str, Any]:
    out = task_with_place(row)
    detail = dict(row["report_detail"] or {})
    out["report"] = {**detail, "reported_by": row["reported_by"],
                     "confirmed": row["confirmed_at"] is not None,
                     "photo_urls": [f"/api/v1/reports/{row['id']}/photos/{e}" for e in detail.get("photos", [])]}
    return out


def _report_out(c: Any, task_id: str) -> dict[str, Any]:
    with c.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"{_SELECT} WHERE t.id = %s", (task_id,)).fetchone()
    assert row is not None
    return _with_report(row)


_SELECT = TASK_SELECT.replace("SELECT ", f"SELECT {REPORT_COLUMNS}, ", 1)


def _report_scope(user: Principal) -> tuple[str, list[Any]]:
    """Reports in the caller's grids, those assigned to them, and those they reported."""
    cond, params = user.grid_filter("t.grid_id")
    if user.all_grids:
        return cond, params
    return f"({cond} OR t.assignee = %s OR t.reported_by = %s)", [*params, user.id, user.id]


@router.get("/reports", response_model=None)
async def list_reports(conn: ConnDep, user: CurrentUser, page: PageDep,
                       mine: bool = False) -> dict[str, Any]:
    """Hazard tasks opened from reports, newest first: those in your scope and those you reported (`?mine=true`:
    only yours), each a task with its `report` (category, place, description, photos, referrals, confirmed)."""
    cond, params = _report_scope(user)
    where, args = [cond, "t.reported_by IS NOT NULL"], list(params)
    if mine:
        where.append("t.reported_by = %s")
        args.append(user.id)
    return await fetch_page(conn, _SELECT, where, args, TASK_ORDER, page, _with_report)


@router.get("/reports/{task_id}", response_model=None)
async def get_report(task_id: str, conn: ConnDep, user: CurrentUser) -> dict[str, Any]:
    """A report's task with its history and `report`: for the reporter whatever their scope, and for anyone in the
    task's scope."""
    cond, params = _report_scope(user)
    row = await (await conn.execute(f"SELECT ({cond}) AS in_scope, {_SELECT[len('SELECT '):]} WHERE t.id = %s"
                                    " AND t.reported_by IS NOT NULL", [*params, task_id])).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"report {task_id} does not exist")
    if not row["in_scope"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"report {task_id} is in grid {row['grid_id']}, outside your"
                                                       " scope, and not yours")
    return _with_report(row)


@router.get("/reports/{task_id}/photos/{evidence_id}", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "the image"}})
async def get_report_photo(task_id: str, evidence_id: str, conn: ConnDep, user: CurrentUser) -> Response:
    """A photo of a report (`image/jpeg`), for whoever may read the report (the reporter too, outside their scope;
    `GET /api/v1/evidence/{id}` serves it to the task's grid)."""
    cond, params = _report_scope(user)
    row = await (await conn.execute(
        f"SELECT ({cond}) AS in_scope, CASE WHEN ({cond}) THEN e.data END AS data FROM evidence e"
        " JOIN tasks t ON t.id = e.task_id WHERE e.id = %s AND t.id = %s AND t.reported_by IS NOT NULL",
        [*params, *params, evidence_id, task_id])).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"report {task_id} has no photo {evidence_id}")
    if not row["in_scope"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"report {task_id} is outside your scope and not yours")
    return Response(bytes(row["data"]), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


class ReportActionIn(BaseModel):
    """The body of confirm, dismiss (note required) and refer (department and note required)."""

    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=2000)
    department: str | None = Field(default=None, max_length=MAX_DEPARTMENT)


async def _report_action(action: str, task_id: str, request: Request, conn: ConnDep, user: Principal,
                         sync_pool: SyncPoolDep, offline: idempotency.OfflineWrite, address: str,
                         body: ReportActionIn | None) -> dict[str, Any] | JSONResponse:
    payload = body.model_dump(mode="json", exclude_none=True) if body else {}

    async def in_scope() -> None:
        cond, params = _report_scope(user)
        row = await (await conn.execute(f"SELECT ({cond}) AS in_scope FROM tasks t WHERE t.id = %s",
                                        [*params, task_id])).fetchone()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"task {task_id} does not exist")

    def outside(exc: TaskNotFound) -> HTTPException:  # it exists; a reporter's to read, not to act on
        return HTTPException(status.HTTP_403_FORBIDDEN, f"task {task_id} is outside your scope")

    return await run_action(request, conn, user, sync_pool, offline, address, task_id, action, payload,
                            in_scope=in_scope, answer=lambda c: _report_out(c, task_id), not_found=outside)


@router.post("/tasks/{task_id}/confirm", response_model=None)
async def confirm(task_id: str, request: Request, conn: ConnDep, user: CurrentUser, sync_pool: SyncPoolDep,
                  offline: OfflineDep, address: ClientAddress,
                  body: Annotated[ReportActionIn | None, Body()] = None) -> dict[str, Any] | JSONResponse:
    """Confirm a reported hazard (立案): open → open, confirmed; grid head or street officer in scope. 409 if the
    task is not a reported hazard, not open, or already confirmed."""
    return await _report_action("confirm", task_id, request, conn, user, sync_pool, offline, address, body)


@router.post("/tasks/{task_id}/dismiss", response_model=None)
async def dismiss(task_id: str, request: Request, conn: ConnDep, user: CurrentUser, sync_pool: SyncPoolDep,
                  offline: OfflineDep, address: ClientAddress,
                  body: Annotated[ReportActionIn | None, Body()] = None) -> dict[str, Any] | JSONResponse:
    """Dismiss a reported hazard (不予立案): open → closed, `note` required; grid head or street officer in scope."""
    return await _report_action("dismiss", task_id, request, conn, user, sync_pool, offline, address, body)


@router.post("/tasks/{task_id}/refer", response_model=None)
async def refer(task_id: str, request: Request, conn: ConnDep, user: CurrentUser, sync_pool: SyncPoolDep,
                offline: OfflineDep, address: ClientAddress,
                body: Annotated[ReportActionIn | None, Body()] = None) -> dict[str, Any] | JSONResponse:
    """Hand a reported hazard to a department (消防救援, 执法中队, 物业…): `department` and `note` required, kept in
    history and `report.referrals`; the task stays as it is until resolved. The assignee, a grid head or a street
    officer in scope; any state before resolved."""
    return await _report_action("refer", task_id, request, conn, user, sync_pool, offline, address, body)
