"""The validator alone: reason precedence, details a person can act on, agreement of the fast path with the
pydantic models of gridhub.protocol, and no input that makes it raise."""

from __future__ import annotations

import json
import time
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridhub.ingest.store import count_gaps
from gridhub.ingest.validate import (
    Device,
    EventIn,
    ReadingIn,
    Rejected,
    StatusIn,
    Validator,
    quarantine_payload,
)
from gridhub.protocol import DeviceKind, Event, Reading

DEVICES = {
    "sa-0001": Device(DeviceKind.SMOKE_ALARM, False),
    "sl-0001": Device(DeviceKind.STAIRWELL_LIGHT, False),
    "cam-0001": Device(DeviceKind.CAMERA, False),
    "sa-0099": Device(DeviceKind.SMOKE_ALARM, True),
}
V = Validator("gridhub/v1", DEVICES, readings_days=400)
NOW = int(time.time() * 1000)


def classify(device: str, channel: str, payload: Any, retained: bool = False) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return V.classify(f"gridhub/v1/devices/{device}/{channel}", raw, retained=retained, now_ms=NOW)


def reason(device: str, channel: str, payload: Any) -> str | None:
    out = classify(device, channel, payload)
    return out.reason.value if isinstance(out, Rejected) else None


@pytest.mark.parametrize(("device", "channel", "payload", "expected"), [
    ("bad id", "telemetry", b"x" * 70_000, "bad_topic"),  # bad_topic before oversize
    ("sa-0001", "telemetry", b"{" * 70_000, "oversize"),  # oversize before invalid_json
    ("sa-9999", "telemetry", b"{nope", "invalid_json"),  # invalid_json before unregistered
    ("sa-9999", "telemetry", {"metrics": {"battery_pct": 1}}, "schema"),  # schema before unregistered
    ("sa-9999", "event", {"ts": NOW, "type": "boom"}, "unregistered_device"),  # before unknown_event
    ("sa-0099", "telemetry", {"ts": NOW, "metrics": {"battery_pct": 500}}, "unregistered_device"),  # retired
    ("sa-0001", "event", {"ts": NOW + 10**7, "type": "boom"}, "unknown_event"),  # before clock_skew
    ("sa-0001", "telemetry", {"ts": NOW + 10**7, "metrics": {"battery_pct": 500}}, "out_of_range"),
    ("sa-0001", "telemetry", {"ts": NOW + 10**7, "metrics": {"battery_pct": 50}}, "clock_skew"),
    ("sa-0001", "telemetry", {"ts": NOW, "metrics": {"battery_pct": 500, "temperature_c": "hot"}}, "schema"),
    ("sl-0001", "telemetry", {"ts": NOW, "metrics": {"lamp_on": "yes"}}, "schema"),
    ("sa-0001", "event", {"ts": NOW, "type": "self_test", "detail": {}}, "schema"),
    ("sa-0001", "telemetry", {"ts": NOW, "seq": True, "metrics": {"x": 1}}, "schema"),
    ("sa-0001", "telemetry", {"ts": NOW, "metrics": {"note": "a\u0000b"}}, "schema"),
    ("sa-0001", "telemetry", {"ts": 1.5, "metrics": {"x": 1}}, "schema"),
    ("sa-0001", "telemetry", {"ts": "2026-01-01T00:00:00", "metrics": {"x": 1}}, "schema"),  # no offset
    ("sa-0001", "status", b"\xff", "schema"),
    ("sa-0001", "telemetry", {"ts": NOW, "metrics": {"battery_pct": 10**400}}, "out_of_range"),
    ("sa-0001", "telemetry", {"ts": "2026-01-01T00:00:00+08:00", "metrics": {"x": [1, {"y": None}]}}, None),
    ("sa-0001", "event", {"ts": NOW, "type": "self_test", "detail": {"passed": False}}, None),
    ("cam-0001", "event", {"ts": NOW, "type": "exit_blocked", "detail": {"occupancy": 0.3}}, None),
])
def test_reason_precedence(device: str, channel: str, payload: Any, expected: str | None) -> None:
    assert reason(device, channel, payload) == expected


