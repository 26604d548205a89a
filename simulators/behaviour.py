"""What a healthy device of each kind reports at a given moment: realistic, reproducible metric values."""

from __future__ import annotations

import math
import random
import zlib
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from gridhub.protocol import DeviceKind
from gridhub.simulators.fleet import DeviceSpec

# a fixed origin for slow trends (battery drain), so that a device's value depends only on its id and the time
_TREND_ORIGIN_MS = 1_790_000_000_000
BATTERY_DRAIN_PCT_PER_DAY = 0.05


def stable_fraction(*parts: str) -> float:
    """A number in [0, 1) that depends only on the parts: per-site baselines that survive restarts."""
    return zlib.crc32("/".join(parts).encode()) / 2**32


def site_pressure_mpa(building: str) -> float:
    """The static pressure at a building's most unfavourable point: 0.30-0.60 MPa."""
    return round(0.30 + 0.30 * stable_fraction("pressure", building), 3)


def battery_pct(device_id: str, ts_ms: int) -> float:
    """A smoke alarm's battery, slowly draining from a start level between 55 and 100 %."""
    start = 55 + 45 * stable_fraction("battery", device_id)
    days = max(0.0, (ts_ms - _TREND_ORIGIN_MS) / 86_400_000)
    return round(max(0.0, start - BATTERY_DRAIN_PCT_PER_DAY * days), 1)


def is_night(ts_ms: int, tz: ZoneInfo) -> bool:
    """Stairwell lights are on from 18:30 to 06:30 local time."""
    t = datetime.fromtimestamp(ts_ms / 1000, tz)
    minutes = t.hour * 60 + t.minute
    return minutes >= 18 * 60 + 30 or minutes < 6 * 60 + 30


def daylight_lux(ts_ms: int, tz: ZoneInfo) -> float:
    """Daylight reaching a stairwell window: 0 at night, up to ~400 lx at noon."""
    t = datetime.fromtimestamp(ts_ms / 1000, tz)
    hours = t.hour + t.minute / 60
    return max(0.0, 400 * math.sin(math.pi * (hours - 6) / 13)) if 6 <= hours <= 19 else 0.0


def steady_metrics(device: DeviceSpec, ts_ms: int, rng: random.Random, tz: ZoneInfo) -> dict[str, Any]:
    """A healthy device's reading at `ts_ms` (empty for a camera, which has no metrics)."""
    if device.kind == DeviceKind.SPRINKLER_PRESSURE:
        base = site_pressure_mpa(device.building)
        # water drawn in the morning and evening lowers the pressure a little
        t = datetime.fromtimestamp(ts_ms / 1000, tz)
        demand = 0.012 * (math.exp(-((t.hour - 7.5) ** 2) / 2) + math.exp(-((t.hour - 19) ** 2) / 3))
        return {"pressure_mpa": round(max(0.0, base - demand + rng.gauss(0, 0.004)), 3)}
    if device.kind == DeviceKind.STAIRWELL_LIGHT:
        on = is_night(ts_ms, tz)
        lux = daylight_lux(ts_ms, tz) * (0.2 + 0.3 * stable_fraction("window", device.id))
        if on:
            lux += 25 + 30 * stable_fraction("lamp", device.id)
        return {"lamp_on": on, "lux": round(max(0.0, lux + rng.gauss(0, 1.5)), 1),
                "power_w": round((9.5 + rng.gauss(0, 0.3)) if on else 0.4, 2)}
    if device.kind == DeviceKind.SMOKE_ALARM:
        t = datetime.fromtimestamp(ts_ms / 1000, tz)
        room = 22 + 4 * math.sin(math.pi * (t.hour - 9) / 12) + 3 * stable_fraction("room", device.id)
        return {"battery_pct": battery_pct(device.id, ts_ms),
                "smoke_db_m": round(abs(rng.gauss(0, 0.004)), 4),
                "temperature_c": round(room + rng.gauss(0, 0.2), 1),
                "rssi_dbm": int(-70 - 25 * stable_fraction("rssi", device.id) + rng.gauss(0, 2))}
    return {}
