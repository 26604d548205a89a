"""GET /api/v1/quarantine: rejected device messages, newest first (admin only)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Request

from gridhub.api import schemas
from gridhub.api.deps import AdminUser, ConnDep
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.schemas import documented
from gridhub.protocol import rfc3339

router = APIRouter(tags=["quarantine"])

Reason = Literal["invalid_json", "schema", "out_of_range", "unknown_event", "clock_skew", "unregistered_device",
                 "oversize", "bad_topic", "bad_frame"]


QUARANTINE_ORDER = ListOrder(("received_at", "id"), (datetime, int))


@router.get("/quarantine", response_model=None, responses=documented(schemas.QuarantinePage))
async def list_quarantine(request: Request, conn: ConnDep, user: AdminUser, page: PageDep,
                          reason: Reason | None = None) -> dict[str, Any]:
    where: list[str] = []
    args: list[Any] = []
    if reason is not None:
        where.append("reason = %s")
        args.append(reason)
    tz = request.app.state.settings.tz

    def entry(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": str(r["id"]), "received_at": rfc3339(r["received_at"], tz), "topic": r["topic"],
                "device_id": r["device_id"], "reason": r["reason"], "detail": r["detail"], "payload": r["payload"],
                "payload_encoding": r["payload_encoding"], "payload_truncated": r["payload_truncated"]}

    return await fetch_page(
        conn, "SELECT id, received_at, topic, device_id, reason, detail, payload, payload_encoding, payload_truncated"
        " FROM quarantine", where, args, QUARANTINE_ORDER, page, entry)
