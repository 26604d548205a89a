"""The device protocol of CONTRACT §1: topics, payload models, kinds, metric ranges and event types.

Shared by the hub and by the simulators (which import nothing else of the hub).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from gridhub.settings import DEFAULT_TOPIC_PREFIX

# A device id (CONTRACT §1), also the pattern of every registry id (§2); the one definition, imported elsewhere.
DEVICE_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
DEVICE_ID_RE = re.compile(rf"^{DEVICE_ID_PATTERN}$")
METRIC_NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
METRIC_NAME_RE = re.compile(METRIC_NAME_PATTERN)
MAX_PAYLOAD = 64 * 1024
MAX_FRAME = 2 * 1024 * 1024
MAX_FUTURE_MS = 5 * 60 * 1000


class DeviceKind(StrEnum):
    SMOKE_ALARM = "smoke_alarm"
    STAIRWELL_LIGHT = "stairwell_light"
    SPRINKLER_PRESSURE = "sprinkler_pressure"
    CAMERA = "camera"


class Reason(StrEnum):
    """Quarantine reason codes, in the order of precedence of CONTRACT §1."""

    BAD_TOPIC = "bad_topic"
    OVERSIZE = "oversize"
    INVALID_JSON = "invalid_json"
    SCHEMA = "schema"
    UNREGISTERED_DEVICE = "unregistered_device"
    UNKNOWN_EVENT = "unknown_event"
    OUT_OF_RANGE = "out_of_range"
    CLOCK_SKEW = "clock_skew"
    BAD_FRAME = "bad_frame"


@dataclass(frozen=True)
class MetricSpec:
    kind: Literal["number", "bool"]
    low: float | None = None
    high: float | None = None


METRICS: dict[DeviceKind, dict[str, MetricSpec]] = {
    DeviceKind.SMOKE_ALARM: {
        "battery_pct": MetricSpec("number", 0, 100),
        "smoke_db_m": MetricSpec("number", 0, None),
        "temperature_c": MetricSpec("number", -40, 125),
        "rssi_dbm": MetricSpec("number", -150, 0),
    },
    DeviceKind.STAIRWELL_LIGHT: {
        "lamp_on": MetricSpec("bool"),
        "lux": MetricSpec("number", 0, 200000),
        "power_w": MetricSpec("number", 0, 2000),
    },
    DeviceKind.SPRINKLER_PRESSURE: {
        "pressure_mpa": MetricSpec("number", 0, 5),
    },
    DeviceKind.CAMERA: {},
}

EVENTS: dict[DeviceKind, frozenset[str]] = {
    DeviceKind.SMOKE_ALARM: frozenset(
        {"alarm", "alarm_cleared", "fault", "fault_cleared", "low_battery", "tamper", "tamper_cleared",
         "self_test", "heartbeat"}
    ),
    DeviceKind.STAIRWELL_LIGHT: frozenset({"lamp_fault", "lamp_fault_cleared", "heartbeat"}),
    DeviceKind.SPRINKLER_PRESSURE: frozenset({"fault", "fault_cleared", "heartbeat"}),
    DeviceKind.CAMERA: frozenset(
        {"video_loss", "video_restored", "tamper", "tamper_cleared", "heartbeat", "exit_blocked", "exit_cleared",
         "camera_obstructed", "camera_obstructed_cleared"}
    ),
}

DEFAULT_HEARTBEAT_S: dict[DeviceKind, int] = {
    DeviceKind.SMOKE_ALARM: 3600,
    DeviceKind.STAIRWELL_LIGHT: 300,
    DeviceKind.SPRINKLER_PRESSURE: 300,
    DeviceKind.CAMERA: 60,
}


def parse_ts(value: Any) -> int:
    """Device time as epoch milliseconds, from an int (ms) or an RFC 3339 string; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("ts must be epoch milliseconds (int) or an RFC 3339 string, not a boolean")
    if isinstance(value, int):
        if value < 0 or value > 253402300799999:
            raise ValueError(f"ts {value} is not a plausible epoch-millisecond time")
        return value
    if isinstance(value, str):
        s = value.strip()
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError as exc:
            raise ValueError(f"ts {value!r} is not an RFC 3339 time") from exc
        if dt.tzinfo is None:
            raise ValueError(f"ts {value!r} has no UTC offset (RFC 3339 needs one)")
        return int(dt.timestamp() * 1000)
    raise ValueError("ts must be epoch milliseconds (int) or an RFC 3339 string")


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def rfc3339(value: datetime | None, tz: tzinfo, *, timespec: str = "auto") -> str | None:
    """A time out of the hub (CONTRACT §4: RFC 3339 with offset) in the zone `tz`, or None.

    RFC 3339 offsets are whole minutes: where the zone's is not (local mean time before time zones existed,
    e.g. +08:05:43 in Shanghai before 1901) the time is given in UTC. `timespec` is `datetime.isoformat`'s:
    the alert and task shapes always write milliseconds, the other answers microseconds when there are any.
    """
    if value is None:
        return None
    local = value.astimezone(tz)
    offset = local.utcoffset()
    if offset is not None and offset.seconds % 60:
        local = value.astimezone(UTC)
    return local.isoformat(timespec=timespec)


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    ts: int = Field(description="device time, epoch ms")
    seq: int | None = Field(default=None, ge=0, le=2**62)

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> int:
        return parse_ts(v)

    @field_validator("seq", mode="before")
    @classmethod
    def _seq(cls, v: Any) -> Any:
        if isinstance(v, bool) or (v is not None and not isinstance(v, int)):
            raise ValueError("seq must be an integer")
        return v


