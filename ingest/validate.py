"""Classify one device message (CONTRACT §1) as a reading, an event, a status or a quarantine entry.

The checks run in the contract's order of precedence: `bad_topic`, `oversize`, `invalid_json`, `schema`,
`unregistered_device`, `unknown_event`, `out_of_range`, `clock_skew`; the first that applies wins. The hot
path parses with orjson and checks fields by hand, accepting exactly what the pydantic models of
`gridhub.protocol` accept (a property test holds the two together).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gridhub.protocol import (
    DEVICE_ID_PATTERN,
    DEVICE_ID_RE,
    EVENTS,
    MAX_FUTURE_MS,
    MAX_PAYLOAD,
    METRIC_NAME_PATTERN,
    METRIC_NAME_RE,
    METRICS,
    DeviceKind,
    MetricSpec,
    Reason,
    parse_ts,
)
from gridhub.quarantine import quarantine_payload as quarantine_payload  # re-exported for ingest

MAX_SEQ = 2**62
CHANNELS = ("telemetry", "event", "status")
TOPIC_CACHE = 100_000
_GOOD_METRIC_NAMES: set[str] = set()  # names already matched against METRIC_NAME_RE


@dataclass(frozen=True, slots=True)
class Device:
    """What ingest needs to know of a registered device."""

    kind: DeviceKind
    retired: bool


@dataclass(slots=True)
class ReadingIn:
    """An accepted reading: one message, one or more metrics."""

    device_id: str
    ts_ms: int
    seq: int  # -1 when the device sent none
    metrics: dict[str, Any]
    unknown_metrics: int


@dataclass(slots=True)
class EventIn:
    device_id: str
    ts_ms: int
    seq: int
    type: str
    detail: dict[str, Any]


@dataclass(slots=True)
class StatusIn:
    """`online`/`offline`; a retained one (replayed by the broker) tells state, not life."""

    device_id: str
    online: bool
    retained: bool


@dataclass(slots=True)
class Rejected:
    """A quarantine entry: the message whole, with its reason code and a detail a person can act on."""

    topic: str
    device_id: str | None
    reason: Reason
    detail: str
    payload: str
    payload_encoding: str  # utf8 | base64
    payload_truncated: bool


Outcome = ReadingIn | EventIn | StatusIn | Rejected


class _Bad(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        first = str(exc)
    # orjson refuses integers beyond 64 bits, which JSON allows: the standard library reads them
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise _Bad(Reason.INVALID_JSON, f"payload is not UTF-8 text (byte {exc.start}): send UTF-8 JSON") from exc
    except (ValueError, RecursionError) as exc:
        raise _Bad(Reason.INVALID_JSON, f"payload is not valid JSON: {first}") from exc


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return True
        elif isinstance(v, dict):
            for k, item in v.items():
                if "\x00" in k:
                    return True
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _ts(body: dict[str, Any]) -> int:
    if "ts" not in body:
        raise _Bad(Reason.SCHEMA, "field ts is missing: add the device time as epoch milliseconds or RFC 3339")
    try:
        return parse_ts(body["ts"])
    except ValueError as exc:
        raise _Bad(Reason.SCHEMA, f"field ts: {exc}") from exc


def _seq(body: dict[str, Any]) -> int:
    seq = body.get("seq")
    if seq is None:
        return -1
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise _Bad(Reason.SCHEMA, f"field seq must be an integer, got {_type_name(seq)} {_short(seq)}")
    if seq < 0 or seq > MAX_SEQ:
        raise _Bad(Reason.SCHEMA, f"field seq {seq} must lie in 0..2^62")
    return seq


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Bad(Reason.SCHEMA, f"payload must be a JSON object, got {_type_name(body)}")
    return body


def _metrics(body: dict[str, Any]) -> dict[str, Any]:
    if "metrics" not in body:
        raise _Bad(Reason.SCHEMA, 'field metrics is missing: send {"metrics": {"name": value}}')
    metrics = body["metrics"]
    if not isinstance(metrics, dict):
        raise _Bad(Reason.SCHEMA, f"field metrics must be an object, got {_type_name(metrics)}")
    if not metrics:
        raise _Bad(Reason.SCHEMA, "field metrics must name at least one metric")
    for name in metrics:
        if name not in _GOOD_METRIC_NAMES:
            if not METRIC_NAME_RE.fullmatch(name):
                raise _Bad(Reason.SCHEMA, f"metric name {_short(name)} must match {METRIC_NAME_PATTERN}")
            if len(_GOOD_METRIC_NAMES) < TOPIC_CACHE:
                _GOOD_METRIC_NAMES.add(name)
    return metrics


def _event_type(body: dict[str, Any]) -> str:
    if "type" not in body:
        raise _Bad(Reason.SCHEMA, "field type is missing: name the event, e.g. \"alarm\"")
    etype = body["type"]
    if not isinstance(etype, str):
        raise _Bad(Reason.SCHEMA, f"field type must be a string, got {_type_name(etype)} {_short(etype)}")
    if not 1 <= len(etype) <= 64:
        raise _Bad(Reason.SCHEMA, "field type must be 1 to 64 characters long")
    return etype


def _detail(body: dict[str, Any]) -> dict[str, Any]:
    if "detail" not in body:
        return {}
    detail = body["detail"]
    if not isinstance(detail, dict):
        raise _Bad(Reason.SCHEMA, f"field detail must be an object, got {_type_name(detail)}")
    return detail


def _range_text(spec: MetricSpec) -> str:
    if spec.low is not None and spec.high is not None:
        return f"{spec.low:g}..{spec.high:g}"
    if spec.low is not None:
        return f">= {spec.low:g}"
    return f"<= {spec.high:g}"


def _check_known_metric(kind: DeviceKind, name: str, spec: MetricSpec, value: Any) -> Reason | None:
    """Raise schema for a wrong type; return OUT_OF_RANGE (raised later, by precedence) for a bad value."""
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise _Bad(Reason.SCHEMA, f"metric {name} of a {kind.value} must be true or false, "
                                      f"got {_type_name(value)} {_short(value)}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(Reason.SCHEMA, f"metric {name} of a {kind.value} must be a number, "
                                  f"got {_type_name(value)} {_short(value)}")
    try:
        x = float(value)
    except OverflowError:
        return Reason.OUT_OF_RANGE
    if not math.isfinite(x) or (spec.low is not None and x < spec.low) or (spec.high is not None and x > spec.high):
        return Reason.OUT_OF_RANGE
    return None


def _when(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"


def _check_time(ts_ms: int, now_ms: int, oldest_ms: int, readings_days: int) -> None:
    if ts_ms < oldest_ms:
        raise _Bad(Reason.OUT_OF_RANGE, f"ts {_when(ts_ms)} is older than the readings' retention of "
                                        f"{readings_days} days (GRIDHUB_READINGS_DAYS): nothing that old is kept")
    if ts_ms > now_ms + MAX_FUTURE_MS:
        ahead = (ts_ms - now_ms) / 1000
        raise _Bad(Reason.CLOCK_SKEW, f"ts {_when(ts_ms)} is {ahead:.0f} s ahead of the hub's clock "
                                      "(more than 300 s): set the device clock (NTP)")


class Validator:
    """Classifies messages against the registry cache; one per ingest process (not thread-safe by design:
    the writer thread alone calls it)."""

    def __init__(self, prefix: str, devices: Mapping[str, Device], readings_days: int) -> None:
        self.head = prefix.strip("/") + "/devices/"
        self.devices = devices
        self.readings_days = readings_days
        self._topics: dict[str, tuple[str, str] | _Bad] = {}  # topic -> (device id, channel) or why it is bad
        self._device_ids: dict[str, str | None] = {}

    def device_id_of(self, topic: str) -> str | None:
        """The device id in a topic we subscribe to, when it is well formed."""
        try:
            return self._device_ids[topic]
        except KeyError:
            pass
        dev: str | None = None
        if topic.startswith(self.head):
            dev, _, _ = topic[len(self.head):].partition("/")
            dev = dev if DEVICE_ID_RE.fullmatch(dev) else None
        if len(self._device_ids) >= TOPIC_CACHE:
            self._device_ids.clear()
        self._device_ids[topic] = dev
        return dev

    def _parsed_topic(self, topic: str) -> tuple[str, str]:
        """`_topic`, parsed once per distinct topic (a device has three)."""
        parsed = self._topics.get(topic)
        if parsed is None:
            if len(self._topics) >= TOPIC_CACHE:
                self._topics.clear()
            try:
                parsed = self._topic(topic)
            except _Bad as bad:
                parsed = bad
            self._topics[topic] = parsed
        if isinstance(parsed, _Bad):
            raise _Bad(parsed.reason, parsed.detail)
        return parsed

    def classify(self, topic: str, payload: bytes, *, retained: bool, now_ms: int) -> Outcome:
        device_id: str | None = None
        try:
            device_id, channel = self._parsed_topic(topic)
            if len(payload) > MAX_PAYLOAD:
                raise _Bad(Reason.OVERSIZE, f"payload of {len(payload)} bytes is over the limit of "
                                            f"{MAX_PAYLOAD} bytes (64 KiB): send smaller messages")
            if channel == "status":
                return self._status(device_id, payload, retained)
            body = _object(_loads(payload))
            if b"\\u0000" in payload and _has_nul(body):
                raise _Bad(Reason.SCHEMA, "payload contains the character U+0000, which cannot be stored: "
                                          "remove it from names and strings")
            ts_ms = _ts(body)
            seq = _seq(body)
            oldest_ms = now_ms - self.readings_days * 86_400_000
            if channel == "telemetry":
                return self._reading(device_id, body, ts_ms, seq, now_ms, oldest_ms)
            return self._event(device_id, body, ts_ms, seq, now_ms, oldest_ms)
        except _Bad as bad:
            text, encoding, truncated = quarantine_payload(payload)
            return Rejected(topic, device_id, bad.reason, bad.detail, text, encoding, truncated)

    def _topic(self, topic: str) -> tuple[str, str]:
        if not topic.startswith(self.head):
            raise _Bad(Reason.BAD_TOPIC, f"topic {_short(topic)} is not under {self.head}")
        parts = topic[len(self.head):].split("/")
        if not DEVICE_ID_RE.fullmatch(parts[0]):
            raise _Bad(Reason.BAD_TOPIC, f"device id {_short(parts[0])} in topic breaks the pattern "
                                         f"{DEVICE_ID_PATTERN}: rename the device")
        if len(parts) != 2 or parts[1] not in CHANNELS:
            raise _Bad(Reason.BAD_TOPIC, f"topic {_short(topic)} is not a telemetry, event or status topic")
        return parts[0], parts[1]

    def _device(self, device_id: str) -> Device:
        dev = self.devices.get(device_id)
        if dev is None:
            raise _Bad(Reason.UNREGISTERED_DEVICE, f"device {device_id} is not registered: add it to the "
                                                   "registry and run gridhub registry import")
        if dev.retired:
            raise _Bad(Reason.UNREGISTERED_DEVICE, f"device {device_id} is retired in the registry: "
                                                   "un-retire it or take it off the network")
        return dev

    def _status(self, device_id: str, payload: bytes, retained: bool) -> StatusIn:
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = None
        if text not in ("online", "offline"):
            raise _Bad(Reason.SCHEMA, f"status payload must be the text online or offline, got "
                                      f"{_short(payload[:80].decode('utf-8', 'replace'))}")
        self._device(device_id)
        return StatusIn(device_id, text == "online", retained)

    def _reading(self, device_id: str, body: dict[str, Any], ts_ms: int, seq: int, now_ms: int,
                 oldest_ms: int) -> ReadingIn:
        metrics = _metrics(body)
        dev = self._device(device_id)
        known = METRICS[dev.kind]
        unknown = 0
        bad_range: str | None = None
        for name, value in metrics.items():
            spec = known.get(name)
            if spec is None:
                unknown += 1
                continue
            if _check_known_metric(dev.kind, name, spec, value) is not None and bad_range is None:
                bad_range = (f"metric {name}={_short(value)} is outside {_range_text(spec)} for a "
                             f"{dev.kind.value}: check the sensor or its calibration")
        if bad_range is not None:
            raise _Bad(Reason.OUT_OF_RANGE, bad_range)
        _check_time(ts_ms, now_ms, oldest_ms, self.readings_days)
        return ReadingIn(device_id, ts_ms, seq, metrics, unknown)

    def _event(self, device_id: str, body: dict[str, Any], ts_ms: int, seq: int, now_ms: int,
               oldest_ms: int) -> EventIn:
        etype = _event_type(body)
        detail = _detail(body)
        dev = self._device(device_id)
        allowed = EVENTS[dev.kind]
        if etype not in allowed:
            raise _Bad(Reason.UNKNOWN_EVENT, f"event type {_short(etype)} is not one of a {dev.kind.value}'s: "
                                             + ", ".join(sorted(allowed)))
        if etype == "self_test" and not isinstance(detail.get("passed"), bool):
            raise _Bad(Reason.SCHEMA, "a self_test event needs detail.passed true or false, got "
                                      f"{_short(detail.get('passed'))}")
        _check_time(ts_ms, now_ms, oldest_ms, self.readings_days)
        return EventIn(device_id, ts_ms, seq, etype, detail)
