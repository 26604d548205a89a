# ruff: noqa: F811
"""Units and facilities (CONTRACT §7) through the real app: scope for every role, 401/403/404, filters, paging."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from apitools import ALL_WORKERS, all_pages, api, as_, bearer, client, tokens  # noqa: F401
from psycopg.rows import namedtuple_row

from gridhub.auth import PRINCIPAL_SQL, principal_from_row

G1_UNITS, G2_UNITS = {"u-001", "u-002"}, {"u-201"}
G1_FACILITIES, G2_FACILITIES = {"f-001", "f-002"}, {"f-201"}
EVERYONE = ("s-001", "b-001", "a-001")


def in_scope(db_url: str, wid: str, sql: str) -> set[str]:
    """What the worker's scope holds now (other tests may add places to these grids in the shared session)."""
    with psycopg.connect(db_url) as conn:
        principal = principal_from_row(conn.cursor(row_factory=namedtuple_row).execute(PRINCIPAL_SQL, (wid,)).fetchone())
        cond, params = principal.grid_filter("grid")
        return {r[0] for r in conn.execute(f"SELECT id FROM ({sql}) x WHERE {cond}", params)}


UNITS_SQL = "SELECT id, grid_id AS grid FROM units"
FACILITIES_SQL = "SELECT f.id, b.grid_id AS grid FROM facilities f JOIN buildings b ON b.id = f.building_id"


def test_without_or_with_a_bad_token_every_place_route_is_401(client: httpx.Client) -> None:
    for path in ("/api/v1/units", "/api/v1/units/u-001", "/api/v1/facilities", "/api/v1/facilities/f-001",
                 "/api/v1/units/nope"):
        for headers in ({}, bearer("not-a-token")):
            r = client.get(path, headers=headers)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["detail"]


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_lists_are_scoped_by_role(client: httpx.Client, tokens: dict[str, str], wid: str, db_url: str) -> None:
    units = all_pages(client, "/api/v1/units", bearer(tokens[wid]), limit=1)
    facilities = all_pages(client, "/api/v1/facilities", bearer(tokens[wid]), limit=1)
    unit_ids, facility_ids = [u["id"] for u in units], [f["id"] for f in facilities]
    assert set(unit_ids) == in_scope(db_url, wid, UNITS_SQL) and len(set(unit_ids)) == len(unit_ids)
    assert set(facility_ids) == in_scope(db_url, wid, FACILITIES_SQL)
    assert unit_ids == sorted(unit_ids) and facility_ids == sorted(facility_ids)
    g1 = wid in ("w-001", "w-002") or wid in EVERYONE
    g2 = wid in ("w-003", "w-004") or wid in EVERYONE
    assert (set(unit_ids) >= G1_UNITS) is g1 and bool(G1_UNITS & set(unit_ids)) is g1
    assert (set(unit_ids) >= G2_UNITS) is g2 and bool(G2_UNITS & set(unit_ids)) is g2
    assert (set(facility_ids) >= G1_FACILITIES) is g1 and bool(G1_FACILITIES & set(facility_ids)) is g1
    assert (set(facility_ids) >= G2_FACILITIES) is g2 and bool(G2_FACILITIES & set(facility_ids)) is g2


def test_shapes(client: httpx.Client, tokens: dict[str, str]) -> None:
    units = {u["id"]: u for u in all_pages(client, "/api/v1/units", bearer(tokens["w-001"]))}
    assert units["u-001"] == {"id": "u-001", "name": "沙坡尾菜市场", "class": "key", "grid_id": "g-xg-01",
                              "building_id": "b-12", "contact": "李四", "phone": "13800000002",
                              "lat": 24.4461, "lon": 118.0873}
    assert units["u-002"]["building_id"] is None and units["u-002"]["lat"] is None
    facilities = {f["id"]: f for f in all_pages(client, "/api/v1/facilities", bearer(tokens["w-001"]))}
    assert facilities["f-001"] == {"id": "f-001", "kind": "extinguisher", "grid_id": "g-xg-01", "building_id": "b-12",
                                   "floor": 1, "place": "一楼楼梯口", "expires": "2027-06-30",
                                   "lat": 24.4461, "lon": 118.0873}


def test_one_unit_and_one_facility_with_their_location(client: httpx.Client, tokens: dict[str, str]) -> None:
    r = client.get("/api/v1/units/u-001", **as_(tokens, "w-001"))
    assert r.status_code == 200, r.text
    loc = r.json()["location"]
    assert loc["district"] == {"id": "siming", "name": "思明区"} and loc["street"]["id"] == "xiagang"
    assert loc["community"] == {"id": "shapowei", "name": "沙坡尾社区"}
    assert loc["grid"] == {"id": "g-xg-01", "name": "一网格"}
    assert loc["building"] == {"id": "b-12", "name": "12号楼", "floors": 7, "lat": 24.4461, "lon": 118.0873}
    r = client.get("/api/v1/units/u-002", **as_(tokens, "w-002"))
    assert r.status_code == 200 and r.json()["location"]["building"] is None
    r = client.get("/api/v1/facilities/f-201", **as_(tokens, "w-003"))
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["grid_id"] == "g-xg-02" and f["floor"] == -1 and f["expires"] is None
    assert f["location"]["building"] == {"id": "b-20", "name": "20号楼", "floors": 6, "lat": None, "lon": None}
    for wid in EVERYONE:
        assert client.get("/api/v1/units/u-201", **as_(tokens, wid)).status_code == 200
        assert client.get("/api/v1/facilities/f-001", **as_(tokens, wid)).status_code == 200


