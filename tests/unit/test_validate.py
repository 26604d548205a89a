"""Payload validation (ingest/validate.py, CONTRACT §1) against a stand-in registry: what a device sees when its
message is refused (the reason code, a detail that names the fix, the payload kept whole), the limits at their
exact edges, and that the registry is read per message, so a device registered later is accepted at once."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from gridhub.ingest.validate import Device, EventIn, ReadingIn, Rejected, StatusIn, Validator
from gridhub.protocol import MAX_FUTURE_MS, MAX_PAYLOAD, DeviceKind, Reason

NOW = 1_790_000_000_000
DAY = 86_400_000


class Registry(Mapping[str, Device]):
    """A stand-in for ingest's registry cache, changed by the test as `gridhub registry import` would."""

    def __init__(self, **devices: Device) -> None:
        self.devices = dict(devices)

    def __getitem__(self, key: str) -> Device:
        return self.devices[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.devices)

    def __len__(self) -> int:
        return len(self.devices)


def registry() -> Registry:
    return Registry(**{"sa-0001": Device(DeviceKind.SMOKE_ALARM, False),
                       "sp-0001": Device(DeviceKind.SPRINKLER_PRESSURE, False),
                       "sl-0001": Device(DeviceKind.STAIRWELL_LIGHT, False)})


def classify(v: Validator, device: str, channel: str, body: Any, *, retained: bool = False,
             now_ms: int = NOW) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return v.classify(f"gridhub/v1/devices/{device}/{channel}", raw, retained=retained, now_ms=now_ms)


def rejected(out: Any, reason: Reason, *words: str) -> Rejected:
    assert isinstance(out, Rejected), out
    assert out.reason == reason, (out.reason, out.detail)
    for w in words:
        assert w in out.detail, (w, out.detail)
    return out


@pytest.fixture
def v() -> Validator:
    return Validator("gridhub/v1", registry(), readings_days=30)


def test_a_good_reading_keeps_every_metric_and_counts_the_unknown(v: Validator) -> None:
    out = classify(v, "sa-0001", "telemetry", {"ts": NOW, "seq": 7, "metrics": {"battery_pct": 80, "fw": "2.1",
                                                                                 "big": 2**70}})
    assert out == ReadingIn("sa-0001", NOW, 7, {"battery_pct": 80, "fw": "2.1", "big": 2**70}, 2)


def test_rfc3339_times_are_read_with_their_offset(v: Validator) -> None:
    out = classify(v, "sa-0001", "telemetry", {"ts": "2026-09-21T10:00:00+08:00", "metrics": {"battery_pct": 1}})
    assert isinstance(out, ReadingIn) and out.seq == -1
    assert out.ts_ms == int(datetime(2026, 9, 21, 2, tzinfo=UTC).timestamp() * 1000)
    out = classify(v, "sa-0001", "telemetry", {"ts": "2026-09-21T02:00:00Z", "metrics": {"battery_pct": 1}})
    assert isinstance(out, ReadingIn) and out.ts_ms == 1_789_956_000_000


def test_events_and_statuses(v: Validator) -> None:
    assert classify(v, "sa-0001", "event", {"ts": NOW, "type": "alarm", "detail": {"zone": 2}}) == EventIn(
        "sa-0001", NOW, -1, "alarm", {"zone": 2})
    assert classify(v, "sa-0001", "status", b"online") == StatusIn("sa-0001", True, False)
    assert classify(v, "sa-0001", "status", b"offline", retained=True) == StatusIn("sa-0001", False, True)


@pytest.mark.parametrize(("topic", "words"), [
    ("other/v1/devices/sa-0001/telemetry", ["is not under gridhub/v1/devices/"]),
    ("gridhub/v1/devices/sa.0001/telemetry", ["sa.0001", "rename the device"]),
    ("gridhub/v1/devices/sa-0001/readings", ["is not a telemetry, event or status topic"]),
    ("gridhub/v1/devices/sa-0001/telemetry/extra", ["is not a telemetry, event or status topic"]),
    ("gridhub/v1/devices/sa-0001", ["is not a telemetry, event or status topic"]),
])
def test_bad_topics_say_what_is_wrong(v: Validator, topic: str, words: list[str]) -> None:
    for _ in range(2):  # the second time from the topic cache, with the same answer
        out = v.classify(topic, b'{"ts": 1, "metrics": {"x": 1}}', retained=False, now_ms=NOW)
        rejected(out, Reason.BAD_TOPIC, *words)
        assert out.topic == topic


def test_the_device_id_is_known_for_well_formed_topics_only(v: Validator) -> None:
    assert v.device_id_of("gridhub/v1/devices/sa-0001/telemetry") == "sa-0001"
    assert v.device_id_of("gridhub/v1/devices/sa.0001/telemetry") is None
    assert v.device_id_of("elsewhere/sa-0001/telemetry") is None
    out = classify(v, "sa-0001", "telemetry", b"{")
    assert isinstance(out, Rejected) and out.device_id == "sa-0001"


