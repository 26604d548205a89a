"""GET /api/v1/audit: the audit trail (gridhub/audit.py), newest first, for admin and bureau."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import AwareDatetime, BaseModel

from gridhub.api.deps import ConnDep, require_roles
from gridhub.api.listing import ListOrder, PageDep, fetch_page
from gridhub.api.schemas import Page, documented
from gridhub.auth import Principal
from gridhub.protocol import rfc3339

router = APIRouter(tags=["audit"])

AUDIT_ORDER = ListOrder(("at", "id"), (datetime, int))
AuditReader = Annotated[Principal, Depends(require_roles("admin", "bureau"))]


class AuditEntry(BaseModel):
    id: str
    at: datetime
    actor: str | None
    action: str
    target: str | None
    address: str | None
    detail: dict[str, Any]


class AuditPage(Page):
    items: list[AuditEntry]


@router.get("/audit", response_model=None, responses=documented(AuditPage))
async def list_audit(
    request: Request, conn: ConnDep, user: AuditReader, page: PageDep,
    actor: Annotated[str | None, Query(max_length=128, description="a worker id, `cli:<os user>`, `system`")] = None,
    action: Annotated[str | None, Query(max_length=64, description="e.g. `device.command`; `task.*` for a prefix")]
    = None,
    target: Annotated[str | None, Query(max_length=256, description="a device, task or worker id, a file")] = None,
    start: Annotated[AwareDatetime | None, Query(description="inclusive")] = None,
    end: Annotated[AwareDatetime | None, Query(description="exclusive")] = None,
) -> dict[str, Any]:
    """Who did what, when and from where (log-ins, device commands, task actions, registry imports, credentials
    writes), newest first; admin and bureau only."""
    where: list[str] = []
    args: list[Any] = []
    if action is not None and action.endswith("*"):
        prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("action LIKE %s")
        args.append(prefix + "%")
    elif action is not None:
        where.append("action = %s")
        args.append(action)
    for clause, value in (("actor = %s", actor), ("target = %s", target), ("at >= %s", start), ("at < %s", end)):
        if value is not None:
            where.append(clause)
            args.append(value)
    if start is not None and end is not None and start >= end:
        raise HTTPException(422, f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    tz = request.app.state.settings.tz

    def entry(r: Mapping[str, Any]) -> dict[str, Any]:
        return {"id": str(r["id"]), "at": rfc3339(r["at"], tz), "actor": r["actor"], "action": r["action"],
                "target": r["target"], "address": r["address"], "detail": r["detail"]}

    return await fetch_page(conn, "SELECT id, at, actor, action, target, address, detail FROM audit_log", where, args,
                            AUDIT_ORDER, page, entry)
