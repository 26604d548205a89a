"""GET /healthz (liveness with dependency checks) and GET /metrics (Prometheus).

/healthz is unauthenticated, so it says only which dependency is down (`{"ok": false, "error": "unreachable"}`),
never an exception's text, a host, a port or a URL: those go to the log."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg.rows import dict_row

from gridhub.api.deps import PoolDep, SettingsDep
from gridhub.metrics import render_counters
from gridhub.mqtt import check_broker

router = APIRouter(tags=["system"])
log = logging.getLogger("gridhub.api.health")


@router.get("/healthz")
async def healthz(settings: SettingsDep, pool: PoolDep) -> JSONResponse:
    checks: dict[str, dict[str, object]] = {}
    t0 = time.perf_counter()
    try:
        async with pool.connection(timeout=3) as conn:
            await conn.execute("SELECT 1")
        checks["database"] = {"ok": True, "ms": round((time.perf_counter() - t0) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001
        log.warning("health: the database is unreachable: %s", exc)
        checks["database"] = {"ok": False, "error": "unreachable"}
    if settings.mqtt_url:
        t0 = time.perf_counter()
        err = await run_in_threadpool(check_broker, settings.mqtt_url)
        if err:
            log.warning("health: the broker is unreachable: %s", err)
        checks["broker"] = {"ok": err is None, **({"error": "unreachable"} if err else
                                                  {"ms": round((time.perf_counter() - t0) * 1000, 1)})}
    else:
        checks["broker"] = {"ok": False, "error": "not configured"}
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ok" if ok else "degraded", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(pool: PoolDep) -> PlainTextResponse:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = await (await cur.execute("SELECT name, labels, value FROM counters")).fetchall()
    return PlainTextResponse(render_counters([(r["name"], r["labels"], r["value"]) for r in rows]),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
