"""Places in the registry (CONTRACT §7): units, facilities and buildings' lat/lon through import and export, and
every refusal naming its line and field."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import psycopg
import pytest

from gridhub.db import migrate
from gridhub.registry import RegistryError, apply_registry, dump_yaml, export_registry, import_registry, parse

DATA = Path(__file__).parent / "data"
TEXT = (DATA / "registry.yaml").read_text()


def test_places_round_trip_through_the_database(make_database) -> None:
    url = make_database()
    migrate(url)
    with psycopg.connect(url) as conn:
        counts = import_registry(conn, parse(TEXT))
        first = export_registry(conn)
        again = dump_yaml(first)
        import_registry(conn, parse(again))
        second = export_registry(conn)
        rows = conn.execute("SELECT (SELECT count(*) FROM units), (SELECT count(*) FROM facilities)").fetchone()
        import_registry(conn, parse(TEXT))  # the same file twice changes nothing
        third = export_registry(conn)
    assert first == second == third
    assert dump_yaml(second) == again
    assert counts["units"] == 3 and counts["facilities"] == 3 and rows == (3, 3)
    assert first["units"][0] == {"id": "u-001", "name": "沙坡尾菜市场", "class": "key", "grid": "g-xg-01",
                                 "building": "b-12", "contact": "李四", "phone": "13800000002"}
    assert first["units"][1] == {"id": "u-002", "name": "小卖部", "class": "shop", "grid": "g-xg-01"}
    f1 = first["facilities"][0]
    assert f1 == {"id": "f-001", "kind": "extinguisher", "building": "b-12", "floor": 1, "place": "一楼楼梯口",
                  "expires": date(2027, 6, 30)}
    assert "expires: 2027-06-30" in again  # a YAML date, as written, not a quoted string
    grid1 = first["districts"][0]["streets"][0]["communities"][0]["grids"][0]
    assert grid1["buildings"][0] == {"id": "b-12", "name": "12号楼", "floors": 7, "lat": 24.4461, "lon": 118.0873}
    assert "lat" not in grid1["buildings"][1]


def test_a_registry_without_places_exports_as_before(make_database) -> None:
    url = make_database()
    migrate(url)
    bare = TEXT.split("units:\n", 1)[0]
    with psycopg.connect(url) as conn:
        import_registry(conn, parse(bare))
        out = export_registry(conn)
    assert set(out) == {"districts", "workers", "devices"}


def test_places_are_updated_in_place(make_database) -> None:
    url = make_database()
    migrate(url)
    with psycopg.connect(url) as conn:
        import_registry(conn, parse(TEXT))
        changed = (TEXT.replace("class: shop, grid: g-xg-01}", "class: general, grid: g-xg-01, contact: 吴十}")
                   .replace("expires: 2027-06-30", "expires: 2028-01-31")
                   .replace("lat: 24.4461, lon: 118.0873", "lat: -33.5, lon: -70"))
        result = apply_registry(conn, parse(changed))
        u2 = conn.execute("SELECT class, contact FROM units WHERE id = 'u-002'").fetchone()
        f1 = conn.execute("SELECT expires FROM facilities WHERE id = 'f-001'").fetchone()
        b12 = conn.execute("SELECT lat, lon FROM buildings WHERE id = 'b-12'").fetchone()
    assert u2 == ("general", "吴十") and f1 == (date(2028, 1, 31),) and b12 == (-33.5, -70.0)
    assert result.counts["units"] == 3


BAD = [
    # (what is replaced, by what, the field named, words in the message)
    ("lat: 24.4461,", "lat: 91,", "grids[0](g-xg-01).buildings[0](b-12).lat", "less than or equal to 90"),
    ("lon: 118.0873}", "lon: -181}", "grids[0](g-xg-01).buildings[0](b-12).lon", "greater than or equal to -180"),
    ("lat: 24.4461, lon: 118.0873}", "lat: 24.4461}", "grids[0](g-xg-01).buildings[0](b-12)", "both `lat` and `lon`"),
    ("lat: 24.4461,", 'lat: "north",', "buildings[0](b-12).lat", "number"),
    ("class: key,", "class: school,", "units[0](u-001).class", "'key'"),
    ("grid: g-xg-01, building: b-12,", "grid: g-zz, building: b-12,", "units[0](u-001).grid", "'g-zz' is not defined"),
    ("grid: g-xg-01, building: b-12,", "grid: g-xg-01, building: b-99,", "units[0](u-001).building",
     "'b-99' is not defined"),
    ("grid: g-xg-02, building: b-20,", "grid: g-xg-02, building: b-14,", "units[2](u-201).building",
     "is in grid 'g-xg-01'"),
    ("{id: u-002,", "{id: u-001,", "units[1](u-001).id", "duplicate unit id 'u-001'"),
    ("{id: u-002, name: 小卖部,", "{id: u-002,", "units[1](u-002).name", "Field required"),
    ("class: key,", "class: key, size: 3,", "units[0](u-001).size", "Extra inputs"),
    ("kind: hydrant,", "kind: sprinkler,", "facilities[1](f-002).kind", "'extinguisher'"),
    ("kind: fire_door, building: b-20", "kind: fire_door, building: b-99", "facilities[2](f-201).building",
     "'b-99' is not defined"),
    ("{id: f-002,", "{id: f-001,", "facilities[1](f-001).id", "duplicate facility id 'f-001'"),
    ("expires: 2027-06-30", "expires: 2027-02-30", "facilities[0](f-001).expires", "YYYY-MM-DD"),
    ("expires: 2027-06-30", "expires: next year", "facilities[0](f-001).expires", "YYYY-MM-DD"),
    ("expires: 2027-06-30", "expires: 20270630", "facilities[0](f-001).expires", "YYYY-MM-DD"),
    ("expires: 2027-06-30", "expires: 2027-06-30 12:00:00", "facilities[0](f-001).expires", "YYYY-MM-DD"),
    ("floor: 1, place: 一楼楼梯口", "floor: one, place: 一楼楼梯口", "facilities[0](f-001).floor", "integer"),
]


@pytest.mark.parametrize(("old", "new", "field", "words"), BAD, ids=[b[2] + ":" + b[1] for b in BAD])
def test_bad_places_name_line_and_field(old: str, new: str, field: str, words: str) -> None:
    assert TEXT.count(old) == 1, old
    bad = TEXT.replace(old, new)
    with pytest.raises(RegistryError) as info:
        parse(bad, "reg.yaml")
    msg = str(info.value)
    assert field in msg, msg
    assert words in msg, msg
    line = [i for i, ln in enumerate(bad.splitlines(), 1) if new in ln][-1]  # a duplicate: the second one
    assert f"reg.yaml:{line}: " in msg, msg
    assert len(info.value.problems) == 1, msg


def test_a_quoted_date_is_a_date() -> None:
    reg = parse(TEXT.replace("expires: 2027-06-30", 'expires: "2027-06-30"'))
    assert reg.facilities[0].expires == date(2027, 6, 30)
