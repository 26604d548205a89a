"""The notification file (CONTRACT §6, `GRIDHUB_NOTIFY_FILE`): channels, routes by severity, fallback delays.

One tree of strict pydantic models, validated when a part starts, with errors that name the line and the field.
`${NAME}` in a string is read from the environment when the value is used (`expand`), never when the file is
loaded, so that `gridhub notify check` and logs print the file as written; names starting `GRIDHUB_` are refused
(a channel URL must not be able to carry the hub's own secret key away).
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gridhub import envref

__all__ = ["ROUTE_LEVELS", "SEVERITIES", "NotifyFile", "NotifyFileError", "expand", "load", "parse"]

SEVERITIES = ("critical", "high", "normal", "low")
ROUTE_LEVELS = ("assignee", "level1", "level2", "level3")


class NotifyFileError(ValueError):
    """The notification file cannot be used; the message names the file, the line and the field."""


def expand(value: str) -> str:
    """`${NAME}` replaced by the environment's NAME (`gridhub.envref.expand`, the resolver shared with the camera
    sources). A missing variable or one of the hub's own settings (`GRIDHUB_…`) is a NotifyFileError that names
    it, raised when the value is used."""
    return envref.expand(value, where="the notify file", error=NotifyFileError)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WecomRobot(_Strict):
    type: Literal["wecom_robot"]
    url: StrictStr


class DingtalkRobot(_Strict):
    type: Literal["dingtalk_robot"]
    url: StrictStr
    secret: StrictStr | None = None  # the robot's 加签 secret; unset: a robot secured by keyword or IP only


class AliyunSms(_Strict):
    type: Literal["sms"]
    provider: Literal["aliyun"]
    access_key_id: StrictStr
    access_key_secret: StrictStr
    sign_name: StrictStr
    template_code: StrictStr
    endpoint: StrictStr = "dysmsapi.aliyuncs.com"  # a test stand-in: "127.0.0.1:PORT" with protocol http
    protocol: Literal["https", "http"] = "https"


class TencentSms(_Strict):
    type: Literal["sms"]
    provider: Literal["tencent"]
    secret_id: StrictStr
    secret_key: StrictStr
    sdk_app_id: StrictStr
    sign_name: StrictStr
    template_id: StrictStr
    region: StrictStr = "ap-guangzhou"
    endpoint: StrictStr = "sms.tencentcloudapi.com"
    protocol: Literal["https", "http"] = "https"


class HttpSms(_Strict):
    """A district's own SMS gateway: one HTTP request per message, the body a template of the message's fields
    (`{phone}`, `{text}`, `{delivery_id}`, `{task_id}`); 2xx is sent."""

    type: Literal["sms"]
    provider: Literal["http"]
    url: StrictStr
    method: Literal["POST", "GET"] = "POST"
    headers: dict[str, StrictStr] = {}
    body: StrictStr = '{"phone": "{phone}", "text": "{text}", "id": "{delivery_id}"}'
    content_type: StrictStr = "application/json"


Sms = Annotated[AliyunSms | TencentSms | HttpSms, Field(discriminator="provider")]


class WebPush(_Strict):
    type: Literal["webpush"]
    vapid_private_key_file: Path
    subject: StrictStr  # mailto: or https: URL the push services can reach the operator at
    ttl_s: int = Field(default=3600, gt=0)
    allow_private_endpoints: bool = False  # only for tests and closed networks: loopback or private push services

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if not (v.startswith("mailto:") or v.startswith("https://")):
            raise ValueError("subject must be a mailto: or https: URL (RFC 8292)")
        return v


class Webhook(_Strict):
    type: Literal["webhook"]
    url: StrictStr
    secret: StrictStr


Channel = Annotated[WecomRobot | DingtalkRobot | Sms | WebPush | Webhook, Field(discriminator="type")]


class Route(_Strict):
    """One severity's entry: the channels of each level, used together; quiet hours for the assignee's messages."""

    assignee: list[StrictStr] = []
    level1: list[StrictStr] = []
    level2: list[StrictStr] = []
    level3: list[StrictStr] = []
    quiet_hours: StrictStr | None = None  # "22:00-07:00" in the district's time zone

    @field_validator("quiet_hours")
    @classmethod
    def _quiet(cls, v: str | None) -> str | None:
        if v is not None:
            _quiet_window(v)
        return v

    def channels(self, level: str) -> list[str]:
        return list(getattr(self, level))

    def quiet_until(self, at: datetime, tz: ZoneInfo) -> datetime | None:
        """When `at` falls in the quiet hours: the end of them (the time the message may go); else None."""
        if self.quiet_hours is None:
            return None
        start, end = _quiet_window(self.quiet_hours)
        local = at.astimezone(tz)
        t = local.timetz().replace(tzinfo=None)
        inside = (start <= t < end) if start < end else (t >= start or t < end)
        if not inside:
            return None
        day = local.date() if (start < end or t < end) else local.date() + timedelta(days=1)
        return datetime.combine(day, end, tz)


def _quiet_window(text: str) -> tuple[time, time]:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        raise ValueError(f"quiet_hours {text!r}: write it as HH:MM-HH:MM, e.g. 22:00-07:00")
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59 or (h1, m1) == (h2, m2):
        raise ValueError(f"quiet_hours {text!r}: two different times of day")
    return time(h1, m1), time(h2, m2)


class NotifyFile(_Strict):
    channels: dict[StrictStr, Channel] = {}
    routes: dict[Literal["critical", "high", "normal", "low"], Route] = {}
    fallback_after_s: dict[Literal["critical", "high", "normal", "low"], Annotated[int, Field(gt=0)]] = {}
    # not the contract's, ours (docs/notifications.md): how long a delivery is retried, and the storm limit
    expire_after_s: int = Field(default=6 * 3600, gt=0)
    storm_per_minute: int = Field(default=3, gt=0)
    # a sender that took a delivery and died is replaced after this: longer than one request's timeout (5 s)
    sender_lease_s: float = Field(default=60.0, ge=2.0)
    link_base: StrictStr | None = None  # the worker page as people's phones reach it, e.g. https://hub.example.org

    @model_validator(mode="after")
    def _known_channels(self) -> NotifyFile:
        for sev, route in self.routes.items():
            for level in ROUTE_LEVELS:
                for name in route.channels(level):
                    if name not in self.channels:
                        raise ValueError(f"routes.{sev}.{level}: no channel named {name!r} in `channels`"
                                         f" (known: {', '.join(sorted(self.channels)) or 'none'})")
        return self

    def route(self, severity: str) -> Route | None:
        return next((r for sev, r in self.routes.items() if sev == severity), None)

    def fallback_s(self, severity: str) -> int | None:
        return next((s for sev, s in self.fallback_after_s.items() if sev == severity), None)


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line (1-based) of the YAML node at `loc`, as deep as the path can be followed."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            nxt = node.value[key]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def parse(text: str, source: str = "<notify file>") -> NotifyFile:
    try:
        data = yaml.safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise NotifyFileError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise NotifyFileError(f"{source}: the notify file is a mapping with `channels:` and `routes:`")
    try:
        return NotifyFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x in (
                "wecom_robot", "dingtalk_robot", "sms", "webpush", "webhook", "aliyun", "tencent", "http")))
            line = _line_of(node, loc)
            where = f"line {line}: " if line else ""
            problems.append(f"{source}: {where}{'.'.join(str(x) for x in loc) or '(top)'}: {err['msg']}")
        raise NotifyFileError("\n".join(problems)) from exc


def load(path: Path) -> NotifyFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NotifyFileError(f"GRIDHUB_NOTIFY_FILE {path}: {exc.strerror}") from exc
    return parse(text, str(path))
