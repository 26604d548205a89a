"""`gridhub demo` as a process on a database and broker of the test's own: the demo district is imported, its
devices come alive, the demo log-ins work, and an interrupt stops every process the demo started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.db import migrate
from gridhub.registry import import_registry, load_file
from gridhub.services.mosquitto import start_private_mosquitto
from gridhub.services.process import free_port
from gridhub.settings import Settings
from gridhub.simulators.fleet import demo_district_path

SECRET = "demo-test-secret-" + "d" * 32


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 - local test URL
            return r.status, r.read()
    except OSError:
        return 0, b""


def test_demo_comes_alive_and_stops_on_interrupt(make_database: Callable[[], str], tmp_path: Path) -> None:
    db_url = make_database()
    # the broker is the test's own, so the demo cannot give it accounts: the test does, from the same registry
    migrate(db_url)
    with psycopg.connect(db_url) as conn:
        import_registry(conn, load_file(demo_district_path()))
    broker = start_private_mosquitto(tmp_path)
    hub_url = f"mqtt://gridhub-hub:{broker.hub_password()}@127.0.0.1:{broker.port}"
    settings = Settings(database_url=db_url, mqtt_url=hub_url, data_dir=tmp_path, secret_key=SECRET)
    with psycopg.connect(db_url) as conn:
        accounts, workers, hub = build_accounts(conn, settings)
    broker.apply_accounts(passwd_text(accounts), acl_text(settings.topic_prefix, hub.username, workers))
    port = free_port()
    env = {**os.environ, "GRIDHUB_DATABASE_URL": db_url, "GRIDHUB_MQTT_URL": hub_url,
           "GRIDHUB_DATA_DIR": str(tmp_path), "GRIDHUB_SECRET_KEY": SECRET, "GRIDHUB_INSTANCE_ID": "demo-test"}
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "demo", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=str(tmp_path), start_new_session=True)
    parts: list[int] = []
    try:
        board = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        online = 0
        with psycopg.connect(db_url, autocommit=True) as conn:
            while time.monotonic() < deadline and demo.poll() is None:
                row = conn.execute("SELECT count(*) FROM device_state WHERE online").fetchone()
                online = row[0] if row else 0
                if online >= 360:
                    break
                time.sleep(1)
        assert demo.poll() is None, log.read_text()[-3000:]
        assert online >= 360, f"only {online} demo devices online\n{log.read_text()[-3000:]}"
        status, _ = _get(board + "healthz")
        assert status == 200
        form = urllib.parse.urlencode({"username": "b-001", "password": "demo-b-001"}).encode()
        with urllib.request.urlopen(board + "api/v1/auth/token", data=form, timeout=5) as r:  # noqa: S310
            assert json.loads(r.read())["access_token"]
        text = log.read_text()
        assert f"the board is at {board}" in text
        assert "b-001 / demo-b-001" in text and "w-001 / demo-w-001" in text
        parts = _children(demo.pid)
        assert len(parts) >= 3  # ingest, alerts, api (and detect)
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            rc = demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
            pytest.fail(f"the demo did not stop within 60 s of an interrupt\n{log.read_text()[-3000:]}")
        finally:
            broker.stop()
    assert rc == 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in parts):
        time.sleep(0.2)
    assert not [p for p in parts if _alive(p)], "the demo left processes running"
