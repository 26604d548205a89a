"""Typed FastAPI dependencies: the settings, a database connection, and the current user with their scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer
from psycopg.rows import dict_row, namedtuple_row, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from gridhub.auth import PRINCIPAL_SQL, AuthError, Principal, decode_token, principal_from_row
from gridhub.settings import Settings

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_pool(request: Request) -> AsyncConnectionPool:
    pool: AsyncConnectionPool = request.app.state.pool
    return pool


PoolDep = Annotated[AsyncConnectionPool, Depends(get_pool)]


async def get_conn(pool: PoolDep) -> AsyncIterator[psycopg.AsyncConnection[dict[str, Any]]]:
    async with pool.connection() as conn:
        conn.row_factory = dict_row  # type: ignore[assignment]
        try:
            yield conn  # type: ignore[misc]
        finally:
            conn.row_factory = tuple_row  # type: ignore[assignment]  # pooled: others expect plain rows


def get_sync_pool(request: Request) -> ConnectionPool:
    pool: ConnectionPool = request.app.state.sync_pool
    return pool


SyncPoolDep = Annotated[ConnectionPool, Depends(get_sync_pool)]

ConnDep = Annotated[psycopg.AsyncConnection[dict[str, Any]], Depends(get_conn)]

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers=_UNAUTHORIZED)


async def load_principal(pool: AsyncConnectionPool, sub: str, pwd: int) -> Principal:
    """The person a token names, as the registry says now; AuthError when they are gone, deactivated, or their
    password changed after the token was issued (`pwd`). The stream calls it again while it is open."""
    async with pool.connection() as conn, conn.cursor(row_factory=namedtuple_row) as cur:
        # a named tuple: columns by name, here and in gridhub.auth.principal_from_row
        row: Any = await (await cur.execute(PRINCIPAL_SQL, (sub,))).fetchone()
    if row is None or not row.active:
        raise AuthError("invalid token: the user no longer exists or was deactivated")
    if int(pwd) != int(row.pwd or 0):
        raise AuthError("token revoked by a password change: log in again")
    return principal_from_row(row)


@dataclass(frozen=True)
class Caller:
    """A verified caller: who, and until when their log-in holds (the access token's `exp`, epoch seconds)."""

    user: Principal
    claims: dict[str, Any]
    expires_at: float


async def current_caller(
    settings: SettingsDep,
    pool: PoolDep,
    bearer: Annotated[str | None, Depends(oauth2)],
) -> Caller:
    """The caller of an ordinary route: `Authorization: Bearer` only. A token in the query string
    (`?access_token=`) is taken by `/api/v1/stream` alone (CONTRACT §4): elsewhere it is a 401, so that tokens do
    not travel in URLs that proxies, browsers and access logs keep."""
    if not bearer:
        raise unauthorized("not authenticated: send Authorization: Bearer <token>")
    try:
        claims = decode_token(bearer, settings.signing_key())
        user = await load_principal(pool, str(claims["sub"]), int(claims.get("pwd", 0)))
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc
    return Caller(user, claims, float(claims["exp"]))


CurrentCaller = Annotated[Caller, Depends(current_caller)]


async def current_user(caller: CurrentCaller) -> Principal:
    return caller.user


CurrentUser = Annotated[Principal, Depends(current_user)]


def client_address(request: Request) -> str:
    """The client's address: the peer's, or, when the peer is a configured trusted proxy
    (GRIDHUB_TRUSTED_PROXIES), the last address in X-Forwarded-For that is not itself a trusted proxy. A client
    cannot choose its address by sending the header itself: only a trusted proxy's header is read."""
    import ipaddress

    settings: Settings = request.app.state.settings
    peer = request.client.host if request.client else "unknown"
    proxies = settings.proxy_networks
    if not proxies:
        return peer

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in proxies)

    if not trusted(peer):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return peer


ClientAddress = Annotated[str, Depends(client_address)]


def require_roles(*roles: str) -> Callable[..., Any]:
    """A dependency admitting only the given roles (403 for the others)."""

    async def check(user: CurrentUser) -> Principal:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"role {user.role} may not do this; allowed: {', '.join(roles)}")
        return user

    return check


AdminUser = Annotated[Principal, Depends(require_roles("admin"))]


def require_grid_in_scope(user: Principal, grid: str | None) -> None:
    """403 when a `?grid=` filter names a grid outside the caller's scope."""
    if grid is not None and not user.sees_grid(grid):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"grid {grid} is outside your scope")
