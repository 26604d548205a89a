"""GET /api/v1/quarantine: rejected device messages, newest first (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request

from gridhub.api import schemas
from gridhub.api.deps import AdminUser, ConnDep
from gridhub.api.listing import CursorQuery, LimitQuery, clamp_limit, decode_cursor, page, rfc3339
from gridhub.api.schemas import documented

router = APIRouter(tags=["quarantine"])

Reason = Literal["invalid_json", "schema", "out_of_range", "unknown_event", "clock_skew", "unregistered_device",
                 "oversize", "bad_topic", "bad_frame"]


@router.get("/quarantine", response_model=None, responses=documented(schemas.QuarantinePage))
async def list_quarantine(request: Request, conn: ConnDep, user: AdminUser, reason: Reason | None = None,
                          limit: LimitQuery = None, cursor: CursorQuery = None) -> dict[str, Any]:
    n = clamp_limit(limit)
    where: list[str] = []
    args: list[Any] = []
    if reason is not None:
        where.append("reason = %s")
        args.append(reason)
    if cursor:
        at, last_id = decode_cursor(cursor, (datetime, int))
        where.append("(received_at, id) < (%s, %s)")
        args += [at, last_id]
    sql = ("SELECT id, received_at, topic, device_id, reason, detail, payload, payload_encoding, payload_truncated"
           f" FROM quarantine {'WHERE ' + ' AND '.join(where) if where else ''}"
           " ORDER BY received_at DESC, id DESC LIMIT %s")
    rows = await (await conn.execute(sql, [*args, n + 1])).fetchall()
    tz = request.app.state.settings.tz
    items = [{"id": str(r["id"]), "received_at": rfc3339(r["received_at"], tz), "topic": r["topic"],
              "device_id": r["device_id"], "reason": r["reason"], "detail": r["detail"], "payload": r["payload"],
              "payload_encoding": r["payload_encoding"], "payload_truncated": r["payload_truncated"],
              "_key": (r["received_at"], r["id"])} for r in rows]
    out = page(items, n, lambda q: q["_key"])
    for q in out["items"]:
        del q["_key"]
    return out