def test_the_prefix_may_be_given_with_slashes() -> None:
    v = Validator("/gridhub/v1/", registry(), readings_days=30)
    assert isinstance(classify(v, "sa-0001", "status", b"online"), StatusIn)


def test_payload_size_limit_is_64_kib_exactly(v: Validator) -> None:
    body = json.dumps({"ts": NOW, "metrics": {"battery_pct": 50}}).encode()
    at_limit = body[:-1] + b" " * (MAX_PAYLOAD - len(body)) + b"}"
    assert len(at_limit) == MAX_PAYLOAD
    assert isinstance(classify(v, "sa-0001", "telemetry", at_limit), ReadingIn)
    out = rejected(classify(v, "sa-0001", "telemetry", at_limit + b" "), Reason.OVERSIZE, "65537 bytes",
                   "send smaller messages")
    assert out.payload_truncated and len(out.payload) == MAX_PAYLOAD


def test_text_that_is_not_utf8_is_invalid_json_and_kept_as_base64(v: Validator) -> None:
    raw = b'{"ts": 1, "metrics": {"x": "\xff"}}'
    out = rejected(classify(v, "sa-0001", "telemetry", raw), Reason.INVALID_JSON, "not UTF-8", "send UTF-8 JSON")
    assert out.payload_encoding == "base64" and base64.b64decode(out.payload) == raw


def test_a_refused_payload_is_kept_whole(v: Validator) -> None:
    raw = '{"ts": 1, "metrics": {"温度": 1}'.encode()
    out = rejected(classify(v, "sa-0001", "telemetry", raw), Reason.INVALID_JSON)
    assert (out.payload, out.payload_encoding, out.payload_truncated) == (raw.decode(), "utf8", False)


@pytest.mark.parametrize("raw", [b"NaN", b'{"ts": 1, "metrics": {"x": NaN}}', b'{"ts": 1, "metrics": {"x": Infinity}}',
                                 b"", b"{'ts': 1}"])
def test_not_json_is_invalid_json(v: Validator, raw: bytes) -> None:
    rejected(classify(v, "sa-0001", "telemetry", raw), Reason.INVALID_JSON, "not valid JSON")


@pytest.mark.parametrize(("body", "words"), [
    ([1, 2], ["must be a JSON object, got array"]),
    ({"metrics": {"battery_pct": 1}}, ["field ts is missing", "epoch milliseconds or RFC 3339"]),
    ({"ts": True, "metrics": {"x": 1}}, ["field ts", "not a boolean"]),
    ({"ts": -1, "metrics": {"x": 1}}, ["field ts", "plausible"]),
    ({"ts": NOW, "seq": "7", "metrics": {"x": 1}}, ["field seq must be an integer, got string"]),
    ({"ts": NOW, "seq": -1, "metrics": {"x": 1}}, ["field seq -1 must lie in 0..2^62"]),
    ({"ts": NOW, "seq": 2**62 + 1, "metrics": {"x": 1}}, ["must lie in 0..2^62"]),
    ({"ts": NOW}, ["field metrics is missing"]),
    ({"ts": NOW, "metrics": []}, ["field metrics must be an object, got array"]),
    ({"ts": NOW, "metrics": {}}, ["at least one metric"]),
    ({"ts": NOW, "metrics": {"bad name": 1}}, ['"bad name"', "[A-Za-z0-9_.-]{1,64}"]),
    ({"ts": NOW, "metrics": {"x" * 65: 1}}, ["[A-Za-z0-9_.-]{1,64}"]),
    ({"ts": NOW, "metrics": {"battery_pct": True}}, ["battery_pct of a smoke_alarm must be a number, got boolean"]),
    ({"ts": NOW, "metrics": {"battery_pct": "80"}}, ["must be a number, got string \"80\""]),
])
def test_schema_errors_name_the_field(v: Validator, body: Any, words: list[str]) -> None:
    rejected(classify(v, "sa-0001", "telemetry", body), Reason.SCHEMA, *words)


def test_seq_up_to_2_62_is_accepted(v: Validator) -> None:
    out = classify(v, "sa-0001", "telemetry", {"ts": NOW, "seq": 2**62, "metrics": {"x": 1}})
    assert isinstance(out, ReadingIn) and out.seq == 2**62


@pytest.mark.parametrize(("body", "words"), [
    ({"ts": NOW}, ["field type is missing"]),
    ({"ts": NOW, "type": 3}, ["field type must be a string, got number 3"]),
    ({"ts": NOW, "type": ""}, ["1 to 64 characters"]),
    ({"ts": NOW, "type": "alarm", "detail": "smoke"}, ["field detail must be an object, got string"]),
    ({"ts": NOW, "type": "self_test", "detail": {"passed": "yes"}}, ["detail.passed true or false", '"yes"']),
])
def test_event_schema_errors_name_the_field(v: Validator, body: Any, words: list[str]) -> None:
    rejected(classify(v, "sa-0001", "event", body), Reason.SCHEMA, *words)


