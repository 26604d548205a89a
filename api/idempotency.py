"""Writes that a phone may send twice: the `Idempotency-Key` and `X-Gridhub-Client-Time` headers of task actions,
comments and photos (the worker page's offline queue replays what was done without signal).

- `Idempotency-Key` (1-128 characters of `A-Za-z0-9_-:.`): the first answer to a person's key is stored in
  `idempotency_keys` **in the same transaction** as the action it answers, so that an action and its stored answer
  commit together or not at all. The same key from the same person later answers that stored answer (same status,
  same body, header `Idempotency-Replayed: true`) and does nothing again; a request racing the first one waits on
  the key's row and then answers the stored answer too. The key is the person's own (another person's identical
  key is another key). The same key sent with a different method, path or body is a 422: it cannot be the same
  request. A refusal of the action itself (403, 404, 409, 422 from the state machine) is stored as well, so that a
  replay answers what the first attempt was told. Keys are kept 7 days (`KEEP`, gridhub/housekeeping.py).
- `X-Gridhub-Client-Time` (RFC 3339 with offset): when the person acted, offline. The task's history keeps that
  time with `received_at` beside it; deadlines and KPIs use the hub's time. A time ahead of the hub's clock
  (a phone's clock running fast) is ignored: the step is recorded at the hub's time, as if sent online; refusing it
  would throw the person's work away for a wrong clock. A time more than 7 days old is a 422: that is longer than
  a key is kept, so the replay could no longer be recognised as one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Header, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from psycopg.types.json import Jsonb

KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-:.]{1,128}")
KEEP = timedelta(days=7)  # gridhub/housekeeping.py IDEMPOTENCY_KEEP deletes them after that
MAX_CLIENT_AGE = timedelta(days=7)
SAME_TIME = timedelta(seconds=5)  # a client time this close to the hub's is the hub's (no offline replay)
REPLAYED_HEADER = "Idempotency-Replayed"


@dataclass(frozen=True)
class OfflineWrite:
    """The offline-replay headers of one write: its idempotency key and the person's own time, either absent."""

    key: str | None
    client_at: datetime | None


def parse_client_time(value: str, now: datetime | None = None) -> datetime | None:
    """The person's time from `X-Gridhub-Client-Time`; None when ahead of the hub's clock or less than 5 s behind
    it (then the hub's time is used); a time without offset, not RFC 3339 or older than 7 days is a 422."""
    now = now or datetime.now(UTC)
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise HTTPException(422, f"X-Gridhub-Client-Time: {value!r} is not an RFC 3339 time") from exc
    if at.tzinfo is None:
        raise HTTPException(422, "X-Gridhub-Client-Time: the time needs an offset (e.g. +08:00 or Z)")
    if at < now - MAX_CLIENT_AGE:
        raise HTTPException(422, f"X-Gridhub-Client-Time: {value} is more than {MAX_CLIENT_AGE.days} days old;"
                                 " an offline action that old is no longer taken")
    if at > now - SAME_TIME:
        return None  # ahead of the hub, or sent as it happened: the hub's own time, no `received_at`
    return at


def offline_write(
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                                  description="1-128 of A-Za-z0-9_-:. ; the same key answers the"
                                                              " first answer again without acting twice")] = None,
    client_time: Annotated[str | None, Header(alias="X-Gridhub-Client-Time", max_length=64,
                                              description="RFC 3339: when the person acted (offline)")] = None,
) -> OfflineWrite:
    if idempotency_key is not None and not KEY_PATTERN.fullmatch(idempotency_key):
        raise HTTPException(422, "Idempotency-Key: 1 to 128 characters of letters, digits and _ - : .")
    return OfflineWrite(idempotency_key, parse_client_time(client_time) if client_time is not None else None)


OfflineDep = Annotated[OfflineWrite, Depends(offline_write)]