def test_details_name_the_field_value_and_range() -> None:
    out = classify("sa-0001", "telemetry", {"ts": NOW, "metrics": {"battery_pct": 140}})
    assert isinstance(out, Rejected) and "battery_pct" in out.detail and "140" in out.detail and "0..100" in out.detail
    out = classify("sa-9999", "telemetry", {"ts": NOW, "metrics": {"battery_pct": 1}})
    assert isinstance(out, Rejected) and "gridhub registry import" in out.detail and out.device_id == "sa-9999"
    out = classify("sa-0001", "event", {"ts": NOW, "type": "boom"})
    assert isinstance(out, Rejected) and "alarm_cleared" in out.detail


def test_accepted_shapes() -> None:
    r = classify("sl-0001", "telemetry", {"ts": NOW, "metrics": {"lamp_on": True, "lux": 3, "fw": "1.2"}})
    assert isinstance(r, ReadingIn) and r.seq == -1 and r.unknown_metrics == 1 and r.metrics["lamp_on"] is True
    e = classify("sa-0001", "event", {"ts": NOW, "seq": 5, "type": "alarm"})
    assert isinstance(e, EventIn) and e.detail == {} and e.seq == 5
    s = classify("sa-0001", "status", b" offline\n", retained=True)
    assert isinstance(s, StatusIn) and not s.online and s.retained


def test_quarantine_payload_encoding() -> None:
    assert quarantine_payload("温度".encode()) == ("温度", "utf8", False)
    text, enc, trunc = quarantine_payload(b"\xff\x00")
    assert enc == "base64" and not trunc
    text, enc, trunc = quarantine_payload("界".encode() * 30_000)  # cut inside a character
    assert enc == "utf8" and trunc and len(text.encode()) <= 65536


def test_count_gaps() -> None:
    assert count_gaps(None, [5, 6, 9]) == (9, 2)
    assert count_gaps(9, [9, 8, 10]) == (10, 0)  # redelivery and reordering are no gaps
    assert count_gaps(50_000, [0, 1, 3]) == (3, 1)  # a device restarting its counter


NO_NUL = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                       | NO_NUL, lambda c: st.lists(c, max_size=3) | st.dictionaries(NO_NUL, c, max_size=3),
                       max_leaves=8)
BODY = st.one_of(
    JSONISH,
    st.fixed_dictionaries({}, optional={
        "ts": st.one_of(st.integers(min_value=-10, max_value=2**64), st.just(NOW), NO_NUL, st.floats(),
                        st.just("2026-11-27T10:00:00+08:00"), st.booleans(), st.none()),
        "seq": st.one_of(st.integers(min_value=-5, max_value=2**63), st.none(), st.booleans(), NO_NUL),
        "metrics": st.one_of(st.dictionaries(st.one_of(NO_NUL, st.sampled_from(["x", "a.b", "c-d", "e" * 65])),
                                             JSONISH, max_size=3), JSONISH),
        "type": st.one_of(NO_NUL, st.integers(), st.sampled_from(["heartbeat", "exit_blocked", "x" * 65])),
        "detail": JSONISH,
    }),
)


@settings(max_examples=400, deadline=None)
@given(BODY, st.sampled_from(["telemetry", "event"]))
def test_fast_path_agrees_with_the_pydantic_models(body: Any, channel: str) -> None:
    model = Reading if channel == "telemetry" else Event
    try:
        model.model_validate(body)
        model_ok = True
    except pydantic.ValidationError:
        model_ok = False
    # the camera defines no metrics, so only the generic schema applies to its readings
    got = reason("cam-0001", channel, json.dumps(body).encode())
    assert (got not in ("schema", "invalid_json")) == model_ok, (body, got)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40), st.binary(max_size=200), st.booleans())
def test_nothing_makes_the_validator_raise(level: str, payload: bytes, retained: bool) -> None:
    for t in (f"gridhub/v1/devices/{level}/telemetry", f"gridhub/v1/devices/sa-0001/{level}", level):
        out = V.classify(t, payload, retained=retained, now_ms=NOW)
        assert isinstance(out, ReadingIn | EventIn | StatusIn | Rejected)


@settings(max_examples=300, deadline=None)
@given(BODY, st.sampled_from(["sa-0001", "sl-0001", "cam-0001", "sa-0099", "x y"]),
       st.sampled_from(["telemetry", "event", "status"]))
def test_nothing_json_makes_the_validator_raise(body: Any, device: str, channel: str) -> None:
    out = classify(device, channel, json.dumps(body).encode())
    assert isinstance(out, ReadingIn | EventIn | StatusIn | Rejected)
    if isinstance(out, Rejected):
        assert out.detail and out.payload_encoding in ("utf8", "base64")
