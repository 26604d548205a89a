"""GET /api/v1/stream: Server-Sent Events of alert and task changes in the caller's scope, from the `changes` log.

Every event's `id:` is the change's id in the database-wide ordered log, so any API process can resume a client
from its `Last-Event-ID`. One LISTEN connection per process wakes the streams; each stream then reads the log
after its last id with the caller's scope in the query. A change id that is missing from the log may belong to
a transaction that has not committed yet: a stream does not step past such a hole until it fills or has stayed
empty for `HOLE_GRACE_S` (a rolled-back transaction leaves a hole for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row

from gridhub.api.deps import CurrentUser, PoolDep
from gridhub.auth import Principal
from gridhub.db import CHANGES_CHANNEL

log = logging.getLogger("gridhub.api.stream")
router = APIRouter(tags=["stream"])

CHANNEL = CHANGES_CHANNEL
KEEPALIVE_S = 15.0
HOLE_GRACE_S = 5.0
BATCH = 500


class ChangeFeed:
    """This process's LISTEN on `gridhub_changes`: wakes every open stream when a change is committed."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.generation = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_listening(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._listen(), name="gridhub-change-feed")

    async def _listen(self) -> None:
        while not self._closed:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._fire()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self._fire()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the feed must outlive a database restart
                log.warning("change feed lost its database connection (%s); reconnecting in 2 s", exc)
                self._fire()
                await asyncio.sleep(2)

    def _fire(self) -> None:
        self.generation += 1
        self._wake.set()
        self._wake = asyncio.Event()

    async def wait(self, seen_generation: int, timeout: float) -> None:
        """Return once a change is committed after `seen_generation` was read, or after `timeout` seconds."""
        self._ensure_listening()
        if self.generation != seen_generation:
            return
        event = self._wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def close(self) -> None:
        self._closed = True
        self._fire()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class ChangeReader:
    """One client's position in the change log, stepping past holes only when they are old enough."""

    def __init__(self, user: Principal, after: int) -> None:
        self.user = user
        self.after = after
        self._holes: dict[int, float] = {}
        self.waiting_on_hole = False

    async def read(self, conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, str, bytes]]:
        """The next changes in scope as (id, kind, JSON payload)."""
        async with conn.cursor(row_factory=dict_row) as cur:
            ids = [r["id"] for r in await (await cur.execute(
                "SELECT id FROM changes WHERE id > %s ORDER BY id LIMIT %s", (self.after, BATCH))).fetchall()]
        horizon = self.after
        now = time.monotonic()
        self.waiting_on_hole = False
        # every hole below the newest id starts its grace now, all at once (not one after another)
        prev = self.after
        for cid in ids:
            for missing in range(prev + 1, cid):
                self._holes.setdefault(missing, now)
            prev = cid
        for cid in ids:
            if any(now - self._holes[m] < HOLE_GRACE_S for m in range(horizon + 1, cid)):
                self.waiting_on_hole = True
                break
            horizon = cid
        if horizon == self.after:
            return []
        cond, params = self.user.grid_filter("grid_id")
        if not self.user.all_grids:  # as in the task list: a task assigned to me is mine wherever it is
            cond, params = f"({cond} OR (kind = 'task' AND payload->>'assignee' = %s))", [*params, self.user.id]
        async with conn.cursor(row_factory=dict_row) as cur:
            rows = await (await cur.execute(
                f"SELECT id, kind, payload::text AS payload FROM changes WHERE id > %s AND id <= %s AND ({cond})"
                " ORDER BY id", [self.after, horizon, *params])).fetchall()
        self._holes = {h: t for h, t in self._holes.items() if h > horizon}
        self.after = horizon
        return [(r["id"], r["kind"], r["payload"].encode()) for r in rows]


def sse_event(change_id: int, kind: str, payload: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (change_id, kind.encode(), payload)


async def start_position(pool: Any, last_event_id: str | None) -> int:
    """Where a stream starts: after the client's Last-Event-ID, else after the newest change."""
    if last_event_id is not None and last_event_id.strip().isdigit():
        return int(last_event_id.strip())
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        row = await (await cur.execute("SELECT COALESCE(max(id), 0) AS last FROM changes")).fetchone()
    return int(row["last"]) if row else 0


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "alert and task events"}})
async def stream(
    request: Request, user: CurrentUser, pool: PoolDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    last_event_id: Annotated[str | None, Query(max_length=32, pattern=r"^\d+$",
                                                description="resume after this event id")] = None,
) -> StreamingResponse:
    """`alert` and `task` events in your scope, each with `id:`; resume with `Last-Event-ID` (or `?last_event_id=`)."""
    feed: ChangeFeed = request.app.state.changes
    reader = ChangeReader(user, await start_position(pool, last_event_id_header or last_event_id))

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 3000\n: connected\n\n"
        last_sent = time.monotonic()
        while not feed.closed and not await request.is_disconnected():
            generation = feed.generation
            async with pool.connection() as conn:
                batch = await reader.read(conn)
            for change_id, kind, payload in batch:
                yield sse_event(change_id, kind, payload)
            if batch:
                last_sent = time.monotonic()
                continue
            if time.monotonic() - last_sent >= KEEPALIVE_S:
                yield b": keepalive\n\n"
                last_sent = time.monotonic()
            await feed.wait(generation, 0.5 if reader.waiting_on_hole else KEEPALIVE_S)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

