"""POST /api/v1/auth/token: OAuth2 password log-in, throttled per address and per (address, account), audited.

Throttling counts **failures** only, keyed by the client's address (`deps.client_address`: X-Forwarded-For only
from GRIDHUB_TRUSTED_PROXIES) and by (address, account), never by the account alone: someone guessing a grid
head's password from one address is answered 429 there while the grid head logs in from their phone. A success
clears its own (address, account) count (a person who mistyped then remembered starts afresh) but not the
address's count (one known password must not buy a sprayer a fresh budget for every other account). A throttled
attempt is refused before its password is looked at and does not count again. Password checks (argon2id, 64 MiB
each) run at most `VERIFY_CONCURRENCY` at a time per process; a log-in that cannot get a turn within
`VERIFY_WAIT_S` is answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordRequestForm
from limits import RateLimitItem, parse, storage
from limits.aio.strategies import MovingWindowRateLimiter
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from gridhub.api.deps import ClientAddress, CurrentUser, PoolDep, SettingsDep
from gridhub.audit import record_async
from gridhub.auth import check_password, issue_token

router = APIRouter(tags=["auth"])

PER_ADDRESS_ACCOUNT = "10/15 minutes"  # failures from one address for one account
PER_ADDRESS = "50/15 minutes"  # failures from one address, all accounts (password spraying)
VERIFY_CONCURRENCY = 4  # argon2id verifications at once per process (64 MiB each)
VERIFY_WAIT_S = 5.0  # how long a log-in waits for a turn before 503


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class LoginGuard:
    """This API process's log-in throttle (a `limits` moving window) and its bound on concurrent password checks."""

    def __init__(self, storage_uri: str = "memory://") -> None:
        uri = storage_uri  # GRIDHUB_LOGIN_LIMIT_STORAGE: a `limits` storage URI; memory:// is per API process
        if not uri.startswith("async+"):
            uri = "async+" + uri
        self.limiter = MovingWindowRateLimiter(storage.storage_from_string(uri))
        self.per_pair: RateLimitItem = parse(PER_ADDRESS_ACCOUNT)
        self.per_address: RateLimitItem = parse(PER_ADDRESS)
        self.verifying = asyncio.Semaphore(VERIFY_CONCURRENCY)

    def _keys(self, address: str, username: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        return [(self.per_pair, ("login-pair", address, username)), (self.per_address, ("login-addr", address))]

    async def retry_after(self, address: str, username: str) -> int | None:
        """Seconds until this address may try this account again, or None when it may now."""
        waits = []
        for item, key in self._keys(address, username):
            if not await self.limiter.test(item, *key):
                stats = await self.limiter.get_window_stats(item, *key)
                waits.append(max(1, math.ceil(stats.reset_time - time.time())))
        return max(waits) if waits else None

    async def failed(self, address: str, username: str) -> None:
        for item, key in self._keys(address, username):
            await self.limiter.hit(item, *key)

    async def succeeded(self, address: str, username: str) -> None:
        item, key = self._keys(address, username)[0]
        await self.limiter.clear(item, *key)


def login_guard(request: Request) -> LoginGuard:
    guard: LoginGuard | None = getattr(request.app.state, "login_guard", None)
    if guard is None:  # one per app (per process), made on first use
        guard = request.app.state.login_guard = LoginGuard(request.app.state.settings.login_limit_storage)
    return guard


async def _audit(pool: AsyncConnectionPool, action: str, actor: str | None, address: str,
                 detail: dict[str, Any]) -> None:
    async with pool.connection() as conn:
        await record_async(conn, actor, action, target=actor, address=address, detail=detail)


@router.post("/auth/token", response_model=Token,
             responses={429: {"description": "too many failed log-ins from this address; see Retry-After"},
                        503: {"description": "too many log-ins being checked at once; see Retry-After"}})
async def log_in(form: Annotated[OAuth2PasswordRequestForm, Depends()], settings: SettingsDep, pool: PoolDep,
                 address: ClientAddress, guard: Annotated[LoginGuard, Depends(login_guard)]) -> Token:
    username = form.username
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = await (await cur.execute(
            "SELECT password_hash, (extract(epoch FROM password_set_at) * 1000000)::bigint AS pwd, active"
            " FROM workers WHERE id = %s", (username,),
        )).fetchone()
    actor = username if row is not None else None
    wait = await guard.retry_after(address, username)
    if wait is not None:
        await _audit(pool, "login.throttled", actor, address, {"username": username, "retry_after": wait})
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"too many failed log-ins from this address: try again in {wait} s",
                            headers={"Retry-After": str(wait)})
    try:
        await asyncio.wait_for(guard.verifying.acquire(), VERIFY_WAIT_S)
    except TimeoutError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "too many log-ins at once: try again shortly",
                            headers={"Retry-After": "2"}) from exc
    try:
        ok = await run_in_threadpool(check_password, row["password_hash"] if row else None, form.password)
    finally:
        guard.verifying.release()
    if not ok or row is None or not row["active"]:
        await guard.failed(address, username)
        reason = "no such user" if row is None else "wrong password" if not ok else "deactivated"
        await _audit(pool, "login.failed", actor, address, {"username": username, "reason": reason})
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user or password",
                            headers={"WWW-Authenticate": "Bearer"})
    await guard.succeeded(address, username)
    await _audit(pool, "login.ok", username, address, {"username": username})
    token = issue_token(username, settings.signing_key(), settings.token_ttl_s, row["pwd"])
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