def test_another_grids_place_is_403_and_an_unknown_one_404(client: httpx.Client, tokens: dict[str, str]) -> None:
    """As for devices (api/README.md): outside the scope is a 403 naming the grid, not registered a 404."""
    for path, grid in (("/api/v1/units/u-201", "g-xg-02"), ("/api/v1/facilities/f-201", "g-xg-02")):
        r = client.get(path, **as_(tokens, "w-001"))
        assert r.status_code == 403 and grid in r.json()["detail"], r.text
    for path, grid in (("/api/v1/units/u-001", "g-xg-01"), ("/api/v1/facilities/f-002", "g-xg-01")):
        r = client.get(path, **as_(tokens, "w-004"))
        assert r.status_code == 403 and grid in r.json()["detail"], r.text
    for path in ("/api/v1/units/u-999", "/api/v1/facilities/f-999"):
        for wid in ("w-001", "a-001"):
            r = client.get(path, **as_(tokens, wid))
            assert r.status_code == 404 and "not registered" in r.json()["detail"], r.text


def test_unit_filters(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = bearer(tokens["b-001"])
    ids = lambda **q: {u["id"] for u in all_pages(client, "/api/v1/units", h, **q)}  # noqa: E731
    assert ids(grid="g-xg-02") >= G2_UNITS and not G1_UNITS & ids(grid="g-xg-02")
    assert "u-001" in ids(**{"class": "key"}) and not {"u-002", "u-201"} & ids(**{"class": "key"})
    assert {u["class"] for u in all_pages(client, "/api/v1/units", h, **{"class": "shop"})} == {"shop"}
    assert "u-201" in ids(**{"class": "major_hazard"})
    assert ids(building="b-12") >= {"u-001"} and "u-002" not in ids(building="b-12")
    assert ids(building="b-12", **{"class": "shop"}) & G1_UNITS == set()
    assert ids(building="nowhere") == set()
    r = client.get("/api/v1/units", params={"class": "school"}, headers=h)
    assert r.status_code == 422 and "class" in r.json()["detail"]
    r = client.get("/api/v1/units", params={"grid": "g-xg-02"}, **as_(tokens, "w-001"))
    assert r.status_code == 403 and "g-xg-02" in r.json()["detail"]
    # a building in another grid filters to nothing within the scope
    assert all_pages(client, "/api/v1/units", bearer(tokens["w-001"]), building="b-20") == []


def test_facility_filters(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = bearer(tokens["s-001"])
    ids = lambda **q: {f["id"] for f in all_pages(client, "/api/v1/facilities", h, **q)}  # noqa: E731
    assert "f-201" in ids(grid="g-xg-02") and not G1_FACILITIES & ids(grid="g-xg-02")
    assert "f-002" in ids(kind="hydrant") and not {"f-001", "f-201"} & ids(kind="hydrant")
    assert ids(building="b-12") >= G1_FACILITIES and "f-201" not in ids(building="b-12")
    # exclusive: expiring on 2027-06-30 is before 2027-07-01, not before 2027-06-30; no date, never listed
    assert "f-001" in ids(expires_before="2027-07-01") and "f-001" not in ids(expires_before="2027-06-30")
    assert not {"f-002", "f-201"} & ids(expires_before="2999-01-01")
    for bad in ({"kind": "sprinkler"}, {"expires_before": "soon"}, {"expires_before": "2027-02-30"}):
        r = client.get("/api/v1/facilities", params=bad, headers=h)
        assert r.status_code == 422 and next(iter(bad)) in r.json()["detail"], (bad, r.text)
    r = client.get("/api/v1/facilities", params={"grid": "g-xg-01"}, **as_(tokens, "w-003"))
    assert r.status_code == 403 and "g-xg-01" in r.json()["detail"]


def test_paging(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = bearer(tokens["a-001"])
    for path in ("/api/v1/units", "/api/v1/facilities"):
        first = client.get(path, params={"limit": 2}, headers=h).json()
        assert len(first["items"]) == 2 and first["next"], first
        second = client.get(path, params={"limit": 2, "cursor": first["next"]}, headers=h).json()
        assert second["items"] and first["items"][-1]["id"] < second["items"][0]["id"]
        everything = all_pages(client, path, h, limit=1)
        assert [x["id"] for x in everything] == sorted(x["id"] for x in everything)
        assert [x["id"] for x in first["items"] + second["items"]] == [x["id"] for x in everything][:4]
        for bad in ({"limit": 0}, {"cursor": "garbage!"}):
            assert client.get(path, params=bad, headers=h).status_code == 422
