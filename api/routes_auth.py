"""POST /api/v1/auth/token: OAuth2 password log-in."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordRequestForm
from psycopg.rows import dict_row
from pydantic import BaseModel

from gridhub.api.deps import CurrentUser, PoolDep, SettingsDep
from gridhub.auth import check_password, issue_token

router = APIRouter(tags=["auth"])


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


@router.post("/auth/token", response_model=Token)
async def log_in(form: Annotated[OAuth2PasswordRequestForm, Depends()], settings: SettingsDep,
                 pool: PoolDep) -> Token:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = await (await cur.execute(
            "SELECT password_hash, (extract(epoch FROM password_set_at) * 1000000)::bigint AS pwd, active"
            " FROM workers WHERE id = %s", (form.username,),
        )).fetchone()
    ok = await run_in_threadpool(check_password, row["password_hash"] if row else None, form.password)
    if not ok or row is None or not row["active"]:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user or password",
                            headers={"WWW-Authenticate": "Bearer"})
    token = issue_token(form.username, settings.signing_key(), settings.token_ttl_s, row["pwd"])
    return Token(access_token=token, expires_in=settings.token_ttl_s)


class Me(BaseModel):
    id: str
    name: str
    role: str
    street_id: str | None
    grids: list[str]
    all_grids: bool


@router.get("/me", response_model=Me)
async def me(user: CurrentUser) -> Me:
    """Who the token belongs to and what they may see (the pages use it after log-in)."""
    return Me(id=user.id, name=user.name, role=user.role, street_id=user.street_id, grids=sorted(user.grids),
              all_grids=user.all_grids)
