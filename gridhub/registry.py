"""The registry file of CONTRACT §2: parse with line numbers, validate, upsert idempotently, export.

A worker leaves by `active: false` or, with `prune`, by no longer being in the file: in the import's transaction
they are deactivated (log-in and tokens refused at once: `current_user` checks `active`), their push
subscriptions deleted and their open tasks dispatched again (`gridhub.alerts.revoke`); a worker moved out of a grid
loses their tasks there the same way. Their broker account goes at the next credentials write (`gridhub.broker`
gives inactive workers none). A camera's `source` must be one the detectors may open (`check_camera_source`).

Places (CONTRACT §7): `units:` (in a grid, optionally in one of that grid's buildings), `facilities:` (in a building,
`expires` a date) and buildings' optional `lat`/`lon` (WGS-84 degrees, both or neither). Like devices they are upserted,
never deleted by an import; the export lists `units:` and `facilities:` only when there are any.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
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
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gridhub import envref
from gridhub.db import REGISTRY_CHANNEL
from gridhub.protocol import DEVICE_ID_PATTERN, DeviceKind

Id = Annotated[StrictStr, Field(pattern=rf"^{DEVICE_ID_PATTERN}$")]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Latitude = Annotated[StrictFloat, Field(ge=-90, le=90)]  # StrictFloat takes integers too (118 → 118.0), not "118"
Longitude = Annotated[StrictFloat, Field(ge=-180, le=180)]


class Building(_Strict):
    id: Id
    name: StrictStr
    floors: PositiveInt | None = None
    lat: Latitude | None = None  # WGS-84 degrees (CONTRACT §7), both or neither
    lon: Longitude | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> Building:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("a building's position needs both `lat` and `lon` (WGS-84 degrees), or neither")
        return self


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


class WorkerNotify(_Strict):
    """How a person is reached beyond `phone` (CONTRACT §6): a channel a person lacks is skipped."""

    wecom_userid: StrictStr | None = None
    dingtalk_mobile: StrictStr | None = None


class Worker(_Strict):
    id: Id
    name: StrictStr
    phone: StrictStr | None = None
    role: Role
    grids: list[Id] = []
    street: Id | None = None
    notify: WorkerNotify | None = None
    active: StrictBool = True  # false: dismissed; log-in, tokens, tasks, push and broker account taken away

    @model_validator(mode="after")
    def _scope(self) -> Worker:
        if self.role in ("grid_worker", "grid_head") and not self.grids:
            raise ValueError(f"a {self.role} needs `grids`: the grids they work in")
        if self.role == "street_officer" and not self.street:
            raise ValueError("a street_officer needs `street`: the street they oversee")
        return self


class CameraScene(BaseModel):
    """What the detector needs to know of a camera's picture (CONTRACT §3, with its defaults): the escape path
    and how long things must stay to block it. Defined once: the registry's `camera:` block (`CameraBlock`) and
    the detectors' camera config (`gridhub.detectors.config.CameraConfig`, this plus `camera_id`) extend it."""

    roi: list[tuple[Unit, Unit]] = Field(min_length=3, description="the escape path's polygon, normalised "
                                                                     "image coordinates 0..1, origin top-left")
    min_blocked_s: Annotated[StrictInt | StrictFloat, Field(gt=0)] = 60
    min_object_frac: Annotated[float, Field(gt=0, le=1)] = 0.01
    min_clear_s: Annotated[StrictInt | StrictFloat, Field(ge=0)] = 30
    reference: StrictStr | None = None


class CameraBlock(CameraScene):
    """A camera's `camera:` block in the registry (CONTRACT §2): its scene, and where its frames come from."""

    model_config = ConfigDict(extra="allow")

    source: StrictStr = "mqtt"
    interval_s: PositiveInt = 5


NETWORK_SCHEMES = ("rtsp", "rtsps", "http", "https")
MQTT_SOURCE = "mqtt"


class CameraSourceError(ValueError):
    """A camera source the detectors may not open; the message says why and what is allowed."""


