"""Evidence images: a task assignee's photo upload, the scoped list of evidence, and one image as JPEG."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from gridhub import audit
from gridhub.alerts import changes
from gridhub.alerts.tasks import add_history, record_history
from gridhub.api import idempotency, schemas
from gridhub.api.deps import ClientAddress, ConnDep, CurrentUser, SyncPoolDep
from gridhub.api.idempotency import OfflineDep, OfflineWrite
from gridhub.api.limits import BodyTooLarge
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.routes_tasks import scoped_task
from gridhub.api.schemas import documented
from gridhub.auth import Principal
from gridhub.images import PHOTO_MAX_PIXELS, ImageTooLarge, NotAnImage, check_jpeg
from gridhub.protocol import rfc3339

router = APIRouter(tags=["evidence"])

MAX_PHOTO = 8 * 1024 * 1024
MAX_NOTE = 2000
# The multipart body, documented here because the route reads it itself, after authentication (a declared File()
# parameter is read and spooled by FastAPI before any dependency runs, the token check included).
PHOTO_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["photo"], "properties": {
        "photo": {"type": "string", "format": "binary", "description": "a JPEG photo of the scene"},
        "note": {"type": "string", "maxLength": MAX_NOTE}}}}}}}

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
    """A real JPEG: the SOI and EOI markers, and an image that decodes (call `check_jpeg` first: its size is
    judged from the header before this decodes anything)."""
    if len(data) < 4 or data[:3] != b"\xff\xd8\xff" or b"\xff\xd9" not in data[-64:]:
        return False
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    except cv2.error:  # OpenCV's own pixel cap (gridhub/images.py), or a header it cannot take
        return False
    return image is not None and image.size > 0


async def read_photo_form(request: Request) -> tuple[bytes, str | None]:
    """The `photo` file (at most MAX_PHOTO + 1 bytes of it) and the `note` of the multipart body; 422 naming the
    field for a body that is not one. The body itself is capped by api/limits.py before this reads it."""
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
    except BodyTooLarge:
        raise
    except StarletteHTTPException as exc:  # Starlette's 400 for a broken multipart body: a bad body is a 422 here
        raise HTTPException(422, f"photo: not a multipart body with a `photo` file ({exc.detail})") from exc
    try:
        photo, note = form.get("photo"), form.get("note")
        if not isinstance(photo, UploadFile):
            raise HTTPException(422, "photo: field required (a multipart file field `photo` with the JPEG)")
        if note is not None and not isinstance(note, str):
            raise HTTPException(422, "note: must be text, not a file")
        if note is not None and len(note) > MAX_NOTE:
            raise HTTPException(422, f"note: at most {MAX_NOTE} characters, not {len(note)}")
        return await photo.read(MAX_PHOTO + 1), note
    finally:
        await form.close()


@router.post("/tasks/{task_id}/photos", status_code=status.HTTP_201_CREATED, response_model=None,
             responses=documented(schemas.PhotoStored, 201), openapi_extra=PHOTO_BODY)
async def upload_photo(
    task_id: str, request: Request, conn: ConnDep, user: CurrentUser, sync_pool: SyncPoolDep, offline: OfflineDep,
    address: ClientAddress,
) -> dict[str, Any] | JSONResponse:
    """The assignee adds a JPEG photo (multipart field `photo`, optional `note`) to the task; it is stored as
    evidence and listed in the task's history. At most 8 MiB and 50 megapixels (judged from the JPEG header).

    `Idempotency-Key` and `X-Gridhub-Client-Time` as for task actions (api/README.md)."""
    data, note = await read_photo_form(request)
    key, path = offline.key, request.url.path
    fp = idempotency.fingerprint("POST", path, [hashlib.sha256(data).hexdigest(), note])
    return await idempotency.once(  # type: ignore[no-any-return]
        conn, sync_pool, user.id, key, path, fp,
        lambda: _store_photo(task_id, conn, user, sync_pool, offline, data, note, path, fp, address))


async def _store_photo(task_id: str, conn: ConnDep, user: Principal, sync_pool: ConnectionPool,
                       offline: OfflineWrite, data: bytes, note: str | None, path: str,
                       fp: str, address: str) -> dict[str, Any] | JSONResponse:
    task = await scoped_task(conn, user, task_id)
    if task["assignee"] != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"only the assignee ({task['assignee']}) adds photos to task {task_id}")
    if task["state"] == "closed":
        raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id} is closed: it takes no more photos")
    if len(data) > MAX_PHOTO:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"photo is over {MAX_PHOTO // (1024 * 1024)} MiB")
    try:  # the size from the header, before anything is decoded
        width, height = check_jpeg(data, PHOTO_MAX_PIXELS)
    except ImageTooLarge as exc:
        raise HTTPException(422, f"photo: {exc}") from exc
    except NotAnImage as exc:
        raise HTTPException(422, f"photo: not a JPEG image (send image/jpeg): {exc}") from exc
    if not await run_in_threadpool(is_jpeg, data):
        raise HTTPException(422, "photo: not a JPEG image (send image/jpeg)")
    evidence_id = f"ev-{uuid.uuid4().hex}"
    out = {"id": evidence_id, "task_id": task_id, "device_id": task["device_id"], "kind": "photo",
           "url": f"/api/v1/evidence/{evidence_id}", "bytes": len(data)}
    key = offline.key
    text = f"evidence {evidence_id}" + (f": {note.strip()}" if note and note.strip() else "")

    def store() -> None:
        with sync_pool.connection() as c, changes.UnitOfWork(c) as uow:
            if key is not None:
                idempotency.claim(c, user.id, key, "POST", path, fp)
            c.execute("INSERT INTO evidence (id, device_id, task_id, kind, content_type, data, created_by)"
                      " VALUES (%s, %s, %s, 'photo', 'image/jpeg', %s, %s)",
                      (evidence_id, task["device_id"], task_id, data, user.id))
            if offline.client_at is None:
                record_history(uow, task_id, user.id, "photo", text)
            else:  # taken offline: the person's time in history, the hub's beside it
                add_history(c, task_id, offline.client_at, user.id, "photo", text, received_at=datetime.now(UTC))
                uow.stage_task(task_id)
            # in the photo's transaction; never the bytes, only what identifies them
            audit.record(c, user.id, "task.photo", target=task_id, address=address,
                         detail={"evidence_id": evidence_id, "bytes": len(data), "width": width, "height": height,
                                 "sha256": hashlib.sha256(data).hexdigest(),
                                 **({"note_chars": len(note)} if note else {})})
            if key is not None:
                idempotency.answer(c, user.id, key, 201, out)

    await run_in_threadpool(store)
    return out


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
