"""The rules over one device's messages (alerts/evaluate.py) with the built-in rule book (gridhub/rules.yaml,
CONTRACT §4.2): held thresholds raise only after their hold and clear only at their own (hysteresis) level,
on the messages' own time; the sprinkler drop window; event mappings; what ingest would accept."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gridhub.alerts.evaluate import DeviceState, Finding, acceptable, event_findings, reading_findings
from gridhub.alerts.rules import RuleBook, load_rules
from gridhub.protocol import MAX_FUTURE_MS, Event, Reading

RULES = load_rules()
T0 = 1_790_000_000_000  # epoch ms, any fixed time
S = 1000  # one second in ms


def feed(rules: RuleBook, kind: str, device: str, points: list[tuple[float, dict[str, object]]],
         st: DeviceState | None = None) -> list[tuple[float, str, str]]:
    """(seconds after T0, action, alert type) for each finding of the readings, in order."""
    st = st if st is not None else DeviceState()
    out = []
    for t, metrics in points:
        for f in reading_findings(st, rules, kind, device, Reading(ts=T0 + int(t * S), metrics=metrics)):
            out.append(((f.ts_ms - T0) / S, f.action, f.alert_type))
    return out


def pressure(*points: tuple[float, float], device: str = "sp-0001", st: DeviceState | None = None,
             rules: RuleBook = RULES) -> list[tuple[float, str, str]]:
    return feed(rules, "sprinkler_pressure", device, [(t, {"pressure_mpa": v}) for t, v in points], st)


def without_drop(found: list[tuple[float, str, str]]) -> list[tuple[float, str, str]]:
    return [f for f in found if f[2] != "sprinkler_drop"]


# ------------------------------------------------------------------ held thresholds

def test_low_pressure_raises_only_once_held_for_60_s() -> None:
    assert pressure((0, 0.09), (30, 0.09), (59, 0.09)) == []
    assert pressure((0, 0.09), (30, 0.09), (60, 0.09)) == [(60, "raise", "sprinkler_low")]


def test_a_dip_that_recovers_restarts_the_hold() -> None:
    # 0.11 is above the raise level: the hold begins again at 70 s
    assert pressure((0, 0.09), (50, 0.11), (70, 0.09), (110, 0.09), (130, 0.09)) == [(130, "raise", "sprinkler_low")]


def test_two_messages_further_apart_than_the_hold_raise() -> None:
    """A device that reports less often than the hold: true in two consecutive messages is held."""
    assert pressure((0, 0.09), (300, 0.09)) == [(300, "raise", "sprinkler_low")]
    assert pressure((0, 0.09)) == []


def test_critical_pressure_raises_after_30_s_and_low_after_60_s() -> None:
    assert pressure((0, 0.04), (30, 0.04), (60, 0.04)) == [(30, "raise", "sprinkler_critical"),
                                                           (60, "raise", "sprinkler_low")]


def test_low_pressure_clears_only_at_0_12_held_60_s() -> None:
    st = DeviceState()
    assert pressure((0, 0.09), (60, 0.09), st=st) == [(60, "raise", "sprinkler_low")]
    assert st.active == {"sprinkler_low"}
    # back above the raise level but under the clear level: still low, however long (hysteresis)
    assert pressure(*[(60 + 60 * i, 0.11) for i in range(1, 12)], st=st) == []
    assert pressure((800, 0.12), (859, 0.12), st=st) == []
    assert pressure((860, 0.12), st=st) == [(860, "clear", "sprinkler_low")]
    assert st.active == set()


def test_a_raised_alert_is_not_raised_again() -> None:
    st = DeviceState()
    found = pressure(*[(10 * i, 0.09) for i in range(30)], st=st)
    assert found == [(60, "raise", "sprinkler_low")]


def test_over_pressure_raises_above_1_2_and_clears_at_1_1() -> None:
    st = DeviceState()
    assert pressure((0, 1.2), (100, 1.2), st=st) == []  # 1.20 itself is not over
    assert without_drop(pressure((200, 1.25), (260, 1.25), st=st)) == [(260, "raise", "sprinkler_high")]
    assert without_drop(pressure((300, 1.15), (400, 1.15), st=st)) == []
    assert without_drop(pressure((500, 1.10), (560, 1.10), st=st)) == [(560, "clear", "sprinkler_high")]


def test_the_finding_names_the_value_and_the_hold() -> None:
    st = DeviceState()
    found = []
    for t in (0, 60):
        found += reading_findings(st, RULES, "sprinkler_pressure", "sp-0001",
                                  Reading(ts=T0 + t * S, metrics={"pressure_mpa": 0.08}))
    assert found == [Finding("raise", "sprinkler_low", T0 + 60 * S, {"pressure_mpa": 0.08, "held_s": 60})]


def test_late_and_repeated_readings_do_not_count() -> None:
    """Holds are judged in the messages' time order: a message older than the last one seen is ignored."""
    st = DeviceState()
    assert pressure((0, 0.09), (40, 0.09), st=st) == []
    assert pressure((70, 0.09), st=st) == [(70, "raise", "sprinkler_low")]
    st = DeviceState()
    assert pressure((0, 0.09), (40, 0.09), st=st) == []
    assert pressure((10, 0.5), st=st) == []  # late: it neither breaks the hold...
    assert pressure((40, 0.09), st=st) == []  # ...nor does a repeat count twice
    assert pressure((60, 0.09), st=st) == [(60, "raise", "sprinkler_low")]