def check_camera_source(source: str, files_dir: Path | None) -> str:
    """The camera `source` as the detectors open it, or CameraSourceError. Allowed: `mqtt` (frames over MQTT, the
    default), rtsp, rtsps, http and https URLs, and files (a path or file:///path) under `files_dir`
    (GRIDHUB_CAMERA_FILES_DIR; unset: no files); a relative path is taken under `files_dir` and a file is returned as
    its absolute resolved path (symbolic links followed). `${NAME}` may stand for any part but never for the hub's
    own settings (`GRIDHUB_…`); a source still holding references (at registry import) is checked as far as it can
    be, and again after expansion when the detector opens it."""
    bad = envref.protected_refs(source)
    if bad:
        raise CameraSourceError(f"${{{bad[0]}}}: the hub's own settings cannot be used in a camera source")
    if source == MQTT_SOURCE:
        return source
    has_refs = bool(envref.refs(source))
    allowed = f"use {', '.join(NETWORK_SCHEMES)}, {MQTT_SOURCE}, or a file under GRIDHUB_CAMERA_FILES_DIR"
    if "://" in source:
        scheme = source.split("://", 1)[0]
        if envref.refs(scheme):
            return source  # the whole URL from the environment: checked when the detector expands it
        scheme = scheme.lower()
        if scheme in NETWORK_SCHEMES:
            if not source.split("://", 1)[1].split("/", 1)[0]:
                raise CameraSourceError(f"{scheme} source without a host")
            return source
        if scheme != "file":
            raise CameraSourceError(f"scheme {scheme!r} is not allowed for a camera source: {allowed}")
        path_text = source.split("://", 1)[1]
        if path_text.startswith("localhost/"):
            path_text = path_text.removeprefix("localhost")
        if not path_text.startswith("/"):
            raise CameraSourceError("a file:// source needs an absolute path (file:///folder/video.mp4)")
    elif source.startswith("${") and has_refs:
        return source  # all of it from the environment: checked when the detector expands it
    else:
        path_text = source
    if files_dir is None:
        raise CameraSourceError(f"a camera source may not read a file ({source!r}): set GRIDHUB_CAMERA_FILES_DIR to"
                                " the folder camera files may be read from, or " + allowed.split(", or ")[0])
    if has_refs:
        return source
    base = files_dir.resolve()
    path = (base / path_text).resolve()
    if not path.is_relative_to(base):
        raise CameraSourceError(f"{source!r} is outside GRIDHUB_CAMERA_FILES_DIR ({base}): camera files are read"
                                " from that folder only")
    return str(path)


class Device(_Strict):
    id: Id
    kind: DeviceKind
    building: Id
    floor: StrictInt | None = None
    place: StrictStr | None = None
    heartbeat_s: PositiveInt | None = None
    retired: StrictBool = False
    camera: CameraBlock | None = None


UnitClass = Literal["key", "general", "shop", "major_hazard"]  # 重点单位, 一般单位, 个体经营户, 重大危险源
FacilityKind = Literal["hydrant", "extinguisher", "hose_reel", "emergency_light", "fire_door"]


class PlaceUnit(_Strict):
    """A place a grid patrols (CONTRACT §7 `units:`): in its grid, optionally in one of that grid's buildings."""

    id: Id
    name: StrictStr
    class_: UnitClass = Field(alias="class")
    grid: Id
    building: Id | None = None
    contact: StrictStr | None = None
    phone: StrictStr | None = None


class Facility(_Strict):
    """Fire equipment without a sensor (CONTRACT §7 `facilities:`), in a building; `expires` a calendar date."""

    id: Id
    kind: FacilityKind
    building: Id
    floor: StrictInt | None = None
    place: StrictStr | None = None
    expires: date | None = None

    @field_validator("expires", mode="before")
    @classmethod
    def _a_date(cls, value: Any) -> Any:
        # YAML gives `2027-06-30` as a date; a quoted "2027-06-30" is taken too. Not a time, not a number.
        if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
            return value
        if isinstance(value, str):
            try:
                if len(value) == 10 and value[4] == value[7] == "-":
                    return date.fromisoformat(value)
            except ValueError:
                pass
        raise ValueError(f"expires must be a date written YYYY-MM-DD, not {value!r}")


