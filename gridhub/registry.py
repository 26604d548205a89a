"""The registry file of CONTRACT §2: parse with line numbers, validate, upsert idempotently, export."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
import yaml
from psycopg.types.json import Jsonb
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from gridhub.protocol import DeviceKind

Id = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Building(_Strict):
    id: Id
    name: StrictStr
    floors: PositiveInt | None = None


class Grid(_Strict):
    id: Id
    name: StrictStr
    buildings: list[Building] = []


class Community(_Strict):
    id: Id
    name: StrictStr
    grids: list[Grid] = []


class Street(_Strict):
    id: Id
    name: StrictStr
    communities: list[Community] = []


class District(_Strict):
    id: Id
    name: StrictStr
    streets: list[Street] = []


Role = Literal["grid_worker", "grid_head", "street_officer", "bureau", "admin"]


class Worker(_Strict):
    id: Id
    name: StrictStr
    phone: StrictStr | None = None
    role: Role
    grids: list[Id] = []
    street: Id | None = None

    @model_validator(mode="after")
    def _scope(self) -> Worker:
        if self.role in ("grid_worker", "grid_head") and not self.grids:
            raise ValueError(f"a {self.role} needs `grids`: the grids they work in")
        if self.role == "street_officer" and not self.street:
            raise ValueError("a street_officer needs `street`: the street they oversee")
        return self


class CameraBlock(BaseModel):
    model_config = ConfigDict(extra="allow")

    roi: list[tuple[Unit, Unit]] = Field(min_length=3)
    min_blocked_s: PositiveInt = 60
    source: StrictStr = "mqtt"
    interval_s: PositiveInt = 5
    min_object_frac: Annotated[float, Field(gt=0, le=1)] | None = None
    min_clear_s: PositiveInt | None = None
    reference: StrictStr | None = None


class Device(_Strict):
    id: Id
    kind: DeviceKind
    building: Id
    floor: StrictInt | None = None
    place: StrictStr | None = None
    heartbeat_s: PositiveInt | None = None
    retired: StrictBool = False
    camera: CameraBlock | None = None


class RegistryFile(_Strict):
    districts: list[District] = []
    workers: list[Worker] = []
    devices: list[Device] = []


class RegistryError(ValueError):
    """A registry file problem; `problems` are (line, field path, message)."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]]):
        self.problems = problems
        lines = [f"{source}:{ln if ln else '?'}: {field}: {msg}" for ln, field, msg in problems]
        super().__init__("invalid registry:\n" + "\n".join(lines))


# ---------------------------------------------------------------- parsing with line numbers