def fingerprint(method: str, path: str, content: Any) -> str:
    """What makes two requests the same request: method, path and the body's content (JSON-able)."""
    raw = json.dumps([method.upper(), path, content], sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                     default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


class Replay(Exception):  # noqa: N818 - not an error: the stored answer
    """The stored answer of an idempotency key seen before."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers={REPLAYED_HEADER: "true"})


def _check(row: tuple[Any, ...] | None, key: str, fp: str) -> Replay | None:
    if row is None:
        return None
    status, body, stored_fp = row
    if stored_fp != fp:
        raise HTTPException(422, f"Idempotency-Key {key} was used for another request; send a new key")
    return Replay(int(status), body)


async def stored(conn: psycopg.AsyncConnection[Any], worker_id: str, key: str, fp: str) -> JSONResponse | None:
    """The stored answer for the person's key, if any (a quick look before the route does its work)."""
    cur = await conn.execute("SELECT status, response, fingerprint FROM idempotency_keys"
                             " WHERE worker_id = %s AND key = %s", (worker_id, key))
    row = await cur.fetchone()
    if row is None:
        return None
    replay = _check(tuple(row.values()) if isinstance(row, dict) else tuple(row), key, fp)
    return replay.response() if replay else None


def claim(conn: psycopg.Connection[Any], worker_id: str, key: str, method: str, path: str, fp: str) -> None:
    """In the action's transaction: take the key, or raise Replay with its stored answer. A concurrent first
    request holding the key makes this wait until it commits (then Replay) or rolls back (then the key is ours)."""
    row = conn.execute("INSERT INTO idempotency_keys (worker_id, key, method, path, fingerprint, status, response)"
                       " VALUES (%s, %s, %s, %s, %s, 0, 'null') ON CONFLICT (worker_id, key) DO NOTHING RETURNING 1",
                       (worker_id, key, method, path, fp)).fetchone()
    if row is not None:
        return
    got = conn.execute("SELECT status, response, fingerprint FROM idempotency_keys WHERE worker_id = %s AND key = %s",
                       (worker_id, key)).fetchone()
    replay = _check(tuple(got) if got is not None else None, key, fp)
    if replay is None:  # deleted by retention in between: take it again
        claim(conn, worker_id, key, method, path, fp)
        return
    raise replay


def answer(conn: psycopg.Connection[Any], worker_id: str, key: str, status: int, body: Any) -> None:
    """In the action's transaction: the answer of the key taken by `claim`."""
    conn.execute("UPDATE idempotency_keys SET status = %s, response = %s WHERE worker_id = %s AND key = %s",
                 (status, Jsonb(body), worker_id, key))


def refused(conn: psycopg.Connection[Any], worker_id: str, key: str, method: str, path: str, fp: str,
            exc: HTTPException) -> None:
    """After the action's transaction rolled back: store its refusal (a 4xx) as the key's answer, unless a
    concurrent request stored one first."""
    with conn.transaction():
        conn.execute("INSERT INTO idempotency_keys (worker_id, key, method, path, fingerprint, status, response)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (worker_id, key) DO NOTHING",
                     (worker_id, key, method, path, fp, exc.status_code, Jsonb({"detail": str(exc.detail)})))



async def once(conn: psycopg.AsyncConnection[Any], sync_pool: Any, worker_id: str, key: str | None, path: str,
               fp: str, work: Callable[[], Awaitable[Any]]) -> Any:
    """A write under an Idempotency-Key, as every route that takes one does it: a stored answer for the key is
    answered again (`work` not run); `work()` claims the key in its own transaction; a concurrent first use's
    answer (`Replay`) is answered; a refusal (HTTPException) is stored for the key, then raised."""
    if key is not None and (hit := await stored(conn, worker_id, key, fp)) is not None:
        return hit
    try:
        return await work()
    except Replay as replay:
        return replay.response()
    except HTTPException as exc:
        if key is not None:
            await run_in_threadpool(_store_refusal, sync_pool, worker_id, key, path, fp, exc)
        raise


def _store_refusal(sync_pool: Any, worker_id: str, key: str, path: str, fp: str, exc: HTTPException) -> None:
    with sync_pool.connection() as c:
        refused(c, worker_id, key, "POST", path, fp, exc)