class RegistryFile(_Strict):
    districts: list[District] = []
    workers: list[Worker] = []
    devices: list[Device] = []
    units: list[PlaceUnit] = []
    facilities: list[Facility] = []


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
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        return yaml.SafeLoader("").construct_object(node, deep=True)
    except ValueError:  # a date-looking value that is no date (2027-02-30): its text, for the field to refuse
        return node.value


def parse(text: str, source: str = "<registry>", *, camera_files_dir: Path | None = None) -> RegistryFile:
    """Parse and validate a registry file; RegistryError names the line and the field of every problem.
    `camera_files_dir`: where camera sources may read files (GRIDHUB_CAMERA_FILES_DIR; None: nowhere)."""
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
        raise RegistryError(source, [(1, "(top)", "the registry must be a mapping with districts, workers, devices, units, facilities")])
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
    _check_references(reg, lines, source, camera_files_dir)
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


HUB_CLIENT_PREFIX = "gridhub-"  # Settings.client_id: gridhub-<part>-<instance>


def _check_references(reg: RegistryFile, lines: dict[tuple[Any, ...], int], source: str,
                      camera_files_dir: Path | None = None) -> None:
    problems: list[tuple[int | None, str, str]] = []
    seen: dict[str, set[str]] = {}

    def unique(kind: str, ident: str, path: tuple[Any, ...]) -> None:
        bucket = seen.setdefault(kind, set())
        if ident in bucket:
            # the field as the other messages name it: units[1](u-001).id
            where = ".".join(f"{name}[{i}]" for name, i in zip(path[::2], path[1::2], strict=True))
            problems.append((lines.get(path + ("id",)), f"{where}({ident}).id", f"duplicate {kind} id {ident!r}"))
        bucket.add(ident)

    streets: set[str] = set()
    grids: set[str] = set()
    buildings: dict[str, str] = {}  # building id -> its grid
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
                        buildings[b.id] = g.id
    def not_the_hubs(kind: str, ident: str, path: tuple[str, int]) -> None:
        # a broker account's user name is its client id on the device listeners: these are the hub's sessions
        if ident.lower().startswith(HUB_CLIENT_PREFIX):
            problems.append((lines.get(path + ("id",)), f"{path[0]}[{path[1]}]({ident}).id",
                             f"{kind} id {ident!r} starts with {HUB_CLIENT_PREFIX!r}, which names the hub's own MQTT"
                             " sessions: choose another id"))

    for wi, w in enumerate(reg.workers):
        unique("worker", w.id, ("workers", wi))
        not_the_hubs("worker", w.id, ("workers", wi))
        for gi, gid in enumerate(w.grids):
            if gid not in grids:
                problems.append((lines.get(("workers", wi, "grids", gi)), f"workers[{wi}]({w.id}).grids",
                                 f"grid {gid!r} is not defined under districts"))
        if w.street and w.street not in streets:
            problems.append((lines.get(("workers", wi, "street")), f"workers[{wi}]({w.id}).street",
                             f"street {w.street!r} is not defined under districts"))
    for xi, dev in enumerate(reg.devices):
        unique("device", dev.id, ("devices", xi))
        not_the_hubs("device", dev.id, ("devices", xi))
        if dev.building not in buildings:
            problems.append((lines.get(("devices", xi, "building")), f"devices[{xi}]({dev.id}).building",
                             f"building {dev.building!r} is not defined under districts"))
        if dev.camera is not None and dev.kind != DeviceKind.CAMERA:
            problems.append((lines.get(("devices", xi, "camera")), f"devices[{xi}]({dev.id}).camera",
                             f"only a camera has a camera block, this device is a {dev.kind.value}"))
        if dev.kind == DeviceKind.CAMERA and dev.camera is None:
            problems.append((lines.get(("devices", xi)), f"devices[{xi}]({dev.id}).camera",
                             "a camera needs a camera block with its roi"))
        if dev.camera is not None:
            try:
                check_camera_source(dev.camera.source, camera_files_dir)
            except CameraSourceError as exc:
                path = ("devices", xi, "camera", "source")
                problems.append((lines.get(path, lines.get(path[:-1])), f"devices[{xi}]({dev.id}).camera.source",
                                 str(exc)))
    for ui, u in enumerate(reg.units):
        unique("unit", u.id, ("units", ui))
        if u.grid not in grids:
            problems.append((lines.get(("units", ui, "grid")), f"units[{ui}]({u.id}).grid",
                             f"grid {u.grid!r} is not defined under districts"))
        if u.building is not None:
            where = buildings.get(u.building)
            if where is None:
                problems.append((lines.get(("units", ui, "building")), f"units[{ui}]({u.id}).building",
                                 f"building {u.building!r} is not defined under districts"))
            elif where != u.grid and u.grid in grids:
                problems.append((lines.get(("units", ui, "building")), f"units[{ui}]({u.id}).building",
                                 f"building {u.building!r} is in grid {where!r}, not in the unit's grid {u.grid!r}"))
    for fi, fac in enumerate(reg.facilities):
        unique("facility", fac.id, ("facilities", fi))
        if fac.building not in buildings:
            problems.append((lines.get(("facilities", fi, "building")), f"facilities[{fi}]({fac.id}).building",
                             f"building {fac.building!r} is not defined under districts"))
    if problems:
        raise RegistryError(source, problems)


