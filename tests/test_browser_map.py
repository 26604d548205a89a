"""The board's map of buildings (issue 14) in headless Chromium (Debian's /usr/bin/chromium through Playwright), on
the hub's API over a database of its own: markers for the registry's buildings with coordinates (b-12), the others
listed as 未登记坐标, nothing requested beyond 127.0.0.1 without tiles, the marker coloured by the worst open
alert, a click filtering the alert and task lists (and the chip clearing it); with tiles configured (a local tile
server) and GCJ-02, the CSP's img-src names the tile server and the marker sits at the shifted position."""

from __future__ import annotations

import http.server
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from apitools import RunningApi, make_incident, serve
from browser_support import chromium, registered_database, submit_login, watch

from gridhub.geo import distance_m, wgs84_to_gcj02
from gridhub.settings import Settings

WAIT_MS = 30_000
# the map's screenshot: to docs/ with GRIDHUB_UPDATE_SCREENSHOTS=1 (as test_browser.py), else to a temporary folder
SHOTS = Path(__file__).resolve().parent.parent / "docs" if os.environ.get("GRIDHUB_UPDATE_SCREENSHOTS") == "1" \
    else Path(tempfile.gettempdir())
B12 = (24.4461, 118.0873)
# a 1x1 PNG for the local tile server
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000b49444154789c63600002000005"
                    "00017a5eab3f0000000049454e44ae426082")


class Hub:
    def __init__(self, url: str, api: RunningApi, passwords: dict[str, str]) -> None:
        self.db_url, self.api, self.passwords = url, api, passwords


@pytest.fixture(scope="module")
def database(make_database: Callable[[], str]) -> tuple[str, dict[str, str]]:
    return registered_database(make_database, "map")


def _hub(database: tuple[str, dict[str, str]], work: Any, **map_settings: Any) -> Iterator[Hub]:
    url, passwords = database
    settings = Settings(database_url=url, data_dir=work / "data", secret_key="map-secret-" + "m" * 40,
                        instance_id=f"map{os.getpid()}", **map_settings)
    api = serve(settings)
    try:
        yield Hub(url, api, passwords)
    finally:
        api.stop()


