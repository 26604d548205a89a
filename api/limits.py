"""Request bodies capped before anything reads them (issue 13, "limits before work").

`BodyLimit` is a pure ASGI middleware, the outermost of the app, so it sees the request before routing,
authentication or multipart spooling:

- a `Content-Length` over the route's cap is answered 413 at once, without reading a byte of the body and
  without calling the app;
- a body without `Content-Length` (chunked) or with a lying one is counted as the app reads it, and the read that
  passes the cap raises `BodyTooLarge` (a 413 `HTTPException`: FastAPI hands it to the app's error handler, so the
  answer is the usual `{"detail": ...}`); whatever reads the body never gets more than the cap;
- an answer that starts before the request's body was read to its end (the 413s, and any early refusal such as a
  401 for a route that checks the token before reading) carries `Connection: close`, so that the server hangs up
  instead of reading and discarding the rest of a 2 GB upload to keep the connection alive.

Caps: `GRIDHUB_MAX_UPLOAD_BYTES` (default 10 MiB) for `POST /api/v1/tasks/{id}/photos` (a photo is at most 8 MiB,
plus the note and the multipart framing), `GRIDHUB_MAX_BODY_BYTES` (default 1 MiB) for every other request.
`POST /api/v1/reports` (a hazard report, CONTRACT §7: up to 5 photos of 8 MiB) has a fixed cap of its own,
`REPORT_BODY_BYTES`: 5 × 8 MiB + 1 MiB for the fields and framing (this route only).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REPORT_BODY_BYTES", "REPORT_MAX_PHOTOS", "BodyLimit", "BodyTooLarge", "cap_for"]

UPLOAD_ROUTES = (re.compile(r"^/api/v1/tasks/[^/]+/photos/?$"),)
REPORT_ROUTE = re.compile(r"^/api/v1/reports/?$")
REPORT_MAX_PHOTOS = 5
REPORT_BODY_BYTES = REPORT_MAX_PHOTOS * 8 * 1024 * 1024 + 1024 * 1024


class BodyTooLarge(HTTPException):
    """The body passed its cap while being read."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request body is over {_size(cap)}: refused before it was read",
                         headers={"Connection": "close"})


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def cap_for(path: str, body_cap: int, upload_cap: int) -> int:
    """The body cap of a request path: uploads get `upload_cap`, a hazard report `REPORT_BODY_BYTES`, everything
    else `body_cap`."""
    if REPORT_ROUTE.match(path):
        return REPORT_BODY_BYTES
    return upload_cap if any(r.match(path) for r in UPLOAD_ROUTES) else body_cap


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return None


class BodyLimit:
    """The middleware; `caps()` gives (JSON/other body cap, upload cap) in bytes, read per request."""

    def __init__(self, app: ASGIApp, caps: Callable[[], tuple[int, int]]) -> None:
        self.app = app
        self.caps = caps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = cap_for(scope.get("path", ""), *self.caps())
        raw_length = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        if raw_length is not None:
            try:
                length = int(raw_length)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if length > cap:
                await _answer(send, 413, f"request body of {length} bytes is over {_size(cap)}: refused before it "
                                         "was read")
                return
        body_done = not chunked and (raw_length is None or int(raw_length) == 0)
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received, body_done
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge(cap)
                if not message.get("more_body", False):
                    body_done = True
            return message

        async def marked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if not body_done:  # answered before the body was read: hang up rather than drain it
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, marked_send)
        except BodyTooLarge as exc:  # read outside FastAPI's handlers (a page, a mounted app)
            if started:
                raise
            await _answer(send, 413, str(exc.detail))


async def _answer(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
