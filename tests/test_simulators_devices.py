"""Virtual devices living their normal life on the real private broker, each with its own ACL'd account."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from simulator_listener import HubListener

from gridhub.protocol import BrokerAddress, Event, Reading
from gridhub.simulators.behaviour import battery_pct, site_pressure_mpa
from gridhub.simulators.devices import DevicePool, run_fleet
from gridhub.simulators.fleet import (
    DeviceAccounts,
    device_password,
    load_fleet,
    read_credentials,
)

REGISTRY = Path(__file__).parent / "data" / "registry.yaml"


def test_device_password_matches_the_hubs_derivation(settings: Any) -> None:
    from gridhub.accounts import derived_password

    for dev in ("sa-0001", "cam-0001"):
        assert device_password(settings.secret_key, dev) == derived_password(settings.secret_key, "device", dev)


def test_credentials_csv_from_the_hub_is_read(settings: Any, tmp_path: Path) -> None:
    from gridhub.broker import write_credentials

    write_credentials(settings, tmp_path, reload=False)
    table = read_credentials(tmp_path / "device-credentials.csv")
    assert table["sp-0001"] == device_password(settings.secret_key, "sp-0001")
    assert "sa-0099" not in table  # retired: no account


def test_fleet_reports_online_realistic_values_frames_and_goes_offline(settings: Any, broker: Any) -> None:
    fleet = load_fleet(REGISTRY)
    listener = HubListener(broker.test_url, name="fleet")
    try:
        summary = asyncio.run(run_fleet(BrokerAddress.parse(broker.test_url),
                                        DeviceAccounts(secret=settings.secret_key), fleet.active, duration_s=3.0,
                                        spread_s=0.5))
        assert summary["errors"] == 0 and summary["connects"] == 7
        heard = listener.wait_for(lambda got: sum(m.payload == b"offline" for m in got) >= 7)
    finally:
        listener.close()
    by_topic: dict[str, list[bytes]] = {}
    for m in heard:
        if not m.retain:
            by_topic.setdefault(m.topic, []).append(m.payload)
    for dev in fleet.active:
        assert by_topic[f"gridhub/v1/devices/{dev.id}/status"] == [b"online", b"offline"], dev.id
    pressure = Reading.model_validate_json(by_topic["gridhub/v1/devices/sp-0001/telemetry"][0])
    assert abs(pressure.metrics["pressure_mpa"] - site_pressure_mpa("b-12")) < 0.05
    assert 0.3 <= site_pressure_mpa("b-12") <= 0.6
    smoke = Reading.model_validate_json(by_topic["gridhub/v1/devices/sa-0001/telemetry"][0])
    assert smoke.seq == 1 and smoke.metrics["battery_pct"] == battery_pct("sa-0001", smoke.ts)
    light = Reading.model_validate_json(by_topic["gridhub/v1/devices/sl-0001/telemetry"][0])
    assert isinstance(light.metrics["lamp_on"], bool) and light.metrics["lux"] >= 0
    beat = Event.model_validate_json(by_topic["gridhub/v1/devices/cam-0001/event"][0])
    assert beat.type == "heartbeat"
    # cam-0001's source is an RTSP URL in this registry: the hub pulls its frames, the simulator sends none
    assert "gridhub/v1/devices/cam-0001/frame" not in by_topic
    assert "gridhub/v1/devices/sa-0099/telemetry" not in by_topic  # retired devices are not played


def test_camera_with_mqtt_source_sends_jpeg_frames(settings: Any, broker: Any) -> None:
    import dataclasses

    cam = dataclasses.replace(load_fleet(REGISTRY).get("cam-0001"), camera={"roi": [[0.3, 0.42], [0.7, 0.42],
                                                                                    [0.98, 0.99], [0.02, 0.99]],
                                                                            "interval_s": 1})
    listener = HubListener(broker.test_url, name="frames")
    try:
        asyncio.run(run_fleet(BrokerAddress.parse(broker.test_url), DeviceAccounts(secret=settings.secret_key),
                              [cam], duration_s=2.5, spread_s=0.1))
        heard = listener.wait_for(lambda got: any(m.topic.endswith("/frame") for m in got))
    finally:
        listener.close()
    frames = [m for m in heard if m.topic == "gridhub/v1/devices/cam-0001/frame"]
    assert frames
    img = cv2.imdecode(np.frombuffer(frames[0].payload, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (360, 640, 3)
    assert int(dict(frames[0].user_properties)["ts"]) > 1_790_000_000_000


def test_a_vanished_device_has_its_will_delivered(settings: Any, broker: Any) -> None:
    listener = HubListener(broker.test_url, name="will")

    async def go() -> None:
        pool = DevicePool(BrokerAddress.parse(broker.test_url), DeviceAccounts(secret=settings.secret_key))
        await pool.link("sl-0001")
        await pool.existing("sl-0001").vanish()

    try:
        asyncio.run(go())
        heard = listener.wait_for(lambda got: any(m.payload == b"offline" for m in got))
    finally:
        listener.close()
    assert [m.payload for m in heard if m.topic.endswith("sl-0001/status") and not m.retain] == [b"online",
                                                                                                 b"offline"]


def test_a_device_cannot_speak_for_another(settings: Any, broker: Any) -> None:
    """The ACL: sa-0001's account publishing on sa-0002's topic never reaches the hub."""
    listener = HubListener(broker.test_url, name="acl")

    async def go() -> None:
        pool = DevicePool(BrokerAddress.parse(broker.test_url), DeviceAccounts(secret=settings.secret_key),
                          v5=False)
        link = await pool.link("sa-0001", announce=False)
        await link.raw("gridhub/v1/devices/sa-0002/event", b'{"ts": 1790000000000, "type": "alarm"}')
        await link.event(1_790_000_000_001, "heartbeat")
        await pool.close_all(say_offline=False)

    try:
        asyncio.run(go())
        heard = listener.wait_for(lambda got: any("sa-0001/event" in m.topic for m in got))
    finally:
        listener.close()
    assert [m.topic for m in heard if "/event" in m.topic] == ["gridhub/v1/devices/sa-0001/event"]


def test_devices_cli_needs_accounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gridhub.simulators.cli import main

    monkeypatch.delenv("GRIDHUB_SECRET_KEY", raising=False)
    monkeypatch.setenv("GRIDHUB_DATA_DIR", str(tmp_path))
    assert main(["devices", "--registry", str(REGISTRY), "--broker", "mqtt://u:p@127.0.0.1:1"]) == 2
    assert "--credentials" in capsys.readouterr().err