def _construct(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            key = yaml.safe_load(yaml.serialize(k)) if not isinstance(k, yaml.ScalarNode) else _scalar(k)
            lines[path + (key,)] = k.start_mark.line + 1
            out[key] = _construct(v, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, path + (i,), lines) for i, v in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_object(node, deep=True) if isinstance(node, yaml.ScalarNode) else None


def parse(text: str, source: str = "<registry>") -> RegistryFile:
    """Parse and validate a registry file; RegistryError names the line and the field of every problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RegistryError(source, [(mark.line + 1 if mark else None, "(syntax)", str(exc).replace("\n", " "))]) from exc
    if node is None:
        return RegistryFile()
    lines: dict[tuple[Any, ...], int] = {}
    data = _construct(node, (), lines)
    if not isinstance(data, dict):
        raise RegistryError(source, [(1, "(top)", "the registry must be a mapping with districts, workers, devices")])
    try:
        reg = RegistryFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("tuple", "int", "float")))
            line = None
            for cut in range(len(loc), -1, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
            problems.append((line, _field_path(loc, data), err["msg"]))
        raise RegistryError(source, problems) from None
    _check_references(reg, lines, source)
    return reg


def _field_path(loc: Iterable[Any], data: Any) -> str:
    parts: list[str] = []
    cur = data
    for p in loc:
        if isinstance(p, int):
            ident = cur[p].get("id") if isinstance(cur, list) and p < len(cur) and isinstance(cur[p], dict) else None
            parts[-1:] = [f"{parts[-1]}[{p}]" + (f"({ident})" if ident else "")] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            cur = None
    return ".".join(parts) or "(top)"


def _check_references(reg: RegistryFile, lines: dict[tuple[Any, ...], int], source: str) -> None:
    problems: list[tuple[int | None, str, str]] = []
    seen: dict[str, set[str]] = {}

    def unique(kind: str, ident: str, path: tuple[Any, ...]) -> None:
        bucket = seen.setdefault(kind, set())
        if ident in bucket:
            problems.append((lines.get(path + ("id",)), ".".join(map(str, path)) + ".id", f"duplicate {kind} id {ident!r}"))
        bucket.add(ident)

    streets: set[str] = set()
    grids: set[str] = set()
    buildings: set[str] = set()
    for di, d in enumerate(reg.districts):
        unique("district", d.id, ("districts", di))
        for si, s in enumerate(d.streets):
            p = ("districts", di, "streets", si)
            unique("street", s.id, p)
            streets.add(s.id)
            for ci, c in enumerate(s.communities):
                pc = p + ("communities", ci)
                unique("community", c.id, pc)
                for gi, g in enumerate(c.grids):
                    pg = pc + ("grids", gi)
                    unique("grid", g.id, pg)
                    grids.add(g.id)
                    for bi, b in enumerate(g.buildings):
                        unique("building", b.id, pg + ("buildings", bi))
                        buildings.add(b.id)
    for wi, w in enumerate(reg.workers):
        unique("worker", w.id, ("workers", wi))
        for gi, gid in enumerate(w.grids):
            if gid not in grids:
                problems.append((lines.get(("workers", wi, "grids", gi)), f"workers[{wi}]({w.id}).grids",
                                 f"grid {gid!r} is not defined under districts"))
        if w.street and w.street not in streets:
            problems.append((lines.get(("workers", wi, "street")), f"workers[{wi}]({w.id}).street",
                             f"street {w.street!r} is not defined under districts"))
    for xi, dev in enumerate(reg.devices):
        unique("device", dev.id, ("devices", xi))
        if dev.building not in buildings:
            problems.append((lines.get(("devices", xi, "building")), f"devices[{xi}]({dev.id}).building",
                             f"building {dev.building!r} is not defined under districts"))
        if dev.camera is not None and dev.kind != DeviceKind.CAMERA:
            problems.append((lines.get(("devices", xi, "camera")), f"devices[{xi}]({dev.id}).camera",
                             f"only a camera has a camera block, this device is a {dev.kind.value}"))
        if dev.kind == DeviceKind.CAMERA and dev.camera is None:
            problems.append((lines.get(("devices", xi)), f"devices[{xi}]({dev.id}).camera",
                             "a camera needs a camera block with its roi"))
    if problems:
        raise RegistryError(source, problems)


def load_file(path: Path) -> RegistryFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(str(path), [(None, "(file)", f"cannot read: {exc.strerror}")]) from exc
    return parse(text, str(path))


# ---------------------------------------------------------------- database

def import_registry(conn: psycopg.Connection[Any], reg: RegistryFile, *, partial: bool = False) -> dict[str, int]:
    """Upsert the registry in one transaction; the same file twice changes nothing.

    Parents referenced but absent from the file (a file of devices only, say) must already exist in the
    database, or the foreign keys refuse the import with the missing id named.
    """
    counts = {"districts": 0, "streets": 0, "communities": 0, "grids": 0, "buildings": 0, "workers": 0, "devices": 0}
    with conn.transaction():
        for d in reg.districts:
            conn.execute(
                "INSERT INTO districts (id, name) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
                (d.id, d.name),
            )
            counts["districts"] += 1
            for s in d.streets:
                conn.execute(
                    "INSERT INTO streets (id, district_id, name) VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
                    " SET district_id = EXCLUDED.district_id, name = EXCLUDED.name",
                    (s.id, d.id, s.name),
                )
                counts["streets"] += 1
                for c in s.communities:
                    conn.execute(
                        "INSERT INTO communities (id, street_id, name) VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
                        " SET street_id = EXCLUDED.street_id, name = EXCLUDED.name",
                        (c.id, s.id, c.name),
                    )
                    counts["communities"] += 1
                    for g in c.grids:
                        conn.execute(
                            "INSERT INTO grids (id, community_id, name) VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE"
                            " SET community_id = EXCLUDED.community_id, name = EXCLUDED.name",
                            (g.id, c.id, g.name),
                        )
                        counts["grids"] += 1
                        for b in g.buildings:
                            conn.execute(
                                "INSERT INTO buildings (id, grid_id, name, floors) VALUES (%s, %s, %s, %s)"
                                " ON CONFLICT (id) DO UPDATE SET grid_id = EXCLUDED.grid_id, name = EXCLUDED.name,"
                                " floors = EXCLUDED.floors",
                                (b.id, g.id, b.name, b.floors),
                            )
                            counts["buildings"] += 1
        for w in reg.workers:
            conn.execute(
                "INSERT INTO workers (id, name, phone, role, street_id) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, phone = EXCLUDED.phone,"
                " role = EXCLUDED.role, street_id = EXCLUDED.street_id",
                (w.id, w.name, w.phone, w.role, w.street),
            )
            conn.execute("DELETE FROM worker_grids WHERE worker_id = %s AND NOT (grid_id = ANY(%s))", (w.id, w.grids))
            for gid in w.grids:
                conn.execute(
                    "INSERT INTO worker_grids (worker_id, grid_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", (w.id, gid)
                )
            counts["workers"] += 1
        for dev in reg.devices:
            camera = dev.camera.model_dump(mode="json", exclude_none=True) if dev.camera else None
            conn.execute(
                "INSERT INTO devices (id, kind, building_id, floor, place, heartbeat_s, camera, retired)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, building_id = EXCLUDED.building_id,"
                " floor = EXCLUDED.floor, place = EXCLUDED.place, heartbeat_s = EXCLUDED.heartbeat_s,"
                " camera = EXCLUDED.camera, retired = EXCLUDED.retired,"
                " updated_at = CASE WHEN (devices.kind, devices.building_id, devices.floor, devices.place,"
                "   devices.heartbeat_s, devices.camera, devices.retired) IS NOT DISTINCT FROM"
                "   (EXCLUDED.kind, EXCLUDED.building_id, EXCLUDED.floor, EXCLUDED.place, EXCLUDED.heartbeat_s,"
                "    EXCLUDED.camera, EXCLUDED.retired) THEN devices.updated_at ELSE now() END",
                (dev.id, dev.kind.value, dev.building, dev.floor, dev.place, dev.heartbeat_s,
                 Jsonb(camera) if camera is not None else None, dev.retired),
            )
            conn.execute("INSERT INTO device_state (device_id) VALUES (%s) ON CONFLICT DO NOTHING", (dev.id,))
            counts["devices"] += 1
        conn.execute("SELECT pg_notify('gridhub_registry', 'changed')")
    return counts


def export_registry(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The registry as the YAML structure of CONTRACT §2 (`${NAME}` in camera sources kept as written)."""
    q = conn.execute
    districts = []
    for did, dname in q("SELECT id, name FROM districts ORDER BY id").fetchall():
        streets = []
        for sid, sname in q("SELECT id, name FROM streets WHERE district_id = %s ORDER BY id", (did,)).fetchall():
            comms = []
            for cid, cname in q("SELECT id, name FROM communities WHERE street_id = %s ORDER BY id", (sid,)).fetchall():
                grids = []
                for gid, gname in q("SELECT id, name FROM grids WHERE community_id = %s ORDER BY id", (cid,)).fetchall():
                    blds = []
                    for bid, bname, floors in q(
                        "SELECT id, name, floors FROM buildings WHERE grid_id = %s ORDER BY id", (gid,)
                    ).fetchall():
                        b: dict[str, Any] = {"id": bid, "name": bname}
                        if floors is not None:
                            b["floors"] = floors
                        blds.append(b)
                    grids.append({"id": gid, "name": gname, "buildings": blds})
                comms.append({"id": cid, "name": cname, "grids": grids})
            streets.append({"id": sid, "name": sname, "communities": comms})
        districts.append({"id": did, "name": dname, "streets": streets})
    workers = []
    for wid, name, phone, role, street in q(
        "SELECT id, name, phone, role, street_id FROM workers ORDER BY id"
    ).fetchall():
        w: dict[str, Any] = {"id": wid, "name": name}
        if phone is not None:
            w["phone"] = phone
        w["role"] = role
        grids = [r[0] for r in q("SELECT grid_id FROM worker_grids WHERE worker_id = %s ORDER BY grid_id", (wid,))]
        if grids:
            w["grids"] = grids
        if street:
            w["street"] = street
        workers.append(w)
    devices = []
    for did, kind, bld, floor, place, hb, camera, retired in q(
        "SELECT id, kind, building_id, floor, place, heartbeat_s, camera, retired FROM devices ORDER BY id"
    ).fetchall():
        d: dict[str, Any] = {"id": did, "kind": kind, "building": bld}
        if floor is not None:
            d["floor"] = floor
        if place is not None:
            d["place"] = place
        if hb is not None:
            d["heartbeat_s"] = hb
        if camera is not None:
            d["camera"] = camera
        if retired:
            d["retired"] = True
        devices.append(d)
    return {"districts": districts, "workers": workers, "devices": devices}


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=None, width=100)