def load_file(path: Path, *, camera_files_dir: Path | None = None) -> RegistryFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(str(path), [(None, "(file)", f"cannot read: {exc.strerror}")]) from exc
    return parse(text, str(path), camera_files_dir=camera_files_dir)


# ---------------------------------------------------------------- database

@dataclass(frozen=True)
class _Table:
    """How one registry table is upserted: its columns, the first being the key ``id``."""

    name: str
    columns: tuple[str, ...]
    extra_set: str = ""  # more of the SET clause after the plain column copies

    @cached_property
    def sql(self) -> str:
        cols = ", ".join(self.columns)
        marks = ", ".join(["%s"] * len(self.columns))
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in self.columns[1:]) + self.extra_set
        return f"INSERT INTO {self.name} ({cols}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {sets}"


_DEVICE_FIELDS = ("kind", "building_id", "floor", "place", "heartbeat_s", "camera", "retired")
_DISTRICTS = _Table("districts", ("id", "name"))
_STREETS = _Table("streets", ("id", "district_id", "name"))
_COMMUNITIES = _Table("communities", ("id", "street_id", "name"))
_GRIDS = _Table("grids", ("id", "community_id", "name"))
_BUILDINGS = _Table("buildings", ("id", "grid_id", "name", "floors", "lat", "lon"))
_WORKERS = _Table("workers", ("id", "name", "phone", "role", "street_id", "wecom_userid", "dingtalk_mobile",
                              "active"))
_DEVICES = _Table(
    "devices",
    ("id", *_DEVICE_FIELDS),
    # updated_at moves only when something changed
    ", updated_at = CASE WHEN ({old}) IS NOT DISTINCT FROM ({new}) THEN devices.updated_at ELSE now() END".format(
        old=", ".join(f"devices.{c}" for c in _DEVICE_FIELDS), new=", ".join(f"EXCLUDED.{c}" for c in _DEVICE_FIELDS)
    ),
)
_UNITS = _Table("units", ("id", "name", "class", "grid_id", "building_id", "contact", "phone"))
_FACILITIES = _Table("facilities", ("id", "kind", "building_id", "floor", "place", "expires"))
_TABLES = (_DISTRICTS, _STREETS, _COMMUNITIES, _GRIDS, _BUILDINGS, _WORKERS, _DEVICES, _UNITS, _FACILITIES)

_Follow = list[tuple[str, tuple[Any, ...]]]  # statements that go with a row (its link rows)


