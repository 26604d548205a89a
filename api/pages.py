"""The two web pages: the bureau board at `/` and the grid worker's page at `/worker` (an installable web app:
manifest, service worker at `/sw.js` with scope `/worker`), with their static files."""

from __future__ import annotations

import html
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Only our own files and our API; images from the API arrive as blob: URLs; the worker page's service worker and
# manifest are our own files too.
CSP_TEMPLATE = ("default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' blob: data:{tiles};"
                " style-src 'self' 'unsafe-inline'; worker-src 'self'; manifest-src 'self'; frame-ancestors 'none';"
                " base-uri 'none'")
CSP = CSP_TEMPLATE.format(tiles="")
SUBDOMAINS = re.compile(r"\{s(?::([A-Za-z0-9-]+))?\}")
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


def tile_subdomains(template: str) -> str:
    """The subdomain characters of a GRIDHUB_MAP_TILES template: `{s:1234}` lists them, `{s}` is Leaflet's a, b, c."""
    m = SUBDOMAINS.search(template)
    return (m.group(1) or "abc") if m else ""


def tile_origins(template: str | None) -> list[str]:
    """The origins the board's tiles come from (for the CSP's img-src): one per subdomain when the host has `{s}`."""
    if not template:
        return []
    subs = tile_subdomains(template) or "_"
    out: list[str] = []
    for sub in subs:
        parts = urlsplit(SUBDOMAINS.sub(sub, template))
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in out:
            out.append(origin)
    return out


@lru_cache(maxsize=8)
def board_page(tiles: str | None, coords: str, timezone: str) -> tuple[str, dict[str, str]]:
    """The board with its map settings in data attributes (`data-map-tiles`, `data-map-subdomains`,
    `data-map-coords`) and the district's time zone (`data-timezone`), and its headers: the CSP's img-src names the tile server's origins only when tiles are
    configured."""
    text = (STATIC / "board.html").read_text(encoding="utf-8")
    template = SUBDOMAINS.sub("{s}", tiles) if tiles else ""
    for key, value in (("map_tiles", template), ("map_subdomains", tile_subdomains(tiles or "")),
                       ("map_coords", coords), ("timezone", timezone)):
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    origins = tile_origins(tiles)
    headers = {**PAGE_HEADERS, "Content-Security-Policy": CSP_TEMPLATE.format(
        tiles="".join(" " + o for o in origins))}
    return text, headers


def mount_pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def board(request: Request) -> HTMLResponse:
        settings = request.app.state.settings
        text, headers = board_page(settings.map_tiles, settings.map_coords, settings.timezone)
        return HTMLResponse(text, headers=headers)

    @app.get("/worker", include_in_schema=False)
    async def worker(request: Request) -> HTMLResponse:
        return HTMLResponse(worker_html(request.app.state.settings.timezone), headers=PAGE_HEADERS)

    @app.get("/sw.js", include_in_schema=False)
    async def service_worker() -> FileResponse:
        return FileResponse(STATIC / "sw.js", media_type="text/javascript", headers=SW_HEADERS)

