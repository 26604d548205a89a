"""The load generator on the real private broker: what it says it sent is what a hub subscriber receives."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from simulator_listener import HubListener

from gridhub.protocol import METRICS, DeviceKind, Reading, parse_topic
from gridhub.simulators.cli import main as simulate

REGISTRY = Path(__file__).parent / "data" / "registry.yaml"
TELEMETRY_DEVICES = {"sa-0001": DeviceKind.SMOKE_ALARM, "sa-0002": DeviceKind.SMOKE_ALARM,
                     "sa-0201": DeviceKind.SMOKE_ALARM, "sl-0001": DeviceKind.STAIRWELL_LIGHT,
                     "sp-0001": DeviceKind.SPRINKLER_PRESSURE, "sp-0201": DeviceKind.SPRINKLER_PRESSURE}


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any]]:
    rc = simulate(argv)
    out = capsys.readouterr().out.strip().splitlines()
    return rc, json.loads(out[-1])


def _check_readings(heard: list[Any], expected: int) -> dict[str, list[int]]:
    telemetry = [m for m in heard if m.topic.endswith("/telemetry")]
    assert len(telemetry) == expected
    seqs: dict[str, list[int]] = defaultdict(list)
    for m in telemetry:
        dev = parse_topic(m.topic).device_id
        assert dev in TELEMETRY_DEVICES, f"{dev} is not a registered telemetry device"
        reading = Reading.model_validate_json(m.payload)
        specs = METRICS[TELEMETRY_DEVICES[dev]]
        assert set(reading.metrics) == set(specs)
        for name, value in reading.metrics.items():
            spec = specs[name]
            if spec.kind == "bool":
                assert isinstance(value, bool)
            else:
                assert spec.low is None or value >= spec.low
                assert spec.high is None or value <= spec.high
        assert reading.seq is not None
        seqs[dev].append(reading.seq)
    return seqs


def test_load_with_device_accounts(settings: Any, broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    listener = HubListener(broker.test_url, name="load-dev")
    try:
        rc, summary = _run(capsys, ["--devices", "4", "--rate", "80", "--duration", "1.5", "--broker",
                                    broker.test_url, "--registry", str(REGISTRY), "--secret", settings.secret_key])
        assert rc == 0, summary
        assert summary["mode"] == "per-device" and summary["connections"] == 4
        assert summary["errors"] == 0 and summary["connect_errors"] == 0
        assert summary["sent"] == summary["acked"] > 0
        heard = listener.wait_for(lambda got: len(got) >= summary["acked"])
        seqs = _check_readings(heard, summary["acked"])
        assert len(seqs) == 4
        for s in seqs.values():  # each device counts 1, 2, 3, ... with no gap
            assert s == list(range(1, len(s) + 1))
    finally:
        listener.close()


def test_load_multiplexed_over_hub_account(settings: Any, broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    listener = HubListener(broker.test_url, name="load-mux")
    try:
        rc, summary = _run(capsys, ["load", "--rate", "200", "--duration", "1", "--connections", "2", "--broker",
                                    broker.test_url, "--registry", str(REGISTRY)])
        assert rc == 0, summary
        assert summary["mode"] == "multiplexed" and summary["connections"] == 2 and summary["devices"] == 6
        assert summary["sent"] == summary["acked"] > 0 and summary["errors"] == 0
        heard = listener.wait_for(lambda got: len(got) >= summary["acked"])
        assert len(_check_readings(heard, summary["acked"])) == 6
    finally:
        listener.close()


def test_load_with_a_wrong_secret_is_refused_and_says_so(settings: Any, broker: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    rc, summary = _run(capsys, ["--devices", "2", "--rate", "10", "--duration", "0.5", "--broker", broker.test_url,
                                "--registry", str(REGISTRY), "--secret", "not-the-hub-secret"])
    assert rc == 1
    assert summary["connect_errors"] == 2 and summary["sent"] == 0
    assert "sa-0001" in summary["first_error"] or "sa-0002" in summary["first_error"]


def test_load_refuses_more_devices_than_registered(capsys: pytest.CaptureFixture[str]) -> None:
    rc = simulate(["--devices", "50", "--rate", "10", "--duration", "1", "--broker", "mqtt://u:p@127.0.0.1:1",
                   "--registry", str(REGISTRY)])
    assert rc == 2
    assert "has 6 devices with telemetry" in capsys.readouterr().err


def test_load_split_over_two_processes(settings: Any, broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    listener = HubListener(broker.test_url, name="load-procs")
    try:
        rc, summary = _run(capsys, ["--rate", "100", "--duration", "1", "--processes", "2", "--broker",
                                    broker.test_url, "--registry", str(REGISTRY), "--secret", settings.secret_key])
        assert rc == 0, summary
        assert summary["processes"] == 2 and summary["devices"] == 6 and summary["connections"] == 6
        assert summary["sent"] == summary["acked"] > 0
        heard = listener.wait_for(lambda got: len(got) >= summary["acked"])
        assert len(_check_readings(heard, summary["acked"])) == 6
    finally:
        listener.close()