def _rows(reg: RegistryFile) -> Iterator[tuple[_Table, tuple[Any, ...], _Follow]]:
    """Every row to upsert, parents before children: its table, its values in the table's column order,
    and the statements that follow it."""
    for d in reg.districts:
        yield _DISTRICTS, (d.id, d.name), []
        for s in d.streets:
            yield _STREETS, (s.id, d.id, s.name), []
            for c in s.communities:
                yield _COMMUNITIES, (c.id, s.id, c.name), []
                for g in c.grids:
                    yield _GRIDS, (g.id, c.id, g.name), []
                    for b in g.buildings:
                        yield _BUILDINGS, (b.id, g.id, b.name, b.floors, b.lat, b.lon), []
    for w in reg.workers:
        notify = w.notify or WorkerNotify()
        yield _WORKERS, (w.id, w.name, w.phone, w.role, w.street, notify.wecom_userid, notify.dingtalk_mobile,
                         w.active), [
            ("DELETE FROM worker_grids WHERE worker_id = %s AND NOT (grid_id = ANY(%s))", (w.id, w.grids)),
            *(("INSERT INTO worker_grids (worker_id, grid_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", (w.id, gid))
              for gid in w.grids),
        ]
    for dev in reg.devices:
        camera = dev.camera.model_dump(mode="json", exclude_none=True) if dev.camera else None
        yield _DEVICES, (dev.id, dev.kind.value, dev.building, dev.floor, dev.place, dev.heartbeat_s,
                         Jsonb(camera) if camera is not None else None, dev.retired), [
            ("INSERT INTO device_state (device_id) VALUES (%s) ON CONFLICT DO NOTHING", (dev.id,)),
        ]
    for u in reg.units:
        yield _UNITS, (u.id, u.name, u.class_, u.grid, u.building, u.contact, u.phone), []
    for fac in reg.facilities:
        yield _FACILITIES, (fac.id, fac.kind, fac.building, fac.floor, fac.place, fac.expires), []


# the grids each worker is responsible for: a grid worker's or head's own, a street officer's street's
_SCOPE_SQL = """
SELECT wg.worker_id, wg.grid_id FROM worker_grids wg JOIN workers w ON w.id = wg.worker_id
 WHERE w.active AND w.role IN ('grid_worker', 'grid_head')
UNION
SELECT w.id, g.id FROM workers w JOIN communities c ON c.street_id = w.street_id JOIN grids g ON g.community_id = c.id
 WHERE w.active AND w.role = 'street_officer'
"""

# (unit of work-less) hook: conn, worker id, now, grids or None for all their tasks -> tasks moved
Revoker = Callable[[psycopg.Connection[Any], str, datetime, "list[str] | None"], int]


def _default_revoker(conn: psycopg.Connection[Any], worker_id: str, now: datetime, grids: list[str] | None) -> int:
    """Their open tasks dispatched again by the alerts room (`gridhub.alerts.revoke`, loaded when a worker loses
    access: the one place the core reaches into a room, so that no import can leave tasks with someone gone)."""
    changes = importlib.import_module("gridhub.alerts.changes")
    revoke = importlib.import_module("gridhub.alerts.revoke")
    with changes.UnitOfWork(conn) as uow:
        return len(revoke.reassign_from(uow, worker_id, now, grids=grids))


@dataclass
class ImportResult:
    """What an import did: rows upserted by table, workers deactivated, (worker, grid) scopes lost, tasks moved."""

    counts: dict[str, int]
    deactivated: list[str] = field(default_factory=list)
    left_grids: dict[str, list[str]] = field(default_factory=dict)
    tasks_reassigned: int = 0