def test_a_reading_without_the_metric_leaves_the_hold_alone() -> None:
    st = DeviceState()
    found = feed(RULES, "sprinkler_pressure", "sp-0001",
                 [(0, {"pressure_mpa": 0.09}), (30, {"fw": "1.2"}), (60, {"pressure_mpa": 0.09})], st)
    assert found == [(60, "raise", "sprinkler_low")]
    st = DeviceState()
    found = feed(RULES, "sprinkler_pressure", "sp-0001",
                 [(0, {"pressure_mpa": 0.09}), (30, {"pressure_mpa": True}), (60, {"pressure_mpa": 0.09})], st)
    assert found == [(60, "raise", "sprinkler_low")]  # a boolean is not a number


def test_light_fault_needs_the_lamp_on_and_clears_at_5_lux() -> None:
    def light(*points: tuple[float, bool, float], st: DeviceState) -> list[tuple[float, str, str]]:
        return feed(RULES, "stairwell_light", "sl-0001", [(t, {"lamp_on": on, "lux": lux}) for t, on, lux in points],
                    st)

    st = DeviceState()
    assert light(*[(60 * i, False, 0.5) for i in range(20)], st=st) == []  # dark with the lamp off: night, no fault
    st = DeviceState()
    assert light((0, True, 3), (119, True, 3), st=st) == []
    assert light((120, True, 4.9), st=st) == [(120, "raise", "light_fault")]
    assert light((180, True, 5), st=st) == [(180, "clear", "light_fault")]  # clear_hold_s 0: at once


def test_low_battery_raises_at_once_below_20_and_clears_at_30() -> None:
    def battery(*points: tuple[float, float], st: DeviceState) -> list[tuple[float, str, str]]:
        return feed(RULES, "smoke_alarm", "sa-0001", [(t, {"battery_pct": v}) for t, v in points], st)

    st = DeviceState()
    assert battery((0, 20), st=st) == []
    assert battery((10, 19), st=st) == [(10, "raise", "low_battery")]
    assert battery((20, 25), (30, 29.9), st=st) == []
    assert battery((40, 30), st=st) == [(40, "clear", "low_battery")]


def test_other_kinds_have_no_thresholds() -> None:
    assert feed(RULES, "camera", "cam-0001", [(0, {"pressure_mpa": 0.0}), (999, {"pressure_mpa": 0.0})]) == []


