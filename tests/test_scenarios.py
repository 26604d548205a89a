"""Each scenario, played with the devices' own (ACL'd) accounts on the real private broker, produces the
messages it should, as a hub-account subscriber receives them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import orjson
import pytest
from simulator_listener import Heard, HubListener

from gridhub.protocol import MAX_FUTURE_MS, MAX_PAYLOAD, Event, Reading, TopicError, parse_topic
from gridhub.simulators.cli import main as simulate
from gridhub.simulators.fleet import load_fleet
from gridhub.simulators.scenario import compose, list_scenarios, load_scenario

REGISTRY = Path(__file__).parent / "data" / "registry.yaml"
NAMES = {"fire", "pressure_loss", "dark_stairwell", "power_cut", "flapping", "exit_blocked", "garbage",
         "reconnect_storm"}


def play(settings: Any, broker: Any, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    rc = simulate(["scenario", *args, "--broker", broker.test_url, "--registry", str(REGISTRY),
                   "--secret", str(settings.secret_key)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0, summary
    assert not summary["counts"].get("errors"), summary
    return summary


def device(m: Heard) -> str:
    return parse_topic(m.topic).device_id


def channel(m: Heard) -> str:
    return parse_topic(m.topic).channel


def readings(heard: list[Heard], dev: str) -> list[Reading]:
    out = [Reading.model_validate_json(m.payload) for m in heard
           if m.topic == f"gridhub/v1/devices/{dev}/telemetry"]
    return sorted(out, key=lambda r: r.ts)


def events(heard: list[Heard], type_: str | None = None) -> list[tuple[str, Event]]:
    out = [(device(m), Event.model_validate_json(m.payload)) for m in heard if m.topic.endswith("/event")]
    return [(d, e) for d, e in out if type_ is None or e.type == type_]


def statuses(heard: list[Heard], dev: str) -> list[str]:
    return [m.payload.decode() for m in heard if m.topic == f"gridhub/v1/devices/{dev}/status" and not m.retain]


def held(rs: list[Reading], cond: Any) -> float:
    """The longest run of consecutive readings meeting the condition, in seconds of their own ts."""
    best, start = 0.0, None
    for r in rs:
        if cond(r.metrics):
            start = r.ts if start is None else start
            best = max(best, (r.ts - start) / 1000)
        else:
            start = None
    return best


def assert_never_in_the_future(heard: list[Heard], summary: dict[str, Any]) -> None:
    for m in heard:
        if channel(m) in ("telemetry", "event"):
            ts = orjson.loads(m.payload)["ts"]
            assert summary["start_ts"] <= ts <= m.received_ms + 2, (m.topic, ts, m.received_ms)


@pytest.fixture
def listener(broker: Any, settings: Any) -> Any:
    lst = HubListener(broker.test_url, name="scenario")
    yield lst
    lst.close()


def test_every_named_scenario_is_listed_and_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert {s.name for s in list_scenarios()} == NAMES
    assert simulate(["scenario", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES)


def test_fire_spreads_through_a_building_and_drops_the_sprinkler(settings: Any, broker: Any, listener: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    summary = play(settings, broker, capsys, "fire", "--speed", "40")
    assert summary["cast"]["fire"]["building"] == ["b-12"]  # the only building with 2 alarms and a sprinkler
    heard = listener.wait_for(lambda got: len(events(got, "alarm")) >= 2 and len(readings(got, "sp-0001")) >= 25)
    alarms = events(heard, "alarm")
    assert {d for d, _ in alarms} == {"sa-0001", "sa-0002"}
    times = sorted(e.ts for _, e in alarms)
    assert times[1] - times[0] <= 5 * 60_000  # two alarms in one building within 5 minutes: a fire incident
    pressure = readings(heard, "sp-0001")
    drops = [a.metrics["pressure_mpa"] - b.metrics["pressure_mpa"] for a in pressure for b in pressure
             if 0 < b.ts - a.ts <= 60_000]
    assert max(drops) >= 0.07
    assert all(0.3 <= r.metrics["pressure_mpa"] <= 0.6 for r in pressure[:5])  # site baseline before the drop
    smoke = readings(heard, "sa-0001")
    assert smoke[-1].metrics["smoke_db_m"] > smoke[0].metrics["smoke_db_m"]
    assert all(statuses(heard, d)[:1] == ["online"] for d in ("sa-0001", "sa-0002", "sp-0001"))
    span = (max(r.ts for r in pressure) - min(r.ts for r in pressure)) / 1000
    assert span >= 200  # four minutes of scenario time, compressed
    assert_never_in_the_future(heard, summary)


def test_pressure_loss_holds_below_the_thresholds(settings: Any, broker: Any, listener: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    summary = play(settings, broker, capsys, "pressure_loss", "--speed", "50", "--cast", "sprinkler=sp-0201")
    heard = listener.wait_for(lambda got: len(readings(got, "sp-0201")) >= 50)
    rs = readings(heard, "sp-0201")
    assert held(rs, lambda m: m["pressure_mpa"] < 0.05) >= 30
    assert held(rs, lambda m: m["pressure_mpa"] < 0.10) >= 60
    assert rs[0].metrics["pressure_mpa"] >= 0.3
    assert_never_in_the_future(heard, summary)


def test_dark_stairwell_reports_a_lit_lamp_in_the_dark(settings: Any, broker: Any, listener: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    summary = play(settings, broker, capsys, "dark_stairwell", "--speed", "50")
    heard = listener.wait_for(lambda got: len(readings(got, "sl-0001")) >= 15)
    rs = readings(heard, "sl-0001")
    assert held(rs, lambda m: m["lamp_on"] is True and m["lux"] < 5) >= 120
    assert_never_in_the_future(heard, summary)


def test_power_cut_devices_vanish_and_their_wills_fire(settings: Any, broker: Any, listener: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    play(settings, broker, capsys, "power_cut", "--speed", "10", "--cast", "building=b-20")
    heard = listener.wait_for(lambda got: all(statuses(got, d)[-1:] == ["offline"] for d in ("sa-0201", "sp-0201")))
    for dev in ("sa-0201", "sp-0201"):
        assert statuses(heard, dev) == ["online", "offline"]  # the offline is the broker's will: no goodbye
        assert len(readings(heard, dev)) == 1


def test_flapping_lamp_and_noisy_alarm(settings: Any, broker: Any, listener: Any,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    summary = play(settings, broker, capsys, "flapping", "--speed", "50", "--cast", "lamp=sl-0001",
                   "--cast", "alarm=sa-0201")
    heard = listener.wait_for(lambda got: statuses(got, "sl-0001").count("online") >= 8
                              and len(events(got, "alarm_cleared")) >= 7)
    st = statuses(heard, "sl-0001")
    assert st == ["online", "offline"] * 7 + ["online"]  # 7 drops, each back 20 s later
    assert len([e for d, e in events(heard, "alarm") if d == "sa-0201"]) == 7  # more than 5 a day: noisy
    assert_never_in_the_future(heard, summary)


def test_garbage_sends_every_bad_input_class(settings: Any, broker: Any, listener: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    summary = play(settings, broker, capsys, "garbage", "--speed", "4")
    assert summary["counts"]["raw"] == 8 and summary["counts"]["reading"] == 2 and summary["counts"]["event"] == 1
    heard = listener.wait_for(lambda got: len(got) >= 11)
    live = [m for m in heard if not (m.topic.endswith("/status"))]
    found: set[str] = set()
    for m in live:
        try:
            t = parse_topic(m.topic)
        except TopicError:
            found.add("bad_topic")
            continue
        if len(m.payload) > MAX_PAYLOAD:
            found.add("oversize")
            continue
        if t.channel == "frame":
            ok = cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_COLOR) is not None
            assert not ok and dict(m.user_properties).get("ts")
            found.add("bad_frame")
            continue
        try:
            body = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            found.add("invalid_json")
            continue
        if "ts" not in body:
            found.add("schema")
        elif t.device_id in ("sa-ghost-9999", "sa-0099"):
            found.add("unregistered_device")
        elif body.get("type") == "explode":
            found.add("unknown_event")
        elif body.get("metrics", {}).get("pressure_mpa", 0) > 5:
            found.add("out_of_range")
        elif body["ts"] > m.received_ms + MAX_FUTURE_MS:
            found.add("clock_skew")
    assert found == {"bad_topic", "oversize", "invalid_json", "schema", "unregistered_device", "unknown_event",
                     "out_of_range", "clock_skew", "bad_frame"}


def test_reconnect_storm_comes_back_with_buffered_readings(settings: Any, broker: Any, listener: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    summary = play(settings, broker, capsys, "reconnect_storm", "--speed", "600")
    devices = summary["cast"]["reconnect_storm"]["everyone"]
    assert set(devices) == {"sa-0001", "sa-0002", "sa-0201", "sl-0001", "sp-0001", "sp-0201"}
    heard = listener.wait_for(lambda got: all(len(readings(got, d)) >= 12 for d in devices))
    for dev in devices:
        assert statuses(heard, dev) == ["online", "offline", "online"]
        rs = readings(heard, dev)
        assert len(rs) == 12  # one before, eleven buffered (every 5 minutes of the hour away)
        gaps = [(b.ts - a.ts) for a, b in zip(rs[1:], rs[2:], strict=False)]
        assert all(g == 300_000 for g in gaps)
        assert rs[1].ts - rs[0].ts == 305_000  # reported at 0 s, gone at 5 s, first buffered 5 minutes later
        seqs = [r.seq or 0 for r in rs]
        assert seqs == sorted(seqs)
    assert summary["counts"]["buffered"] == 66
    assert_never_in_the_future(heard, summary)


def test_exit_blocked_sends_decodable_frames_with_capture_times(settings: Any, broker: Any, listener: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    play(settings, broker, capsys, "exit_blocked", "--speed", "30")
    heard = listener.wait_for(lambda got: len([m for m in got if "/frame" in m.topic]) >= 60)
    frames = [m for m in heard if m.topic == "gridhub/v1/devices/cam-0001/frame"]
    assert len(frames) == 60
    ts = [int(dict(m.user_properties)["ts"]) for m in frames]
    assert all(b - a == 5000 for a, b in zip(ts, ts[1:], strict=False))
    decoded = [cv2.imdecode(np.frombuffer(m.payload, np.uint8), cv2.IMREAD_GRAYSCALE) for m in frames]
    imgs = [i for i in decoded if i is not None and i.shape == (360, 640)]
    assert len(imgs) == len(frames)
    # the e-bike stands in the corridor from 60 s to 210 s: those frames differ from the clear ones
    from gridhub.simulators.scenes import roi_mask

    roi = roi_mask([[0.41, 0.52], [0.59, 0.52], [0.93, 0.99], [0.07, 0.99]]) > 0
    clear = np.median(np.stack(imgs[:10]).astype(np.float32), axis=0)
    changed = [float((np.abs(i.astype(np.float32) - clear) > 40)[roi].mean()) for i in imgs]
    assert np.median(changed[14:40]) > 0.02 > np.median(changed[:10]) and np.median(changed[45:]) < 0.02


def test_scenarios_compose_with_includes_and_offsets(tmp_path: Path) -> None:
    (tmp_path / "night.yaml").write_text(
        "name: night\nsummary: dark stairwell, then a power cut\nduration_s: 30\n"
        "include: [{scenario: dark_stairwell, at: 0}, {scenario: power_cut, at: 300}]\n")
    fleet = load_fleet(REGISTRY)
    import random

    actions, duration, cast = compose([(load_scenario(str(tmp_path / "night.yaml")), 0.0)], fleet,
                                      random.Random(0), {})
    assert duration == 340
    assert set(cast) == {"night", "dark_stairwell", "power_cut"}
    vanishes = [a for a in actions if a.op == "vanish"]
    assert vanishes and all(a.s == 320 for a in vanishes)
    assert [a.s for a in actions] == sorted(a.s for a in actions)


def test_unknown_scenario_names_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(["scenario", "no_such_thing", "--registry", str(REGISTRY)]) == 2
    assert "fire" in capsys.readouterr().err