MetricValue = StrictBool | int | float | str | None


class Reading(_Message):
    """`{"ts": ..., "seq": ..., "metrics": {name: value}}`"""

    metrics: dict[str, Any]

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError("metrics must name at least one metric")
        for name in v:
            if not METRIC_NAME_RE.fullmatch(name):
                raise ValueError(f"metric name {name!r} must match {METRIC_NAME_PATTERN}")
        return v


class Event(_Message):
    """`{"ts": ..., "seq": ..., "type": "alarm", "detail": {}}`"""

    type: str = Field(min_length=1, max_length=64)
    detail: dict[str, Any] = Field(default_factory=dict)


class Command(BaseModel):
    id: str
    type: Literal["self_test", "silence", "snapshot"]


@dataclass(frozen=True)
class Topic:
    """A parsed device topic."""

    device_id: str
    channel: str  # telemetry | event | status | frame | command
    frame_ts: str | None = None


class TopicError(ValueError):
    pass


def parse_topic(topic: str, prefix: str = DEFAULT_TOPIC_PREFIX) -> Topic:
    """Parse `{prefix}/devices/{id}/{channel}[/{ts}]`; TopicError names what is wrong."""
    head = prefix.rstrip("/") + "/devices/"
    if not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under {head}")
    parts = topic[len(head):].split("/")
    if len(parts) < 2:
        raise TopicError(f"topic {topic!r} has no channel after the device id")
    dev, channel, rest = parts[0], parts[1], parts[2:]
    if not DEVICE_ID_RE.fullmatch(dev):
        raise TopicError(f"device id {dev!r} breaks the pattern {DEVICE_ID_PATTERN}")
    if channel == "frame" and len(rest) == 1:
        if not rest[0].isdigit():
            raise TopicError(f"frame capture time {rest[0]!r} must be epoch milliseconds")
        return Topic(dev, channel, rest[0])
    if rest or channel not in ("telemetry", "event", "status", "frame", "command"):
        raise TopicError(f"unknown channel {'/'.join(parts[1:])!r} in topic {topic!r}")
    return Topic(dev, channel)


def device_topic(prefix: str, device_id: str, channel: str) -> str:
    return f"{prefix}/devices/{device_id}/{channel}"


def worker_tasks_topic(prefix: str, worker_id: str) -> str:
    return f"{prefix}/workers/{worker_id}/tasks"


def alerts_topic(prefix: str) -> str:
    return f"{prefix}/alerts"


class BrokerURLError(ValueError):
    pass


@dataclass(frozen=True)
class BrokerAddress:
    """A broker URL `mqtt://user:pass@host:port` (`mqtts://` for TLS), parsed."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):  # the URL itself is not shown: it may hold a password
            raise BrokerURLError(f"a broker URL with the scheme {parts.scheme!r} must look like "
                                 "mqtt://user:pass@host:port (mqtts:// for TLS)")
        creds, at, hosts = parts.netloc.rpartition("@")
        if "," in hosts:  # several nodes (gridhub.mqtt's multi-host URL): this address is the first
            parts = parts._replace(netloc=f"{creds}{at}{hosts.split(',')[0].strip()}")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )

    def as_account(self, username: str, password: str) -> BrokerAddress:
        """The same broker, logged in as another account (a device's own)."""
        return BrokerAddress(self.host, self.port, username, password, self.tls)
