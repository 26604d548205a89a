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
from starlette.exceptions import HTTPException as StarletteHTTPException

from gridhub.api import (
    routes_alerts,
    routes_auth,
    routes_devices,
    routes_evidence,
    routes_people,
    routes_push,
    routes_quarantine,
    routes_stream,
    routes_summary,
    routes_system,
    routes_tasks,
)
from gridhub.api.commands import CommandPublisher
from gridhub.api.pages import mount_pages
from gridhub.housekeeping import RetentionLoop
from gridhub.settings import Settings, get_settings

log = logging.getLogger("gridhub.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("GRIDHUB_DATABASE_URL is not set: start the hub with `gridhub up`")
    database_url: str = settings.database_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(database_url, min_size=2, max_size=20, open=False,
                                   kwargs={"autocommit": True})
        await pool.open(wait=True, timeout=30)
        app.state.pool = pool
        # Task actions and KPIs are the alert engine's synchronous code: they run in threads on this pool.
        sync_pool = ConnectionPool(database_url, min_size=1, max_size=8, open=False)
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
    for module in (routes_auth, routes_devices, routes_alerts, routes_evidence, routes_tasks, routes_summary,
                   routes_stream, routes_quarantine, routes_push, routes_people):
        app.include_router(module.router, prefix="/api/v1")
    app.include_router(routes_system.router)
    mount_pages(app)
    return app