def test_a_device_override_changes_that_device_only(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text("devices: {sp-0001: {sprinkler_low: {raise_below: 0.08}}}\n")
    rules = load_rules(f)
    assert without_drop(pressure((0, 0.09), (60, 0.09), rules=rules)) == []
    assert without_drop(pressure((0, 0.09), (60, 0.09), rules=rules, device="sp-0002")) == [
        (60, "raise", "sprinkler_low")]
    assert without_drop(pressure((0, 0.079), (60, 0.079), rules=rules)) == [(60, "raise", "sprinkler_low")]


def test_a_hold_in_progress_survives_a_restart() -> None:
    """The state is saved as JSON (device_state) and restored with the alert types active in the database."""
    st = DeviceState()
    assert pressure((0, 0.09), (40, 0.09), st=st) == []
    assert st.dirty
    restored = DeviceState.from_json(st.to_json(), active=set())
    assert pressure((60, 0.09), st=restored) == [(60, "raise", "sprinkler_low")]


def test_the_active_set_from_the_database_decides_raise_or_clear() -> None:
    st = DeviceState.from_json(None, active={"sprinkler_low"})
    assert pressure((0, 0.09), (60, 0.09), st=st) == []  # already active: nothing raised again
    assert pressure((120, 0.12), (180, 0.12), st=st) == [(180, "clear", "sprinkler_low")]


# ------------------------------------------------------------------ sprinkler drop

def test_a_fall_of_0_07_within_60_s_raises_a_drop() -> None:
    assert pressure((0, 0.30), (30, 0.26), (60, 0.23)) == [(60, "raise", "sprinkler_drop")]
    found = reading_findings(DeviceState(), RULES, "sprinkler_pressure", "sp-0001",
                             Reading(ts=T0, metrics={"pressure_mpa": 0.30}))
    assert found == []


def test_the_drop_finding_says_from_where() -> None:
    st = DeviceState()
    pressure((0, 0.40), (20, 0.35), st=st)
    f = reading_findings(st, RULES, "sprinkler_pressure", "sp-0001", Reading(ts=T0 + 40 * S, metrics={"pressure_mpa": 0.30}))
    assert f == [Finding("raise", "sprinkler_drop", T0 + 40 * S, {"pressure_mpa": 0.30, "from": 0.40, "within_s": 60})]


def test_a_slow_decline_is_no_drop() -> None:
    # 0.09 lost over 90 s, but never 0.07 within 60 s
    assert pressure((0, 0.30), (30, 0.27), (60, 0.24), (90, 0.21)) == []
    assert pressure((0, 0.30), (61, 0.22)) == []
    assert pressure((0, 0.30), (59, 0.31), (60, 0.22)) == [(60, "raise", "sprinkler_drop")]  # the peak counts


def test_a_drop_clears_after_10_minutes_without_a_large_swing() -> None:
    st = DeviceState()
    assert pressure((0, 0.30), (10, 0.20), st=st) == [(10, "raise", "sprinkler_drop")]
    steady = [(10 + 60 * i, 0.20 + (0.03 if i % 2 else 0)) for i in range(1, 10)]  # swings of 0.03
    assert pressure(*steady, st=st) == []
    assert pressure((609, 0.21), st=st) == []
    assert pressure((610, 0.21), st=st) == [(610, "clear", "sprinkler_drop")]


def test_a_large_swing_restarts_the_drops_clear() -> None:
    st = DeviceState()
    assert pressure((0, 0.30), (10, 0.20), st=st) == [(10, "raise", "sprinkler_drop")]
    assert pressure((300, 0.28), st=st) == []  # a swing of 0.08: the stable time starts again at 300 s
    assert pressure((609, 0.28), (899, 0.27), st=st) == []
    assert pressure((900, 0.27), st=st) == [(900, "clear", "sprinkler_drop")]


def test_the_drop_rule_is_for_sprinklers_only() -> None:
    found = feed(RULES, "smoke_alarm", "sa-0001", [(0, {"pressure_mpa": 0.9}), (10, {"pressure_mpa": 0.1})])
    assert found == []


# ------------------------------------------------------------------ events

@pytest.mark.parametrize(("etype", "action", "alert_type"), [
    ("alarm", "raise", "fire_alarm"), ("alarm_cleared", "clear", "fire_alarm"),
    ("fault", "raise", "device_fault"), ("fault_cleared", "clear", "device_fault"),
    ("video_loss", "raise", "device_fault"), ("video_restored", "clear", "device_fault"),
    ("low_battery", "raise", "low_battery"),
    ("tamper", "raise", "tamper"), ("tamper_cleared", "clear", "tamper"),
    ("exit_blocked", "raise", "exit_blocked"), ("exit_cleared", "clear", "exit_blocked"),
    ("camera_obstructed", "raise", "camera_obstructed"), ("camera_obstructed_cleared", "clear", "camera_obstructed"),
    ("lamp_fault", "raise", "light_fault"), ("lamp_fault_cleared", "clear", "light_fault"),
])
def test_each_event_of_contract_4_2_raises_or_clears_its_alert(etype: str, action: str, alert_type: str) -> None:
    assert event_findings(Event(ts=T0, type=etype)) == [Finding(action, alert_type, T0, {"event": etype})]


def test_an_events_detail_is_kept_on_the_finding() -> None:
    [f] = event_findings(Event(ts=T0, type="exit_blocked", detail={"occupancy": 0.4}))
    assert f.detail == {"event": "exit_blocked", "detail": {"occupancy": 0.4}}


def test_self_test_is_decided_by_passed() -> None:
    assert event_findings(Event(ts=T0, type="self_test", detail={"passed": False})) == [
        Finding("raise", "device_fault", T0, {"event": "self_test", "passed": False})]
    assert event_findings(Event(ts=T0, type="self_test", detail={"passed": True})) == [
        Finding("clear", "device_fault", T0, {"event": "self_test", "passed": True})]
    assert event_findings(Event(ts=T0, type="self_test", detail={"passed": "yes"})) == []
    assert event_findings(Event(ts=T0, type="self_test")) == []


def test_heartbeats_and_unknown_events_raise_nothing() -> None:
    assert event_findings(Event(ts=T0, type="heartbeat")) == []
    assert event_findings(Event(ts=T0, type="boom")) == []


# ------------------------------------------------------------------ what ingest would accept

@pytest.mark.parametrize(("kind", "msg", "ok"), [
    ("smoke_alarm", Reading(ts=T0, metrics={"battery_pct": 50, "fw": "x"}), True),  # unknown metrics pass
    ("smoke_alarm", Reading(ts=T0, metrics={"battery_pct": 101}), False),
    ("smoke_alarm", Reading(ts=T0, metrics={"battery_pct": True}), False),
    ("smoke_alarm", Reading(ts=T0, metrics={"battery_pct": math.nan}), False),
    ("smoke_alarm", Reading(ts=T0, metrics={"battery_pct": "50"}), False),
    ("stairwell_light", Reading(ts=T0, metrics={"lamp_on": 1}), False),
    ("stairwell_light", Reading(ts=T0, metrics={"lamp_on": False, "lux": 0}), True),
    ("sprinkler_pressure", Reading(ts=T0, metrics={"pressure_mpa": 5.01}), False),
    ("sprinkler_pressure", Reading(ts=T0 + MAX_FUTURE_MS, metrics={"pressure_mpa": 0.3}), True),
    ("sprinkler_pressure", Reading(ts=T0 + MAX_FUTURE_MS + 1, metrics={"pressure_mpa": 0.3}), False),
    ("smoke_alarm", Event(ts=T0, type="alarm"), True),
    ("sprinkler_pressure", Event(ts=T0, type="alarm"), False),  # not one of a sprinkler's events
    ("toaster", Event(ts=T0, type="alarm"), False),
])
def test_acceptable_is_what_ingest_accepts(kind: str, msg: Reading | Event, ok: bool) -> None:
    assert acceptable(kind, msg, now_ms=T0) is ok


def test_an_integer_too_large_for_a_double_is_not_acceptable() -> None:
    assert acceptable("smoke_alarm", Reading(ts=T0, metrics={"battery_pct": 10**400}), now_ms=T0) is False
