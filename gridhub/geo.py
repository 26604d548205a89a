"""WGS-84 → GCJ-02, the datum China's own map services (AutoNavi/Gaode, Tencent, Google's China tiles) draw in.

Buildings' `lat`/`lon` are stored as WGS-84 (what GPS and the registry give); a map over GCJ-02 tiles must shift
each point, or the markers land a few hundred metres off. This is the widely published public transform (the
Krasovsky 1940 ellipsoid and the fitted polynomial-and-sine offsets); points outside China's rough bounding box are
returned unchanged, as the services themselves do. `api/static/board.js` has the same function (`wgs84ToGcj02`);
tests/unit/test_geo.py checks this one against a known point, the browser test the board's markers."""

from __future__ import annotations

import math

A = 6378245.0  # Krasovsky 1940 semi-major axis, metres
EE = 0.00669342162296594323  # its first eccentricity squared


def out_of_china(lat: float, lon: float) -> bool:
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _d_lat(x: float, y: float) -> float:
    r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    r += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return r


def _d_lon(x: float, y: float) -> float:
    r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    r += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return r


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """(lat, lon) in WGS-84 degrees → (lat, lon) in GCJ-02 degrees; unchanged outside China."""
    if out_of_china(lat, lon):
        return lat, lon
    d_lat = _d_lat(lon - 105.0, lat - 35.0)
    d_lon = _d_lon(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * math.pi
    magic = 1 - EE * math.sin(rad) ** 2
    sqrt_magic = math.sqrt(magic)
    d_lat = (d_lat * 180.0) / ((A * (1 - EE)) / (magic * sqrt_magic) * math.pi)
    d_lon = (d_lon * 180.0) / (A / sqrt_magic * math.cos(rad) * math.pi)
    return lat + d_lat, lon + d_lon


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius): for tests and sanity checks."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371008.8 * math.asin(math.sqrt(h))
