"""Offline storms, recovery and drills without a service: which devices make a building storm and what its note
says (alerts/offline.py), when a task is recovered, the defaults in gridhub/rules.yaml, drill marks on alerts
(alerts/evaluate.py) and on a drill scenario's events (simulators/scenario.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gridhub.alerts.evaluate import event_findings
from gridhub.alerts.offline import recovery_due, storm_devices, storm_note
from gridhub.alerts.records import is_drill
from gridhub.alerts.rules import RulesError, load_rules
from gridhub.protocol import Event
from gridhub.simulators.fleet import load_fleet
from gridhub.simulators.scenario import compose, load_scenario

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
REGISTRY = Path(__file__).parent.parent / "data" / "registry.yaml"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_the_defaults_three_devices_within_five_minutes_and_ten_minutes_back() -> None:
    o = load_rules().offline
    assert (o.building_min_devices, o.building_window_s, o.recovered_after_s) == (3, 300, 600)


def test_an_override_of_the_storm_threshold_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text("offline: {building_min_devices: 5, recovered_after_s: 120}\n")
    o = load_rules(f).offline
    assert (o.building_min_devices, o.recovered_after_s, o.building_window_s) == (5, 120, 300)
    f.write_text("offline: {building_min_devices: 1}\n")
    with pytest.raises(RulesError, match="building_min_devices"):
        load_rules(f)


def test_three_devices_within_the_window_are_a_storm_two_are_not() -> None:
    recent = [("sa-3", at(100)), ("sa-1", at(0)), ("sa-2", at(40))]
    assert storm_devices(recent, at(100), 300, 3) == ["sa-1", "sa-2", "sa-3"]  # in the order they went offline
    assert storm_devices(recent[:2], at(100), 300, 3) == []
    assert storm_devices(recent, at(100), 300, 4) == []


def test_a_device_offline_before_the_window_does_not_count() -> None:
    recent = [("sa-1", at(0)), ("sa-2", at(250)), ("sa-3", at(310))]
    assert storm_devices(recent, at(310), 300, 3) == []  # sa-1 went offline 310 s before
    assert storm_devices(recent, at(300), 300, 2) == ["sa-1", "sa-2"]  # exactly at the window's edge counts


def test_the_note_names_the_building_counts_and_lists_the_devices() -> None:
    devices = [f"sa-{i:04d}" for i in range(1, 24)]
    assert storm_note("12号楼", devices[:3]) == "12号楼 3 台设备离线: sa-0001, sa-0002, sa-0003"
    long = storm_note("12号楼", devices, listed=20)
    assert long.startswith("12号楼 23 台设备离线: sa-0001, ") and long.endswith("sa-0020 … (+3)")
    assert storm_note("12号楼", devices[:2], "设备恢复在线") == "12号楼 2 台设备恢复在线: sa-0001, sa-0002"


def test_recovered_when_the_last_device_back_stayed_back() -> None:
    assert recovery_due([at(0), at(120)], 600) == at(720)
    assert recovery_due([at(0), None], 600) is None  # one still offline
    assert recovery_due([], 600) is None


def test_a_drill_event_marks_its_alert_a_drill_and_a_plain_one_does_not() -> None:
    drill = event_findings(Event(ts=1, type="alarm", detail={"drill": True}))[0]
    assert drill.detail["drill"] is True and is_drill(drill.detail)
    plain = event_findings(Event(ts=1, type="alarm", detail={}))[0]
    assert "drill" not in plain.detail and not is_drill(plain.detail)
    assert not is_drill(event_findings(Event(ts=1, type="alarm", detail={"drill": "yes"}))[0].detail)
    failed = event_findings(Event(ts=1, type="self_test", detail={"passed": False, "drill": True}))[0]
    assert (failed.action, failed.alert_type, is_drill(failed.detail)) == ("raise", "device_fault", True)


def test_a_drill_scenario_marks_its_events_and_those_of_what_it_includes(tmp_path: Path) -> None:
    f = tmp_path / "fire_drill.yaml"
    f.write_text("name: fire_drill\nsummary: the fire scenario as a drill\nduration_s: 240\ndrill: true\n"
                 "include: [{scenario: fire}]\n", encoding="utf-8")
    fleet = load_fleet(REGISTRY)
    actions, _, _ = compose([(load_scenario(str(f)), 0.0)], fleet, random.Random(0), {})
    alarms = [a for a in actions if a.op == "event"]
    assert alarms and all(a.drill for a in alarms)
    plain, _, _ = compose([(load_scenario("fire"), 0.0)], fleet, random.Random(0), {})
    assert not any(a.drill for a in plain)
