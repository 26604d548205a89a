"""The FastAPI application: REST and the live stream under /api/v1, health and metrics, the two web pages."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gridhub.api import (
    routes_alerts,
    routes_audit,
    routes_auth,
    routes_devices,
    routes_evidence,
    routes_kpis,
    routes_ledgers,
    routes_map,
    routes_people,
    routes_places,
    routes_push,
    routes_quarantine,
    routes_reports,
    routes_stream,
    routes_summary,
    routes_system,
    routes_tasks,
)
from gridhub.api.commands import CommandPublisher
from gridhub.api.limits import BodyLimit
from gridhub.api.pages import mount_pages
from gridhub.db import connect_kwargs
from gridhub.housekeeping import RetentionLoop
from gridhub.settings import Settings, get_settings

log = logging.getLogger("gridhub.api")

# On every answer (pages set the same two themselves, with their CSP). `no-referrer`: links out of the board or the
# worker page (a map, a push service) learn nothing of the hub's URLs, which carry task and device ids.
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
# Only on answers that went out over TLS (browsers ignore it over plain HTTP anyway). One year, this host only:
# `includeSubDomains` or `preload` would bind the operator's other hosts, which the hub cannot know about.
HSTS = (b"strict-transport-security", b"max-age=31536000")


def _over_tls(scope: Scope, settings: Settings) -> bool:
    """The request came over TLS: uvicorn's own TLS (or its proxy-headers rewrite from trusted proxies), or a
    `X-Forwarded-Proto: https` set by a proxy in GRIDHUB_TRUSTED_PROXIES (the nearest proxy's value, the last)."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    proxies = settings.proxy_networks
    client = scope.get("client")
    if not proxies or not client:
        return False
    import ipaddress

    try:
        peer = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if not any(peer in net for net in proxies):
        return False
    values = [v for k, v in scope.get("headers") or () if k.lower() == b"x-forwarded-proto"]
    if not values:
        return False
    last = values[-1].decode("latin-1").split(",")[-1].strip().lower()
    return last == "https"


class SecurityHeaders:
    """Pure ASGI: adds `SECURITY_HEADERS` (and HSTS over TLS) to every response that does not set them itself.
    Installed outside Starlette's error middleware (see `create_app`), so that a 500 carries them too."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = _over_tls(scope, self.settings)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (*SECURITY_HEADERS, *((HSTS,) if tls else ())):
                    if name.decode() not in headers:
                        headers.append(name.decode(), value.decode())
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("GRIDHUB_DATABASE_URL is not set: start the hub with `gridhub up`")
    database_url: str = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # check=: a pooled connection that a database failover or restart closed is replaced before it is handed
        # out (one `SELECT ''` round trip), instead of answering one request with a 500 (CONTRACT §8)
        pool = AsyncConnectionPool(database_url, min_size=2, max_size=20, open=False,
                                   kwargs=connect_kwargs(database_url, autocommit=True),
                                   check=AsyncConnectionPool.check_connection)
        await pool.open(wait=True, timeout=30)
        app.state.pool = pool
        # Task actions and KPIs are the alert engine's synchronous code: they run in threads on this pool.
        sync_pool = ConnectionPool(database_url, min_size=1, max_size=8, open=False, kwargs=connect_kwargs(database_url),
                                   check=ConnectionPool.check_connection)
        await run_in_threadpool(sync_pool.open, True, 30)
        app.state.sync_pool = sync_pool
        commands = CommandPublisher(settings) if settings.mqtt_url else None
        if commands is not None:
            await run_in_threadpool(commands.start)
        app.state.commands = commands
        changes = routes_stream.ChangeFeed(settings.database_url or "")
        app.state.changes = changes
        retention = RetentionLoop(settings)
        retention.start()
        try:
            yield
        finally:
            retention.stop()
            await changes.close()
            if commands is not None:
                await run_in_threadpool(commands.stop)
            await run_in_threadpool(sync_pool.close)
            await pool.close()

    app = FastAPI(title="gridhub", version="1", lifespan=lifespan,
                  description="Community-safety IoT and camera event hub (CONTRACT §4).")
    app.state.settings = settings

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(psycopg.DataError)
    async def _unusable_value(_: Request, exc: psycopg.DataError) -> JSONResponse:
        # a value the database cannot take (a NUL character, a number out of range): the request's fault
        return JSONResponse({"detail": f"a value in the request cannot be used: {exc.diag.message_primary or exc}"},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail: Any = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            # every error, 422 included, is {"detail": "<what and why>"} (CONTRACT §4)
            document.get("components", {}).get("schemas", {})["HTTPValidationError"] = {
                "title": "Error", "type": "object", "required": ["detail"],
                "properties": {"detail": {"type": "string", "title": "what and why"}}}
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    # evidence before tasks: POST /tasks/{id}/photos must be matched before POST /tasks/{id}/{action}
    app.include_router(routes_reports.router, prefix="/api/v1")  # issue 14: reports; /tasks/{id}/confirm|dismiss|refer
    for module in (routes_auth, routes_devices, routes_alerts, routes_evidence, routes_tasks, routes_summary,
                   routes_stream, routes_quarantine, routes_push, routes_people, routes_audit):
        app.include_router(module.router, prefix="/api/v1")
    app.include_router(routes_places.router, prefix="/api/v1")  # issue 14: units and facilities
    app.include_router(routes_ledgers.router, prefix="/api/v1")  # issue 14: ledgers (CONTRACT §7)
    app.include_router(routes_kpis.router, prefix="/api/v1")  # issue 14: patrol plan statistics (CONTRACT §7)
    app.include_router(routes_map.router, prefix="/api/v1")  # issue 14: the board's map of buildings
    app.include_router(routes_system.router)
    mount_pages(app)

    # Limits before work: the body cap sits outside routing, authentication and form parsing (api/limits.py).
    app.add_middleware(BodyLimit, caps=lambda: (settings.max_body_bytes, settings.max_upload_bytes))
    # The headers wrap the whole stack, Starlette's error middleware included: every answer has them, a 500 too.
    build_stack = app.build_middleware_stack

    def build_with_headers() -> ASGIApp:
        return SecurityHeaders(build_stack(), settings)

    app.build_middleware_stack = build_with_headers  # type: ignore[method-assign]
    return app
