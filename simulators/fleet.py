"""The virtual devices a simulator can play, read from a registry file, and how each logs in to the broker."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gridhub.accounts import device_password
from gridhub.protocol import DEFAULT_HEARTBEAT_S, DEVICE_ID_PATTERN, DEVICE_ID_RE, DeviceKind
from gridhub.settings import Settings


class FleetError(ValueError):
    """A registry, credentials or broker setting the simulators cannot use; the message says the fix."""


@dataclass(frozen=True)
class DeviceSpec:
    """One registered device as the simulators see it."""

    id: str
    kind: DeviceKind
    building: str
    floor: int | None = None
    place: str | None = None
    heartbeat_s: int = 0
    retired: bool = False
    camera: dict[str, Any] | None = None

    @property
    def interval_s(self) -> int:
        """How often the device reports: its registry heartbeat, else the kind's default."""
        return self.heartbeat_s or DEFAULT_HEARTBEAT_S[self.kind]


@dataclass
class Fleet:
    """The devices of a registry, with the building → grid map."""

    devices: list[DeviceSpec]
    building_grid: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> list[DeviceSpec]:
        return [d for d in self.devices if not d.retired]

    def get(self, device_id: str) -> DeviceSpec:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise FleetError(f"device {device_id} is not in the registry file")

    def buildings(self) -> list[str]:
        return sorted({d.building for d in self.active})

    def in_building(self, building: str, kind: DeviceKind | None = None) -> list[DeviceSpec]:
        found = [d for d in self.active if d.building == building and (kind is None or d.kind == kind)]
        return sorted(found, key=lambda d: (d.floor if d.floor is not None else 0, d.id))


def fleet_from_registry(data: dict[str, Any], source: str = "<registry>") -> Fleet:
    """A Fleet from a parsed registry document (CONTRACT §2)."""
    if not isinstance(data, dict):
        raise FleetError(f"{source}: a registry file is a mapping with `districts`, `workers`, `devices`")
    building_grid: dict[str, str] = {}
    for district in data.get("districts") or []:
        for street in district.get("streets") or []:
            for community in street.get("communities") or []:
                for grid in community.get("grids") or []:
                    for b in grid.get("buildings") or []:
                        building_grid[str(b["id"])] = str(grid["id"])
    devices: list[DeviceSpec] = []
    for i, raw in enumerate(data.get("devices") or []):
        try:
            kind = DeviceKind(raw["kind"])
            dev = DeviceSpec(
                id=str(raw["id"]), kind=kind, building=str(raw["building"]),
                floor=raw.get("floor"), place=raw.get("place"), heartbeat_s=int(raw.get("heartbeat_s") or 0),
                retired=bool(raw.get("retired", False)), camera=raw.get("camera"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise FleetError(f"{source}: devices[{i}] is not a valid device entry ({exc!r})") from exc
        if not DEVICE_ID_RE.fullmatch(dev.id):
            raise FleetError(f"{source}: device id {dev.id!r} breaks the pattern {DEVICE_ID_PATTERN}")
        devices.append(dev)
    return Fleet(devices=sorted(devices, key=lambda d: d.id), building_grid=building_grid)


def load_fleet(path: Path) -> Fleet:
    """The devices of a registry YAML file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(f"cannot read the registry file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FleetError(f"{path} is not YAML: {exc}") from exc
    return fleet_from_registry(data, str(path))


def demo_district_path() -> Path:
    """The demo district shipped with gridhub (package data `gridhub/demo/district.yaml`)."""
    from importlib.resources import files

    return Path(str(files("gridhub") / "demo" / "district.yaml"))


# ------------------------------------------------------------------ broker accounts


def read_credentials(path: Path) -> dict[str, str]:
    """Device id → password from the CSV `gridhub devices credentials` writes (kind,id,username,password)."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise FleetError(f"cannot read the credentials file {path}: {exc}; write it with "
                         "`gridhub devices credentials`") from exc
    out: dict[str, str] = {}
    for row in rows:
        if not {"kind", "id", "username", "password"} <= set(row):
            raise FleetError(f"{path} is not a credentials file: it needs the columns kind,id,username,password")
        if row["kind"] == "device":
            out[row["id"]] = row["password"]
    return out


class DeviceAccounts:
    """Each device's own broker account: from a credentials CSV, or derived from the hub's secret."""

    def __init__(self, *, secret: str | None = None, table: dict[str, str] | None = None):
        if secret is None and table is None:
            raise FleetError("device accounts need --credentials CSV or --secret")
        self._secret = secret
        self._table = table

    def password(self, device_id: str) -> str:
        if self._table is not None:
            try:
                return self._table[device_id]
            except KeyError:
                raise FleetError(f"device {device_id} has no account in the credentials file: run "
                                 "`gridhub devices credentials` after importing the registry") from None
        assert self._secret is not None
        return device_password(self._secret, device_id)


def default_accounts(credentials: str | None, secret: str | None) -> DeviceAccounts | None:
    """Accounts from the options, else from the data directory's `broker/device-credentials.csv` (what
    `gridhub devices credentials` wrote: the passwords the broker has, whichever key each device was given), else
    derived from $GRIDHUB_SECRET_KEY or the data directory's `secret_key` (right for devices on the current key
    only); None when none is found."""
    if credentials:
        return DeviceAccounts(table=read_credentials(Path(credentials)))
    if secret:
        return DeviceAccounts(secret=secret)
    settings = Settings()
    data_dir = settings.data_dir
    csv_path = data_dir / "broker" / "device-credentials.csv"
    if csv_path.exists():
        return DeviceAccounts(table=read_credentials(csv_path))
    if settings.secret_key:
        return DeviceAccounts(secret=settings.secret_key)
    key = data_dir / "secret_key"
    if key.exists():
        return DeviceAccounts(secret=key.read_text().strip())
    return None


def default_broker_url(url: str | None) -> str:
    found = url or Settings().mqtt_url
    if not found:
        raise FleetError("no broker: pass --broker mqtt://user:pass@host:port or set GRIDHUB_MQTT_URL "
                         "(`gridhub services env` prints the local one)")
    return found


def default_prefix(prefix: str | None) -> str:
    return (prefix or Settings().topic_prefix).strip("/")
