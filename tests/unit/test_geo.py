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
