"""The two web pages: the bureau board at `/` and the grid worker's page at `/worker` (an installable web app:
manifest, service worker at `/sw.js` with scope `/worker`), with their static files."""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Only our own files and our API; images from the API arrive as blob: URLs; the worker page's service worker and
# manifest are our own files too.
CSP = ("default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' blob: data:;"
       " style-src 'self' 'unsafe-inline'; worker-src 'self'; manifest-src 'self'; frame-ancestors 'none';"
       " base-uri 'none'")
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The service worker lives at the root so that its scope may be `/worker` (the page itself, not only /worker/...).
SW_HEADERS = {**PAGE_HEADERS, "Service-Worker-Allowed": "/worker"}


def worker_html(timezone: str) -> str:
    """The worker page with the district's time zone in `data-timezone` (times are shown in it, whatever the
    phone's own setting)."""
    text = (STATIC / "worker.html").read_text(encoding="utf-8")
    return text.replace("{{timezone}}", html.escape(timezone, quote=True))


def mount_pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def board() -> FileResponse:
        return FileResponse(STATIC / "board.html", headers=PAGE_HEADERS)

    @app.get("/worker", include_in_schema=False)
    async def worker(request: Request) -> HTMLResponse:
        return HTMLResponse(worker_html(request.app.state.settings.timezone), headers=PAGE_HEADERS)

    @app.get("/sw.js", include_in_schema=False)
    async def service_worker() -> FileResponse:
        return FileResponse(STATIC / "sw.js", media_type="text/javascript", headers=SW_HEADERS)

