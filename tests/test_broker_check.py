"""The broker check (gridhub/brokercheck.py, issue 15): against a mosquitto configured like a stock one
(`max_queued_messages 1000`, `max_inflight_messages 20`, persistence on) the check refuses with a line naming
max_queued_messages, `gridhub ingest` and `gridhub alerts` exit 2 with that line, and with GRIDHUB_BROKER_CHECK=warn
ingest starts and logs the warning; against a broker configured as the project's own the check passes and leaves no
session behind; the embedded amqtt broker passes the probe too (it is skipped at start: see `skip_reason`)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from polling import wait_for

from gridhub.brokercheck import EMBEDDED_SKIP, check_at_start, needed_queue, probe_broker, run_check
from gridhub.db import migrate
from gridhub.registry import import_registry, load_file
from gridhub.services.mosquitto import LocalMosquitto
from gridhub.services.process import free_port
from gridhub.settings import Settings

DATA = Path(__file__).parent / "data"
SECRET = "broker-check-secret-" + "z" * 32


def _url(broker: LocalMosquitto) -> str:
    return f"mqtt://gridhub-hub:{broker.hub_password()}@127.0.0.1:{broker.port}"


@pytest.fixture(scope="module")
def stock_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    """A private mosquitto with a stock broker's limits (and persistence on, as a careful operator would have)."""
    broker = LocalMosquitto(tmp_path_factory.mktemp("stock") / "mosquitto", free_port(), device_port=free_port(),
                            max_inflight_messages=20, max_queued_messages=1000)
    broker.apply_accounts("", "")
    broker.ensure_started()
    assert "max_queued_messages 1000\n" in broker.conf_file.read_text()
    assert "persistence true\n" in broker.conf_file.read_text()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def hub_db(make_database: Callable[[], str]) -> str:
    url = make_database()
    migrate(url)
    with psycopg.connect(url) as conn:
        import_registry(conn, load_file(DATA / "registry.yaml"))
    return url


