"""End to end: scenarios played on a hub of the test's own (database, broker, `gridhub ingest` and
`gridhub alerts` as processes) make the alerts, tasks and quarantine rows they should."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ingest_env import SECRET, Hub, make_hub, wait_connected
from polling import poll, wait_for

from gridhub.simulators.cli import main as simulate
from gridhub.simulators.district import dump_registry, generate_district


@pytest.fixture(scope="module")
def hub(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Path]]:
    """A small generated district on a hub of its own, with ingest and alerts running."""
    tmp = tmp_path_factory.mktemp("scenario-hub")
    registry = tmp / "district.yaml"
    registry.write_text(dump_registry(generate_district("small")))
    h = make_hub(make_database, tmp, registry)
    rules = tmp / "rules.yaml"
    rules.write_text("offline: {grace_margin_s: 2}\n")
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    parts = ["ingest", "alerts"] + (["detect"] if _has_live_detector() else [])
    for part in parts:
        log = tmp / f"{part}.log"
        env = {**h.env(f"e2e-{part}"), "GRIDHUB_RULES_FILE": str(rules)}
        with log.open("ab") as out:
            procs.append((subprocess.Popen([sys.executable, "-m", "gridhub.cli", part], env=env, stdout=out,
                                           stderr=subprocess.STDOUT, cwd=str(tmp)), log))
    try:
        wait_connected(tmp / "ingest.log")
        with psycopg.connect(h.db_url, autocommit=True) as conn:
            _wait_alerts_listening(h, registry, conn)
        yield h, registry
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        h.broker.stop()


def _has_live_detector() -> bool:
    try:
        import gridhub.detectors.live  # noqa: F401
    except ImportError:
        return False
    return True


def _wait_alerts_listening(h: Hub, registry: Path, conn: psycopg.Connection[Any]) -> None:
    """Heartbeats from one device until the alert engine has seen one (its subscription exists from then on)."""

    def probed() -> bool:
        _play(h, registry, "garbage-free-probe")
        return conn.execute("SELECT 1 FROM rule_events WHERE device_id = 'sa-0048'").fetchone() is not None

    wait_for(probed, 60, "the alerts process to start evaluating", interval=0.5)


def _play(h: Hub, registry: Path, name: str, *args: str) -> dict[str, Any]:
    if name == "garbage-free-probe":  # one heartbeat of the last smoke alarm
        probe = registry.parent / "probe.yaml"
        probe.write_text("name: probe\nsummary: a heartbeat\nduration_s: 1\n"
                         "cast: {a: {ids: [sa-0048]}}\nsteps: [{who: a, event: heartbeat}]\n")
        name = str(probe)
    assert h.settings.mqtt_url
    argv = ["scenario", name, *args, "--broker", h.settings.mqtt_url, "--registry", str(registry), "--secret", SECRET]
    rc = simulate(argv)
    assert rc == 0, f"gridhub simulate {' '.join(argv)} failed"
    return {}


def _wait_rows(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...], done: Callable[[list[Any]], bool],
               timeout: float = 90) -> list[Any]:
    _, rows = poll(lambda: conn.execute(sql, params).fetchall(), done, timeout=timeout, interval=0.5)
    assert isinstance(rows, list)
    return rows


ALERTS = "SELECT type, device_id, building_id, task_id, state FROM alerts WHERE building_id = %s"


def _types(rows: list[Any]) -> set[str]:
    return {r[0] for r in rows}


@pytest.fixture
def conn(hub: tuple[Hub, Path]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(hub[0].db_url, autocommit=True) as c:
        yield c


def _tasks_of(conn: psycopg.Connection[Any], rows: list[Any], types: set[str]) -> list[Any]:
    ids = sorted({r[3] for r in rows if r[0] in types})
    assert None not in ids, f"an alert without a task: {rows}"
    return conn.execute("SELECT id, type, severity, state, building_id FROM tasks WHERE id = ANY(%s)", (ids,)).fetchall()


def test_fire_makes_alarms_a_building_incident_and_a_sprinkler_drop(hub: tuple[Hub, Path],
                                                                   conn: psycopg.Connection[Any]) -> None:
    h, registry = hub
    building = "b-shapowei-01"
    _play(h, registry, "fire", "--speed", "40", "--cast", f"building={building}")
    want = {"fire_alarm", "fire_incident", "sprinkler_drop"}
    rows = _wait_rows(conn, ALERTS, (building,), lambda rs: want <= _types(rs))
    assert want <= _types(rows), rows
    assert len({r[1] for r in rows if r[0] == "fire_alarm"}) == 3  # three alarms spread through the building
    assert len([r for r in rows if r[0] == "fire_incident"]) == 1  # one incident, not three
    tasks = _tasks_of(conn, rows, want)
    assert any(t[1] == "fire_incident" and t[2] == "critical" for t in tasks), tasks


def test_pressure_loss_makes_drop_low_and_critical(hub: tuple[Hub, Path], conn: psycopg.Connection[Any]) -> None:
    h, registry = hub
    _play(h, registry, "pressure_loss", "--speed", "40", "--cast", "sprinkler=sp-0002")
    want = {"sprinkler_drop", "sprinkler_low", "sprinkler_critical"}
    rows = _wait_rows(conn, ALERTS, ("b-shapowei-02",), lambda rs: want <= _types(rs))
    assert want <= _types(rows), rows
    assert all(r[1] == "sp-0002" for r in rows if r[0] in want)
    tasks = _tasks_of(conn, rows, want)
    assert {t[2] for t in tasks if t[1] == "sprinkler_critical"} == {"critical"}


def test_dark_stairwell_makes_light_faults(hub: tuple[Hub, Path], conn: psycopg.Connection[Any]) -> None:
    h, registry = hub
    _play(h, registry, "dark_stairwell", "--speed", "40", "--cast", "dark=sl-0007", "--cast", "broken=sl-0008")
    rows = _wait_rows(conn, ALERTS, ("b-shapowei-03",),
                      lambda rs: {r[1] for r in rs if r[0] == "light_fault"} >= {"sl-0007", "sl-0008"})
    assert {r[1] for r in rows if r[0] == "light_fault"} == {"sl-0007", "sl-0008"}, rows
    tasks = _tasks_of(conn, rows, {"light_fault"})
    assert len(tasks) == 2 and {t[2] for t in tasks} == {"normal"}


def test_power_cut_takes_a_building_offline(hub: tuple[Hub, Path], conn: psycopg.Connection[Any]) -> None:
    h, registry = hub
    building = "b-shapowei-04"
    devices = {r[0] for r in conn.execute("SELECT id FROM devices WHERE building_id = %s AND NOT retired",
                                          (building,))}
    assert len(devices) >= 10
    _play(h, registry, "power_cut", "--speed", "10", "--cast", f"building={building}")
    rows = _wait_rows(conn, ALERTS, (building,),
                      lambda rs: {r[1] for r in rs if r[0] == "device_offline"} >= devices)
    assert {r[1] for r in rows if r[0] == "device_offline"} == devices
    offline = conn.execute("SELECT count(*) FROM device_state WHERE device_id = ANY(%s) AND NOT online",
                           (sorted(devices),)).fetchone()
    assert offline is not None and offline[0] == len(devices)
    _tasks_of(conn, rows, {"device_offline"})


def test_garbage_is_quarantined_with_every_reason(hub: tuple[Hub, Path], conn: psycopg.Connection[Any]) -> None:
    h, registry = hub
    # frames are the detector's: bad_frame is checked in the next test
    want = {"bad_topic", "oversize", "invalid_json", "schema", "unregistered_device", "unknown_event",
            "out_of_range", "clock_skew"}
    _play(h, registry, "garbage", "--speed", "4", "--cast", "pump=sp-0005", "--cast", "alarm=sa-0030")
    rows = _wait_rows(conn, "SELECT reason, topic, device_id FROM quarantine", (),
                      lambda rs: want <= {r[0] for r in rs} and len(rs) >= 10, timeout=60)
    reasons = [r[0] for r in rows]
    assert want <= set(reasons), rows
    assert reasons.count("invalid_json") == 2 and reasons.count("unregistered_device") == 2
    assert {r[2] for r in rows if r[0] == "unregistered_device"} == {"sa-ghost-9999", "sa-0000"}


def test_garbage_frame_is_quarantined_by_the_detector(hub: tuple[Hub, Path], conn: psycopg.Connection[Any]) -> None:
    if not _has_live_detector():
        pytest.skip("no live detector yet (gridhub.detectors.live): bad_frame is its quarantine reason")
    h, registry = hub
    _play(h, registry, "garbage", "--speed", "4", "--cast", "pump=sp-0006", "--cast", "alarm=sa-0031",
          "--cast", "camera=cam-0002")
    # the previous test's garbage left cam-0001's bad frame: wait for this camera's own
    rows = _wait_rows(conn, "SELECT reason, device_id FROM quarantine WHERE reason = 'bad_frame'", (),
                      lambda rs: ("bad_frame", "cam-0002") in rs, timeout=60)
    assert ("bad_frame", "cam-0002") in rows


def test_exit_blocked_is_found_by_the_detector(hub: tuple[Hub, Path], conn: psycopg.Connection[Any]) -> None:
    if not _has_live_detector():
        pytest.skip("no live detector yet (gridhub.detectors.live): it raises exit_blocked from frames")
    h, registry = hub
    _play(h, registry, "exit_blocked", "--speed", "10", "--cast", "camera=cam-0003")
    rows = _wait_rows(conn, "SELECT type, task_id FROM alerts WHERE device_id = 'cam-0003'", (),
                      lambda rs: any(r[0] == "exit_blocked" for r in rs), timeout=60)
    assert [r for r in rows if r[0] == "exit_blocked" and r[1]], rows


def test_cli_json_summary_names_the_cast(hub: tuple[Hub, Path], capsys: pytest.CaptureFixture[str]) -> None:
    h, registry = hub
    assert h.settings.mqtt_url
    rc = simulate(["scenario", "power_cut", "--speed", "20", "--cast", "building=b-daxuelu-01", "--broker",
                   h.settings.mqtt_url, "--registry", str(registry), "--secret", SECRET])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and summary["cast"]["power_cut"]["building"] == ["b-daxuelu-01"]
    assert summary["counts"]["vanish"] == len(summary["cast"]["power_cut"]["everyone"])
    assert os.environ.get("GRIDHUB_MQTT_URL") != h.settings.mqtt_url  # the test did not leak its hub
