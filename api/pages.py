"""The two web pages: the bureau board at `/` and the grid worker's page at `/worker`, with their static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Only our own files and our API; images from the API arrive as blob: URLs.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' blob: data:;"
                               " style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def mount_pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def board() -> FileResponse:
        return FileResponse(STATIC / "board.html", headers=PAGE_HEADERS)

    @app.get("/worker", include_in_schema=False)
    async def worker() -> FileResponse:
        return FileResponse(STATIC / "worker.html", headers=PAGE_HEADERS)