def _env(db_url: str, mqtt_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDHUB_")}
    env.update(GRIDHUB_DATABASE_URL=db_url, GRIDHUB_MQTT_URL=mqtt_url, GRIDHUB_SECRET_KEY=SECRET,
               GRIDHUB_INSTANCE_ID=f"bc-{uuid.uuid4().hex[:6]}", GRIDHUB_DATA_DIR=str(data_dir), **extra)
    return env


def _session_left(url: str, client_id: str) -> tuple[bool, int]:
    """Whether the broker still has a session for `client_id`, and how many messages it delivers to it; ends it."""
    port = int(url.rsplit(":", 1)[1])
    password = url.split("gridhub-hub:", 1)[1].rsplit("@", 1)[0]
    got: list[int] = []
    present: list[bool] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set("gridhub-hub", password)
    client.on_connect = lambda c, u, flags, rc, p=None: present.append(bool(flags.session_present))
    client.on_message = lambda c, u, m: got.append(1)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0  # whatever is found is gone after this look
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    try:
        wait_for(lambda: bool(present), 10, "CONNACK")
        time.sleep(0.5)  # anything the session still held would be delivered now
    finally:
        client.disconnect()
        client.loop_stop()
    return present[0], len(got)


def test_check_refuses_a_stock_broker_naming_max_queued_messages(stock_broker: LocalMosquitto,
                                                                 tmp_path: Path) -> None:
    settings = Settings(mqtt_url=_url(stock_broker), data_dir=tmp_path)
    report = run_check(settings)
    assert report.published == needed_queue(settings) >= 5000
    assert report.kept is not None and report.kept < report.published
    assert report.refused
    assert report.window == 20  # the CONNACK's Receive Maximum: mosquitto's max_inflight_messages
    line = report.refusal_line()
    assert "\n" not in line
    assert "max_queued_messages 0" in line and "max_inflight_messages" in line
    assert "Pointing the hub at your own broker" in line
    assert "max_queued_messages 0" in (check_at_start(settings, "ingest") or "")  # GRIDHUB_BROKER_CHECK=on
    assert _session_left(settings.mqtt_url or "", report.client_id) == (False, 0)


def test_check_off_does_not_probe(stock_broker: LocalMosquitto, tmp_path: Path) -> None:
    settings = Settings(mqtt_url=_url(stock_broker), data_dir=tmp_path, broker_check="off")
    assert check_at_start(settings, "ingest") is None


@pytest.mark.parametrize("part", ["ingest", "alerts"])
def test_part_exits_2_with_one_line_against_a_stock_broker(part: str, stock_broker: LocalMosquitto, hub_db: str,
                                                           tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "gridhub.cli", part], env=_env(hub_db, _url(stock_broker), tmp_path),
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    refusals = [line for line in res.stderr.splitlines() if line.startswith("gridhub: ")]
    assert len(refusals) == 1, res.stderr[-3000:]
    assert "max_queued_messages" in refusals[0] and "dropped the rest" in refusals[0]
    assert res.stderr.rstrip().endswith(refusals[0])  # the last thing it says
    assert "Traceback" not in res.stderr


def test_up_checks_once_before_the_parts_and_refuses(stock_broker: LocalMosquitto, hub_db: str,
                                                     tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "gridhub.cli", "up", "--parts", "ingest,alerts", "--port",
                          str(free_port())], env=_env(hub_db, _url(stock_broker), tmp_path), capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert res.stderr.rstrip().splitlines()[-1].startswith("gridhub: the broker at ")
    assert "max_queued_messages" in res.stderr
    assert "part ingest" not in res.stderr  # no part was started


def test_ingest_starts_with_a_loud_warning_in_warn_mode(stock_broker: LocalMosquitto, hub_db: str,
                                                        tmp_path: Path) -> None:
    log_path = tmp_path / "ingest.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "ingest"],
                                env=_env(hub_db, _url(stock_broker), tmp_path, GRIDHUB_BROKER_CHECK="warn"),
                                stdout=log, stderr=log, cwd=tmp_path)
    try:
        wait_for(lambda: " connected (MQTT" in log_path.read_text(errors="replace") or proc.poll() is not None, 120,
                 "ingest connected")
        text = log_path.read_text(errors="replace")
        assert proc.poll() is None, text[-3000:]
        assert "WARNING gridhub.brokercheck ingest: BROKER CHECK (GRIDHUB_BROKER_CHECK=warn, starting anyway)" in text
        assert "max_queued_messages" in text
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_projects_broker_passes_and_keeps_no_session(broker: Any, tmp_path: Path) -> None:
    """`broker` (tests/conftest.py) is a private mosquitto with the project's own configuration."""
    settings = Settings(mqtt_url=broker.test_url, data_dir=tmp_path)
    report = run_check(settings)
    assert not report.refused, report.findings
    assert report.findings == []
    assert report.mqtt5 and report.connack.get("ReceiveMaximum") == 4000
    assert report.kept == report.published == needed_queue(settings)
    assert report.window is None
    assert check_at_start(settings, "ingest") is None
    assert _session_left(broker.test_url, report.client_id) == (False, 0)
    assert _session_left(broker.test_url, f"{report.client_id}-pub") == (False, 0)
    # a second probe under the same client id starts from nothing and finds the same
    again = probe_broker(broker.test_url, topic_prefix=settings.topic_prefix, needed_queue=report.needed_queue,
                         client_id=report.client_id)
    assert again.kept == again.published and not again.refused
    assert _session_left(broker.test_url, report.client_id) == (False, 0)


def test_the_broker_check_command(stock_broker: LocalMosquitto, broker: Any, hub_db: str, tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "gridhub.cli", "broker", "check"],
                         env=_env(hub_db, _url(stock_broker), tmp_path), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert "refuse: it kept" in bad.stdout and "max_queued_messages" in bad.stderr
    good = subprocess.run([sys.executable, "-m", "gridhub.cli", "broker", "check"],
                          env=_env(hub_db, broker.test_url, tmp_path), capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok: the broker keeps" in good.stdout


def test_the_embedded_broker_is_probed_correctly_and_skipped_at_start(tmp_path: Path) -> None:
    """amqtt (MQTT 3.1.1 only) keeps what is queued for a disconnected session, in memory; the start-up check skips
    it (no limit to find, no persistence to fix) and says so."""
    pytest.importorskip("amqtt")
    from gridhub.services.embedded_broker import EmbeddedMqttBroker

    amqtt = EmbeddedMqttBroker(tmp_path / "amqtt", free_port())
    amqtt.apply_accounts("", "")
    amqtt.ensure_started()
    try:
        url = f"mqtt://gridhub-hub:{amqtt.hub_password()}@127.0.0.1:{amqtt.port}"
        report = probe_broker(url, topic_prefix="gridhub/v1", needed_queue=5000)
        assert not report.mqtt5
        assert report.kept == report.published == 5000
        assert not report.refused
    finally:
        amqtt.stop()
    assert "no persistence" in EMBEDDED_SKIP