def test_status_must_be_online_or_offline(v: Validator) -> None:
    rejected(classify(v, "sa-0001", "status", b"ONLINE"), Reason.SCHEMA, "online or offline", "ONLINE")
    assert classify(v, "sa-0001", "status", b"  online\r\n") == StatusIn("sa-0001", True, False)


def test_an_event_of_another_kind_lists_the_kinds_events(v: Validator) -> None:
    out = rejected(classify(v, "sp-0001", "event", {"ts": NOW, "type": "alarm"}), Reason.UNKNOWN_EVENT,
                   '"alarm"', "sprinkler_pressure")
    assert out.detail.endswith("fault, fault_cleared, heartbeat")


def test_out_of_range_names_the_metric_value_and_range(v: Validator) -> None:
    rejected(classify(v, "sp-0001", "telemetry", {"ts": NOW, "metrics": {"pressure_mpa": -0.01}}),
             Reason.OUT_OF_RANGE, "pressure_mpa=-0.01", "0..5", "sprinkler_pressure", "calibration")
    rejected(classify(v, "sa-0001", "telemetry", {"ts": NOW, "metrics": {"smoke_db_m": -1}}),
             Reason.OUT_OF_RANGE, ">= 0")
    assert isinstance(classify(v, "sp-0001", "telemetry", {"ts": NOW, "metrics": {"pressure_mpa": 5}}), ReadingIn)
    assert isinstance(classify(v, "sp-0001", "telemetry", {"ts": NOW, "metrics": {"pressure_mpa": 0}}), ReadingIn)


def test_a_wrong_type_is_schema_even_next_to_a_value_out_of_range(v: Validator) -> None:
    out = classify(v, "sl-0001", "telemetry", {"ts": NOW, "metrics": {"lux": -5, "lamp_on": "on"}})
    rejected(out, Reason.SCHEMA, "lamp_on")


def test_clock_skew_allows_300_s_ahead(v: Validator) -> None:
    ok = classify(v, "sa-0001", "event", {"ts": NOW + MAX_FUTURE_MS, "type": "alarm"})
    assert isinstance(ok, EventIn)
    rejected(classify(v, "sa-0001", "event", {"ts": NOW + MAX_FUTURE_MS + 1000, "type": "alarm"}),
             Reason.CLOCK_SKEW, "301 s ahead", "set the device clock (NTP)")


def test_older_than_the_retention_is_out_of_range(v: Validator) -> None:
    assert isinstance(classify(v, "sa-0001", "telemetry", {"ts": NOW - 30 * DAY, "metrics": {"x": 1}}), ReadingIn)
    rejected(classify(v, "sa-0001", "telemetry", {"ts": NOW - 30 * DAY - 1, "metrics": {"x": 1}}),
             Reason.OUT_OF_RANGE, "retention of 30 days", "GRIDHUB_READINGS_DAYS")
    rejected(classify(v, "sa-0001", "event", {"ts": NOW - 31 * DAY, "type": "alarm"}), Reason.OUT_OF_RANGE)


def test_a_device_registered_later_is_accepted_at_once() -> None:
    devices = registry()
    v = Validator("gridhub/v1", devices, readings_days=30)
    body = {"ts": NOW, "metrics": {"battery_pct": 50}}
    out = rejected(classify(v, "sa-0002", "telemetry", body), Reason.UNREGISTERED_DEVICE, "sa-0002 is not registered",
                   "gridhub registry import")
    assert out.device_id == "sa-0002"
    devices.devices["sa-0002"] = Device(DeviceKind.SMOKE_ALARM, False)
    assert isinstance(classify(v, "sa-0002", "telemetry", body), ReadingIn)
    devices.devices["sa-0002"] = Device(DeviceKind.SMOKE_ALARM, True)
    rejected(classify(v, "sa-0002", "telemetry", body), Reason.UNREGISTERED_DEVICE, "retired", "un-retire")
    rejected(classify(v, "sa-0002", "status", b"online"), Reason.UNREGISTERED_DEVICE)


def test_the_kind_in_the_registry_decides_the_metrics(v: Validator) -> None:
    """battery_pct is a smoke alarm's metric: for a sprinkler it is unknown, stored and counted, not checked."""
    out = classify(v, "sp-0001", "telemetry", {"ts": NOW, "metrics": {"battery_pct": 500}})
    assert isinstance(out, ReadingIn) and out.unknown_metrics == 1


@pytest.mark.parametrize("raw", [b'{"ts": %d, "metrics": {"smoke_db_m": 1e999}}' % NOW,
                                 b'{"ts": %d, "metrics": {"smoke_db_m": %s}}' % (NOW, b"1" + b"0" * 400)])
def test_a_number_beyond_a_double_is_out_of_range_even_without_an_upper_bound(v: Validator, raw: bytes) -> None:
    """Ingest and the alert rules agree: what cannot be a finite double is not a reading (never stored as inf)."""
    rejected(classify(v, "sa-0001", "telemetry", raw), Reason.OUT_OF_RANGE, "smoke_db_m")
