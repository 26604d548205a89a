"""The two web pages: the bureau board at `/` and the grid worker's page at `/worker`, with their static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def mount_pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def board() -> FileResponse:
        return FileResponse(STATIC / "board.html", headers={"Cache-Control": "no-cache"})

    @app.get("/worker", include_in_schema=False)
    async def worker() -> FileResponse:
        return FileResponse(STATIC / "worker.html", headers={"Cache-Control": "no-cache"})