@pytest.fixture(scope="module")
def hub(database: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    yield from _hub(database, tmp_path_factory.mktemp("map-hub"))


@pytest.fixture(scope="module")
def tile_server() -> Iterator[tuple[str, list[str]]]:
    """A tile server on 127.0.0.1 (another origin than the hub's): its URL and the paths asked of it."""
    asked: list[str] = []

    class Tiles(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def tiled_hub(database: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory,
              tile_server: tuple[str, list[str]]) -> Iterator[Hub]:
    yield from _hub(database, tmp_path_factory.mktemp("map-tiled-hub"),
                    map_tiles=tile_server[0] + "/tiles/{z}/{x}/{y}.png", map_coords="gcj02")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def open_board(browser: Any, hub: Hub, who: str = "a-001") -> tuple[Any, Any, list[str], list[str]]:
    context = browser.new_context(viewport={"width": 1400, "height": 1600}, locale="zh-CN",
                                  timezone_id="Asia/Shanghai")
    page = context.new_page()
    errors = watch(page)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    submit_login(page, hub.api.url + "/", who, hub.passwords[who])
    page.get_by_test_id("who").wait_for(timeout=WAIT_MS)
    try:
        page.locator("[data-testid=map-marker]").first.wait_for(timeout=WAIT_MS)
    except Exception:
        raise AssertionError(f"no marker: errors {errors}, map {page.locator('#bmap').inner_html()[:3000]}") from None
    return context, page, errors, requests


def until(page: Any, expression: str, timeout_s: float = WAIT_MS / 1000) -> None:
    """Poll a JavaScript expression (wait_for_function would evaluate strings, which the page's CSP refuses)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        page.wait_for_timeout(200)


def test_markers_for_buildings_with_coordinates_and_nothing_from_elsewhere(browser: Any, hub: Hub) -> None:
    context, page, errors, requests = open_board(browser, hub)
    try:
        markers = page.locator("[data-testid=map-marker]")
        assert [markers.nth(i).get_attribute("data-building") for i in range(markers.count())] == ["b-12"]
        marker = markers.first
        assert (float(marker.get_attribute("data-lat")), float(marker.get_attribute("data-lon"))) == B12  # wgs84
        assert page.get_by_test_id("bmap-canvas").get_attribute("data-tiles") == "off"
        unplaced = page.locator("[data-testid=unplaced-building]")
        assert {unplaced.nth(i).get_attribute("data-building") for i in range(unplaced.count())} == {"b-14", "b-20"}
        assert "未登记坐标" in page.get_by_test_id("bmap-unplaced").inner_text()
        assert page.get_by_test_id("bmap").locator("h2").inner_text().startswith("地图")
        response = page.request.get(hub.api.url + "/")
        assert "img-src 'self' blob: data:;" in response.headers["content-security-policy"]
        page.wait_for_timeout(500)
        origin = hub.api.url
        assert requests and all(u.startswith(origin + "/") or u.startswith(("data:", "blob:")) for u in requests), \
            [u for u in requests if not u.startswith(origin)]
        assert not errors, errors
    finally:
        context.close()


def test_marker_colour_and_a_click_filters_the_lists(browser: Any, hub: Hub) -> None:
    _, task12 = make_incident(hub.db_url, "sa-0002", "g-xg-01", "b-12", "w-001", severity="high")
    _, task20 = make_incident(hub.db_url, "sa-0201", "g-xg-02", "b-20", "w-003", severity="critical")
    context, page, errors, _ = open_board(browser, hub)
    try:
        marker = page.locator("[data-testid=map-marker][data-building=b-12]")
        until(page, "document.querySelector('[data-testid=map-marker][data-building=b-12]')"
                    ".getAttribute('data-worst') === 'high'")
        b20 = page.locator("[data-testid=unplaced-building][data-building=b-20]")
        assert "sev-critical" in (b20.get_attribute("class") or "")
        cards = page.locator("[data-testid=task-card]")
        until(page, f"!!document.querySelector('[data-task-id=\"{task20}\"]')")
        assert cards.count() >= 2
        marker.click()
        page.get_by_test_id("building-filter").first.wait_for(timeout=WAIT_MS)
        ids = {cards.nth(i).get_attribute("data-task-id") for i in range(cards.count())}
        assert task12 in ids and task20 not in ids
        page.get_by_test_id("bmap").screenshot(path=str(SHOTS / "board-map-filtered.png"))
        alerts = page.locator("[data-testid=alert-row]")
        assert alerts.count() >= 1 and all(
            alerts.nth(i).locator("td").nth(3).inner_text() == "b-12" for i in range(alerts.count()))
        page.locator("[data-testid=building-filter-clear]").first.click()
        until(page, f"!!document.querySelector('[data-task-id=\"{task20}\"]')")
        assert page.locator("[data-testid=building-filter]").count() == 0
        # a building without coordinates filters from its button under the map
        b20.click()
        until(page, f"!document.querySelector('[data-task-id=\"{task12}\"]')")
        assert page.locator(f"[data-task-id='{task20}']").count() == 1
        assert not errors, errors
    finally:
        context.close()


def test_tiles_and_gcj02_shift(browser: Any, tiled_hub: Hub, tile_server: tuple[str, list[str]]) -> None:
    origin, asked = tile_server
    context, page, errors, requests = open_board(browser, tiled_hub)
    try:
        csp = page.request.get(tiled_hub.api.url + "/").headers["content-security-policy"]
        assert f"img-src 'self' blob: data: {origin};" in csp and "connect-src 'self';" in csp
        marker = page.locator("[data-testid=map-marker][data-building=b-12]")
        shown = (float(marker.get_attribute("data-lat")), float(marker.get_attribute("data-lon")))
        expected = wgs84_to_gcj02(*B12)
        assert distance_m(*shown, *expected) < 0.01  # the board's JS and gridhub/geo.py agree
        assert 400 < distance_m(*B12, *shown) < 700
        js = page.evaluate("GHMap.wgs84ToGcj02(39.90734, 116.39089)")
        assert distance_m(js[0], js[1], 39.90874, 116.39713) < 20
        until(page, "document.querySelectorAll('img.leaflet-tile-loaded').length > 0")
        assert asked and all(p.startswith("/tiles/") for p in asked)
        assert {urlsplit(u).netloc for u in requests if not u.startswith(("data:", "blob:"))} == {
            urlsplit(tiled_hub.api.url).netloc, urlsplit(origin).netloc}
        assert not errors, errors
    finally:
        context.close()