def apply_registry(conn: psycopg.Connection[Any], reg: RegistryFile, *, prune: bool = False,
                   actor: str = "system", address: str | None = None, source: str | None = None,
                   now: datetime | None = None, revoke: Revoker | None = None) -> ImportResult:
    """Upsert the registry in one transaction; the same file twice changes nothing. With `prune`, the active
    workers the file does not list are deactivated. Every worker who becomes inactive, and every worker who is no
    longer responsible for a grid, loses their open tasks (there) in the same transaction; the deactivated also
    their push subscriptions. Audit rows `registry.import` and `worker.deactivated` (by `actor` from `address`).

    Parents referenced but absent from the file (a file of devices only, say) must already exist in the
    database, or the foreign keys refuse the import with the missing id named.
    """
    from gridhub.audit import record

    now = now or datetime.now(UTC)
    revoke = revoke or _default_revoker
    result = ImportResult({t.name: 0 for t in _TABLES})
    with conn.transaction():
        was_active = {r[0] for r in conn.execute("SELECT id FROM workers WHERE active")}
        scope_before = set(conn.execute(_SCOPE_SQL).fetchall())
        for table, row, follow in _rows(reg):
            conn.execute(table.sql, row)
            for sql, params in follow:
                conn.execute(sql, params)
            result.counts[table.name] += 1
        if prune:
            listed = [w.id for w in reg.workers]
            conn.execute("UPDATE workers SET active = false WHERE active AND NOT (id = ANY(%s))", (listed,))
        now_active = {r[0] for r in conn.execute("SELECT id FROM workers WHERE active")}
        result.deactivated = sorted(was_active - now_active)
        lost: dict[str, list[str]] = {}
        for wid, gid in sorted(scope_before - set(conn.execute(_SCOPE_SQL).fetchall())):
            if wid in now_active:
                lost.setdefault(wid, []).append(gid)
        result.left_grids = lost
        for wid in result.deactivated:
            subs = conn.execute("DELETE FROM push_subscriptions WHERE worker_id = %s", (wid,)).rowcount
            moved = revoke(conn, wid, now, None)
            result.tasks_reassigned += moved
            record(conn, actor, "worker.deactivated", target=wid, address=address,
                   detail={"by": "prune" if prune and wid not in {w.id for w in reg.workers} else "active: false",
                           "tasks_reassigned": moved, "push_subscriptions_deleted": subs})
        for wid, grids in lost.items():
            result.tasks_reassigned += revoke(conn, wid, now, grids)
        record(conn, actor, "registry.import", target=source, address=address,
               detail={"counts": result.counts, "prune": prune, "deactivated": result.deactivated,
                       "left_grids": lost, "tasks_reassigned": result.tasks_reassigned})
        from gridhub.alerts.patrols import sync_plans

        sync_plans(conn, now)  # new units get their patrol plan timer, facilities their expiry timer
        conn.execute("SELECT pg_notify(%s, 'changed')", (REGISTRY_CHANNEL,))
    return result


def import_registry(conn: psycopg.Connection[Any], reg: RegistryFile, *, prune: bool = False) -> dict[str, int]:
    """`apply_registry`'s rows upserted by table."""
    return apply_registry(conn, reg, prune=prune).counts


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
                    for bid, bname, floors, lat, lon in q(
                        "SELECT id, name, floors, lat, lon FROM buildings WHERE grid_id = %s ORDER BY id", (gid,)
                    ).fetchall():
                        b: dict[str, Any] = {"id": bid, "name": bname}
                        if floors is not None:
                            b["floors"] = floors
                        if lat is not None:
                            b["lat"], b["lon"] = lat, lon
                        blds.append(b)
                    grids.append({"id": gid, "name": gname, "buildings": blds})
                comms.append({"id": cid, "name": cname, "grids": grids})
            streets.append({"id": sid, "name": sname, "communities": comms})
        districts.append({"id": did, "name": dname, "streets": streets})
    workers = []
    for wid, name, phone, role, street, wecom_userid, dingtalk_mobile, active in q(
        "SELECT id, name, phone, role, street_id, wecom_userid, dingtalk_mobile, active FROM workers ORDER BY id"
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
        notify = {k: v for k, v in (("wecom_userid", wecom_userid), ("dingtalk_mobile", dingtalk_mobile)) if v}
        if notify:
            w["notify"] = notify
        if not active:
            w["active"] = False
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
    units = []
    for uid, uname, uclass, grid, bld, contact, phone in q(
        "SELECT id, name, class, grid_id, building_id, contact, phone FROM units ORDER BY id"
    ).fetchall():
        u: dict[str, Any] = {"id": uid, "name": uname, "class": uclass, "grid": grid}
        for key, value in (("building", bld), ("contact", contact), ("phone", phone)):
            if value is not None:
                u[key] = value
        units.append(u)
    facilities = []
    for fid, kind, bld, floor, place, expires in q(
        "SELECT id, kind, building_id, floor, place, expires FROM facilities ORDER BY id"
    ).fetchall():
        f: dict[str, Any] = {"id": fid, "kind": kind, "building": bld}
        for key, value in (("floor", floor), ("place", place), ("expires", expires)):
            if value is not None:
                f[key] = value
        facilities.append(f)
    out: dict[str, Any] = {"districts": districts, "workers": workers, "devices": devices}
    if units:
        out["units"] = units
    if facilities:
        out["facilities"] = facilities
    return out


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=None, width=100)
