"""GET /api/v1/stream: Server-Sent Events of alert and task changes in the caller's scope, from the `changes` log.

Every event's `id:` is the change's id in the database-wide ordered log, so any API process can resume a client
from its `Last-Event-ID`. One LISTEN connection per process wakes the streams; each stream then reads the log
after its last id with the caller's scope in the query. A change id that is missing from the log may belong to
a transaction that has not committed yet: a stream does not step past such a hole until it fills or has stayed
empty for `HOLE_GRACE_S` (a rolled-back transaction leaves a hole for ever).

Who may listen, and for how long: the stream is opened with a Bearer header, a one-use stream ticket
(`POST /api/v1/stream/ticket`, `?ticket=`) or, for CONTRACT §4, `?access_token=` (the only route that takes a token
in the query). A stream ends (an `end` event naming why, then the response closes) when the log-in it was opened
with expires, and, checked every `RECHECK_S`, when the person is deactivated or removed, their password changes, or
their scope (role, grids, street) changes: the client reconnects and gets its new scope, or a 401. One person holds
at most `MAX_STREAMS_PER_PERSON` streams per API process; one more is answered 429 (not the oldest closed: two
tabs would then take turns closing each other for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
import psycopg
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row
from pydantic import BaseModel

from gridhub.api.deps import Caller, CurrentCaller, PoolDep, SettingsDep, load_principal, oauth2, unauthorized
from gridhub.auth import (
    AuthError,
    Principal,
    TicketLedger,
    decode_stream_ticket,
    decode_token,
    issue_stream_ticket,
)
from gridhub.db import CHANGES_CHANNEL, connect_kwargs

log = logging.getLogger("gridhub.api.stream")
router = APIRouter(tags=["stream"])

CHANNEL = CHANGES_CHANNEL
KEEPALIVE_S = 15.0
HOLE_GRACE_S = 5.0
BATCH = 500
RECHECK_S = 15.0  # how often an open stream asks the registry whether its person may still listen
MAX_STREAMS_PER_PERSON = 5  # per API process


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
                async with await psycopg.AsyncConnection.connect(
                        self._url, **connect_kwargs(self._url, autocommit=True)) as conn:
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


class StreamSlots:
    """How many streams each person holds open in this process."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def take(self, person: str) -> Any:
        """A release function for one more stream of `person`; 429 when they hold the most already."""
        if self.open.get(person, 0) >= MAX_STREAMS_PER_PERSON:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                f"{MAX_STREAMS_PER_PERSON} live streams are open for you already: close one",
                                headers={"Retry-After": str(int(KEEPALIVE_S))})
        self.open[person] = self.open.get(person, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self.open.get(person, 1) - 1
                if left > 0:
                    self.open[person] = left
                else:
                    self.open.pop(person, None)

        return release


def _app_state(request: Request, name: str, factory: Any) -> Any:
    value = getattr(request.app.state, name, None)
    if value is None:
        value = factory()
        setattr(request.app.state, name, value)
    return value


async def stream_caller(
    request: Request, settings: SettingsDep, pool: PoolDep,
    bearer: Annotated[str | None, Depends(oauth2)],
    access_token: Annotated[str | None, Query(description="a log-in token (EventSource cannot send headers);"
                                                          " prefer `ticket`")] = None,
    ticket: Annotated[str | None, Query(description="a stream ticket from POST /api/v1/stream/ticket")] = None,
) -> Caller:
    """The stream's caller: Bearer header, `?ticket=` (one use, a minute) or `?access_token=` (CONTRACT §4)."""
    key = settings.signing_key()
    try:
        if ticket and not bearer:
            claims = decode_stream_ticket(ticket, key)
            ledger: TicketLedger = _app_state(request, "stream_tickets", TicketLedger)
            if not ledger.use(str(claims["jti"]), float(claims["exp"])):
                raise AuthError("stream ticket already used: ask for a new one")
            expires_at = float(claims["texp"])
        else:
            token = bearer or access_token
            if not token:
                raise AuthError("not authenticated: send Authorization: Bearer <token>, or ?ticket= from "
                                "POST /api/v1/stream/ticket")
            claims = decode_token(token, key)
            expires_at = float(claims["exp"])
        if expires_at <= time.time():
            raise AuthError("token expired: log in again")
        user = await load_principal(pool, str(claims["sub"]), int(claims.get("pwd", 0)))
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc
    return Caller(user, claims, expires_at)


class StreamTicket(BaseModel):
    ticket: str
    expires_in: int


@router.post("/stream/ticket", response_model=StreamTicket)
async def stream_ticket(caller: CurrentCaller, settings: SettingsDep) -> StreamTicket:
    """A ticket for `GET /api/v1/stream?ticket=`: good for one stream, within a minute, and never past the
    log-in's own expiry; the stream it opens ends when the log-in does. Keeps log-in tokens out of URLs."""
    ticket, expires_in = issue_stream_ticket(caller.claims, settings.signing_key())
    return StreamTicket(ticket=ticket, expires_in=expires_in)


def _scope(user: Principal) -> tuple[str, str | None, frozenset[str]]:
    return user.role, user.street_id, user.grids


async def still_allowed(pool: Any, caller: Caller) -> str | None:
    """None while the stream's person may go on listening with the scope it opened with, else why not."""
    if time.time() >= caller.expires_at:
        return "token expired: log in again"
    try:
        now = await load_principal(pool, caller.user.id, int(caller.claims.get("pwd", 0)))
    except AuthError as exc:
        return str(exc)
    if _scope(now) != _scope(caller.user):
        return "your role or scope changed: reconnect"
    return None


def sse_end(reason: str) -> bytes:
    return b"event: end\ndata: %s\n\n" % orjson.dumps({"reason": reason})


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "alert and task events"},
                       429: {"description": "this person holds the most streams already"}})
async def stream(
    request: Request, caller: Annotated[Caller, Depends(stream_caller)], pool: PoolDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=32)] = None,
    last_event_id: Annotated[str | None, Query(max_length=32, pattern=r"^\d+$",
                                                description="resume after this event id")] = None,
) -> StreamingResponse:
    """`alert` and `task` events in your scope, each with `id:`; resume with `Last-Event-ID` (or `?last_event_id=`).
    Ends with an `end` event when your log-in expires or is revoked or your scope changes."""
    feed: ChangeFeed = request.app.state.changes
    user = caller.user
    slots: StreamSlots = _app_state(request, "stream_slots", StreamSlots)
    release = slots.take(user.id)
    try:
        reader = ChangeReader(user, await start_position(pool, last_event_id_header or last_event_id))
    except BaseException:
        release()
        raise

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 3000\n: connected\n\n"
            last_sent = time.monotonic()
            next_check = time.monotonic() + RECHECK_S
            while not feed.closed and not await request.is_disconnected():
                if time.time() >= caller.expires_at or time.monotonic() >= next_check:
                    why = await still_allowed(pool, caller)
                    if why is not None:
                        log.info("stream of %s ended: %s", user.id, why)
                        yield sse_end(why)
                        return
                    next_check = time.monotonic() + RECHECK_S
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
                wait = KEEPALIVE_S if not reader.waiting_on_hole else 0.5
                wait = min(wait, next_check - time.monotonic(), caller.expires_at - time.time())
                await feed.wait(generation, max(0.05, wait))
        finally:
            release()

    body = events()
    weakref.finalize(body, release)  # a response that never starts its body still gives the slot back
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
