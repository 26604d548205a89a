"""Evidence images: a task assignee's photo upload, the scoped list of evidence, and one image as JPEG."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool

from gridhub.alerts import changes
from gridhub.alerts.tasks import record_history
from gridhub.api import schemas
from gridhub.api.deps import ConnDep, CurrentUser, SyncPoolDep
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.routes_tasks import scoped_task
from gridhub.api.schemas import documented
from gridhub.auth import Principal
from gridhub.protocol import rfc3339

router = APIRouter(tags=["evidence"])

MAX_PHOTO = 8 * 1024 * 1024

# The grid an evidence image belongs to: its task's grid, else its device's.
EVIDENCE_FROM = """
FROM evidence e
LEFT JOIN tasks t ON t.id = e.task_id
LEFT JOIN devices d ON d.id = e.device_id
LEFT JOIN buildings b ON b.id = d.building_id
"""
EVIDENCE_GRID = "COALESCE(t.grid_id, b.grid_id)"
EVIDENCE_ORDER = ListOrder(("e.created_at", "e.id"), (datetime, str))


def is_jpeg(data: bytes) -> bool:
    """A real JPEG: the SOI and EOI markers, and an image that decodes."""
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff" or b"\xff\xd9" not in data[-64:]:
        return False
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return image is not None and image.size > 0


@router.post("/tasks/{task_id}/photos", status_code=status.HTTP_201_CREATED, response_model=None,
             responses=documented(schemas.PhotoStored, 201))
async def upload_photo(
    task_id: str, request: Request, conn: ConnDep, user: CurrentUser, sync_pool: SyncPoolDep,
    photo: Annotated[UploadFile, File(description="a JPEG photo of the scene")],
    note: Annotated[str | None, Form(max_length=2000)] = None,
) -> dict[str, Any]:
    """The assignee adds a JPEG photo to the task; it is stored as evidence and listed in the task's history."""
    task = await scoped_task(conn, user, task_id)
    if task["assignee"] != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"only the assignee ({task['assignee']}) adds photos to task {task_id}")
    if task["state"] == "closed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id} is closed: it takes no more photos")
    data = await photo.read(MAX_PHOTO + 1)
    if len(data) > MAX_PHOTO:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"photo is over {MAX_PHOTO // (1024 * 1024)} MiB")
    if not await run_in_threadpool(is_jpeg, data):
        raise HTTPException(422, "photo: not a JPEG image (send image/jpeg)")
    evidence_id = f"ev-{uuid.uuid4().hex}"

    def store() -> None:
        with sync_pool.connection() as c, changes.UnitOfWork(c) as uow:
            c.execute("INSERT INTO evidence (id, device_id, task_id, kind, content_type, data, created_by)"
                      " VALUES (%s, %s, %s, 'photo', 'image/jpeg', %s, %s)",
                      (evidence_id, task["device_id"], task_id, data, user.id))
            record_history(uow, task_id, user.id, "photo",
                           f"evidence {evidence_id}" + (f": {note.strip()}" if note and note.strip() else ""))

    await run_in_threadpool(store)
    return {"id": evidence_id, "task_id": task_id, "device_id": task["device_id"], "kind": "photo",
            "url": f"/api/v1/evidence/{evidence_id}", "bytes": len(data)}


def _in_scope(user: Principal) -> tuple[str, list[Any]]:
    return user.grid_filter(EVIDENCE_GRID)


@router.get("/evidence", response_model=None, responses=documented(schemas.EvidencePage))
async def list_evidence(
    request: Request, conn: ConnDep, user: CurrentUser, page: PageDep,
    device: Annotated[str | None, Query(max_length=64)] = None,
    task: Annotated[str | None, Query(max_length=64)] = None,
    kind: Literal["detection", "photo"] | None = None,
) -> dict[str, Any]:
    """Evidence images in the caller's scope, newest first (metadata; the image is at `url`)."""
    cond, params = _in_scope(user)
    where, args = [cond], list(params)
    for clause, value in (("e.device_id = %s", device), ("e.task_id = %s", task), ("e.kind = %s", kind)):
        if value is not None:
            where.append(clause)
            args.append(value)
    tz = request.app.state.settings.tz

    def item(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": r["id"], "device_id": r["device_id"], "task_id": r["task_id"], "kind": r["kind"],
                "grid_id": r["grid_id"], "created_by": r["created_by"], "created_at": rfc3339(r["created_at"], tz),
                "bytes": r["bytes"], "url": f"/api/v1/evidence/{r['id']}"}

    return await fetch_page(
        conn, "SELECT e.id, e.device_id, e.task_id, e.kind, e.created_by, e.created_at, octet_length(e.data) AS bytes,"
        f" {EVIDENCE_GRID} AS grid_id {EVIDENCE_FROM}", where, args, EVIDENCE_ORDER, page, item)


@router.get("/evidence/{evidence_id}", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "the image"}})
async def get_evidence(evidence_id: str, conn: ConnDep, user: CurrentUser) -> Response:
    """One evidence image (`image/jpeg`), if its task's or device's grid is in your scope."""
    cond, params = _in_scope(user)
    row = await (await conn.execute(
        f"SELECT e.content_type, {EVIDENCE_GRID} AS grid_id, ({cond}) AS in_scope,"
        f" CASE WHEN ({cond}) THEN e.data END AS data {EVIDENCE_FROM} WHERE e.id = %s",
        [*params, *params, evidence_id])).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"evidence {evidence_id} does not exist")
    if not row["in_scope"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"evidence {evidence_id} is outside your scope")
    return Response(bytes(row["data"]), media_type=row["content_type"] or "image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})
