"""WGS-84 → GCJ-02 (gridhub/geo.py, the same formula as board.js's `wgs84ToGcj02`)."""

from __future__ import annotations

import pytest

from gridhub.geo import distance_m, out_of_china, wgs84_to_gcj02


def test_tiananmen_lands_where_the_chinese_services_put_it() -> None:
    # 天安门: WGS-84 (39.90734, 116.39089) is GCJ-02 (39.90874, 116.39713) on AutoNavi's map
    lat, lon = wgs84_to_gcj02(39.90734, 116.39089)
    assert distance_m(lat, lon, 39.90874, 116.39713) < 20
    # and the shift itself is the "hundreds of metres" a map without it would be off by
    assert 400 < distance_m(39.90734, 116.39089, lat, lon) < 700


def test_the_test_registrys_building_in_xiamen_moves_by_a_few_hundred_metres() -> None:
    lat, lon = wgs84_to_gcj02(24.4461, 118.0873)
    assert lat == pytest.approx(24.443458, abs=1e-5) and lon == pytest.approx(118.092275, abs=1e-5)
    assert 400 < distance_m(24.4461, 118.0873, lat, lon) < 700


@pytest.mark.parametrize(("lat", "lon"), [(51.5007, -0.1246), (-33.8568, 151.2153), (40.6892, -74.0445)])
def test_points_outside_china_are_unchanged(lat: float, lon: float) -> None:
    assert out_of_china(lat, lon)
    assert wgs84_to_gcj02(lat, lon) == (lat, lon)


def test_distance_is_the_great_circle() -> None:
    assert distance_m(0, 0, 0, 1) == pytest.approx(111_195, rel=1e-3)
    assert distance_m(39.9, 116.4, 39.9, 116.4) == 0


# ---------------------------------------------------------------- the map's settings and the board's CSP

AUTONAVI = "https://webrd0{s:1234}.is.autonavi.com/appmaptile?lang=zh_cn&size=1&scale=1&style=8&x={x}&y={y}&z={z}"


def test_tile_origins_per_subdomain_and_the_board_csp() -> None:
    from gridhub.api.pages import CSP, board_page, tile_origins

    assert tile_origins(None) == []
    assert tile_origins(AUTONAVI) == [f"https://webrd0{i}.is.autonavi.com" for i in "1234"]
    assert tile_origins("https://{s}.tile.example.org/{z}/{x}/{y}.png") == [
        "https://a.tile.example.org", "https://b.tile.example.org", "https://c.tile.example.org"]
    assert tile_origins("http://127.0.0.1:8081/t/{z}/{x}/{y}.png") == ["http://127.0.0.1:8081"]
    text, headers = board_page(None, "wgs84", "Asia/Shanghai")
    assert headers["Content-Security-Policy"] == CSP and 'data-map-tiles=""' in text
    assert 'data-timezone="Asia/Shanghai"' in text  # the board's year and times are the district's
    text, headers = board_page(AUTONAVI, "gcj02", "Asia/Urumqi")
    assert 'data-timezone="Asia/Urumqi"' in text
    csp = headers["Content-Security-Policy"]
    assert "img-src 'self' blob: data: https://webrd01.is.autonavi.com https://webrd02.is.autonavi.com" in csp
    assert "connect-src 'self';" in csp and "default-src 'self';" in csp and "script-src 'self';" in csp
    assert 'data-map-subdomains="1234"' in text and 'data-map-coords="gcj02"' in text
    assert "webrd0{s}.is.autonavi.com/appmaptile?lang=zh_cn&amp;size=1" in text  # {s:1234} → {s}, escaped


@pytest.mark.parametrize("bad", ["javascript:alert(1)", "https://tiles.example.org/{z}/{x}.png",
                                 "https://a.example.org/{z}/{x}/{y}.png; script-src *",
                                 "https://a.example.org/{z}/{x}/{y}.png\" onload=\"x", "ftp://a/{z}/{x}/{y}"])
def test_a_tile_setting_that_is_not_a_template_is_refused(bad: str) -> None:
    from pydantic import ValidationError

    from gridhub.settings import Settings

    with pytest.raises(ValidationError, match="GRIDHUB_MAP_TILES"):
        Settings(map_tiles=bad)
    with pytest.raises(ValidationError):
        Settings(map_coords="bd09")
    assert Settings(map_tiles="  ").map_tiles is None and Settings().map_coords == "wgs84"
