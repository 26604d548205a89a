"""The two pages in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) on a whole hub of their own:
a fresh database, a private mosquitto, `gridhub ingest` and `gridhub alerts` as subprocesses, and the API.

A fire alarm published over MQTT reaches the board without a reload; a worker accepts and resolves the task on
/worker and the board follows. The screenshots for the README are written to docs/ with
GRIDHUB_UPDATE_SCREENSHOTS=1 (else to the test's data directory)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import psycopg
import pytest
from apitools import RunningApi, serve, tiny_jpeg
from browser_support import chromium, phone_context, registered_database, submit_login, watch, watched_page
from paho.mqtt.enums import CallbackAPIVersion

from gridhub.accounts import derived_password, mosquitto_hash
from gridhub.broker import acl_text, build_accounts, passwd_text
from gridhub.mqtt import BrokerAddress
from gridhub.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
WAIT_MS = 90_000  # generous: the alert engine leases its shards and the stream wakes on commit


class Hub:
    def __init__(self, settings: Settings, api: RunningApi, passwords: dict[str, str]) -> None:
        self.settings = settings
        self.api = api
        self.passwords = passwords
        self.seq = 0

    def publish(self, device_id: str, channel: str, payload: dict[str, Any]) -> None:
        """Publish as the device itself, with its own broker account, and wait for the broker's PUBACK."""
        addr = BrokerAddress.parse(self.settings.mqtt_url or "")
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{secrets.token_hex(3)}")
        client.username_pw_set(device_id, derived_password(self.settings.signing_key(), "device", device_id))
        client.connect(addr.host, addr.port)
        client.loop_start()
        try:
            info = client.publish(f"{self.settings.topic_prefix}/devices/{device_id}/{channel}",
                                  json.dumps(payload), qos=1)
            info.wait_for_publish(10)
            assert info.is_published(), f"the broker did not take {device_id}'s {channel}"
        finally:
            client.disconnect()
            client.loop_stop()

    def event(self, device_id: str, type_: str, detail: dict[str, Any] | None = None) -> None:
        self.seq += 1
        self.publish(device_id, "event", {"ts": int(time.time() * 1000), "seq": self.seq, "type": type_,
                                          "detail": detail or {}})


def _part(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("gridhub", path=str(Path(sys.executable).parent)) or "gridhub"
    return subprocess.Popen([exe, name], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _corridor_jpeg() -> bytes:
    """A synthetic camera view of an exit corridor with a parked e-bike across it (for the evidence panel)."""
    img = np.full((240, 320, 3), (70, 75, 80), np.uint8)
    cv2.fillPoly(img, [np.array([[96, 100], [224, 100], [314, 238], [6, 238]])], (150, 150, 145))
    cv2.rectangle(img, (130, 30), (190, 100), (40, 120, 40), -1)  # the exit door
    cv2.circle(img, (120, 200), 22, (20, 20, 20), 5)
    cv2.circle(img, (200, 200), 22, (20, 20, 20), 5)
    cv2.line(img, (120, 200), (160, 165), (30, 30, 200), 6)
    cv2.line(img, (160, 165), (200, 200), (30, 30, 200), 6)
    cv2.line(img, (160, 165), (175, 150), (30, 30, 200), 6)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return bytes(buf)


@pytest.fixture(scope="module")
def hub(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    from gridhub.services.mosquitto import start_private_mosquitto

    url, passwords = registered_database(make_database, "browser")
    hub_pw = secrets.token_urlsafe(16)
    work = tmp_path_factory.mktemp("browser-hub")
    mq = start_private_mosquitto(work, passwd_text=f"gridhub-hub:{mosquitto_hash(hub_pw)}\n",
                                 acl_text=acl_text("gridhub/v1", "gridhub-hub", []))
    settings = Settings(database_url=url, mqtt_url=f"mqtt://gridhub-hub:{hub_pw}@127.0.0.1:{mq.port}",
                        data_dir=work / "data", secret_key="browser-secret-" + "z" * 40,
                        instance_id=f"browser{os.getpid()}")
    with psycopg.connect(url) as conn:
        accounts, workers, hub_account = build_accounts(conn, settings)
        _seed(conn)
        conn.commit()
    mq.apply_accounts(passwd_text(accounts), acl_text(settings.topic_prefix, hub_account.username, workers))
    env = {**os.environ, "GRIDHUB_DATABASE_URL": url, "GRIDHUB_MQTT_URL": settings.mqtt_url or "",
           "GRIDHUB_SECRET_KEY": settings.secret_key or "", "GRIDHUB_DATA_DIR": str(settings.data_dir),
           "GRIDHUB_INSTANCE_ID": settings.instance_id}
    parts = [_part(p, env, work / f"{p}.log") for p in ("ingest", "alerts")]
    # the parts subscribe before anything is published: a QoS 1 message sent earlier has no session to wait in
    ready_at = time.monotonic() + 90
    for name, mark in (("ingest", " connected (MQTT"), ("alerts", " running")):
        while mark not in (work / f"{name}.log").read_text(errors="replace"):
            assert time.monotonic() < ready_at, f"{name} did not start:\n{(work / f'{name}.log').read_text()}"
            time.sleep(0.1)
    api = serve(settings)
    try:
        yield Hub(settings, api, passwords)
    finally:
        api.stop()
        for p in parts:
            _stop(p)
        mq.stop()


def _seed(conn: psycopg.Connection[Any]) -> None:
    """A day of sprinkler pressure for the chart and a detection image of a blocked exit."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    with conn.cursor().copy("COPY readings (ts, device_id, seq, metric, value) FROM STDIN") as cp:
        for i in range(24 * 12):
            ts = now - timedelta(minutes=5 * i)
            dip = 0.09 if 40 <= i < 52 else 0.0  # a low spell two to four hours ago
            cp.write_row((ts, "sp-0001", 100000 - i, "pressure_mpa",
                          round(0.32 - dip * 2.4 + 0.01 * np.sin(i / 7), 3)))
    conn.execute("INSERT INTO evidence (id, device_id, kind, data, created_by) VALUES ('ev-seed-cam', 'cam-0001',"
                 " 'detection', %s, 'detector')", (_corridor_jpeg(),))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def board(browser: Any, hub: Hub) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1100}, locale="zh-CN",
                                  timezone_id="Asia/Shanghai")
    page = context.new_page()
    page.errors = watch(page)
    yield page
    context.close()


def test_board_log_in(board: Any, hub: Hub) -> None:
    submit_login(board, hub.api.url + "/", "b-001", "wrong-password")
    board.get_by_test_id("login-error").filter(has_text="用户名或密码错误").wait_for(timeout=WAIT_MS)
    submit_login(board, hub.api.url + "/", "b-001", hub.passwords["b-001"])
    board.get_by_test_id("who").filter(has_text="孙八").wait_for(timeout=WAIT_MS)
    board.get_by_test_id("grid-g-xg-01").wait_for(timeout=WAIT_MS)
    assert board.get_by_test_id("grid-g-xg-01").get_attribute("data-worst") == "none"
    assert "一网格" in board.get_by_test_id("grid-g-xg-01").inner_text()
    assert "沙坡尾社区" in board.get_by_test_id("map").inner_text()
    board.get_by_test_id("live").filter(has_text="实时").wait_for(timeout=WAIT_MS)
    board.get_by_test_id("evidence-item").first.wait_for(timeout=WAIT_MS)
    board.locator("#chart-body .uplot").wait_for(timeout=WAIT_MS)
    assert board.errors == []


def test_a_fire_alarm_over_mqtt_appears_without_reload(board: Any, hub: Hub) -> None:
    board.evaluate("window.__sameDocument = true")
    hub.event("sa-0001", "alarm")
    board.locator("[data-testid=alert-row][data-type=fire_alarm]").wait_for(timeout=WAIT_MS)
    board.locator("[data-testid=grid-g-xg-01][data-worst=critical]").wait_for(timeout=WAIT_MS)
    board.locator("[data-testid=column-open] [data-testid=task-card]").first.wait_for(timeout=WAIT_MS)
    assert board.evaluate("window.__sameDocument") is True  # no reload happened
    assert board.get_by_test_id("grid-g-xg-02").get_attribute("data-worst") == "none"
    assert board.errors == []


def test_a_worker_accepts_and_resolves_on_the_phone_and_the_board_follows(browser: Any, board: Any,
                                                                         hub: Hub) -> None:
    with watched_page(phone_context(browser)) as (phone, errors):
        submit_login(phone, hub.api.url + "/worker", "w-001", hub.passwords["w-001"])
        card = phone.locator("[data-testid=task-card]").first
        card.wait_for(timeout=WAIT_MS)
        task_id = card.get_attribute("data-task-id")
        assert "12号楼" in card.get_by_test_id("place").inner_text()
        assert "3层" in card.get_by_test_id("place").inner_text() and "301 厨房" in card.inner_text()
        assert card.get_by_test_id("countdown").inner_text().startswith("接单")
        assert card.get_by_test_id("action-arrive").count() == 0  # not allowed before accepting
        card.get_by_test_id("action-accept").click()
        phone.locator(f"[data-task-id='{task_id}'][data-state=accepted]").wait_for(timeout=WAIT_MS)
        board.locator(f"[data-testid=column-accepted] [data-task-id='{task_id}']").wait_for(timeout=WAIT_MS)
        card = phone.locator(f"[data-task-id='{task_id}']")
        card.get_by_test_id("photo").set_input_files(files=[{"name": "scene.jpg", "mimeType": "image/jpeg",
                                                             "buffer": tiny_jpeg()}])
        card.get_by_test_id("note").fill("厨房油烟，无明火")
        card.get_by_test_id("upload-photo").click()
        phone.locator(f"[data-task-id='{task_id}'] details li", has_text="照片").wait_for(state="attached", timeout=WAIT_MS)
        board.locator("[data-testid=evidence-item]", has_text="现场照片").first.wait_for(timeout=WAIT_MS)
        card = phone.locator(f"[data-task-id='{task_id}']")
        card.get_by_test_id("resolution").select_option("false_alarm")
        card.get_by_test_id("note").fill("厨房油烟误报，已提醒住户")
        card.get_by_test_id("action-resolve").click()
        phone.locator(f"[data-task-id='{task_id}'][data-state=resolved]").wait_for(timeout=WAIT_MS)
        board.locator(f"[data-testid=column-resolved] [data-task-id='{task_id}']").wait_for(timeout=WAIT_MS)
        assert board.locator(f"[data-testid=column-accepted] [data-task-id='{task_id}']").count() == 0
        assert errors == [] and board.errors == []
        _screenshots(board, phone, hub)


def _screenshots(board: Any, phone: Any, hub: Hub) -> None:
    """The README's pictures: the board with an open fire and a blocked exit, the worker's task list."""
    hub.event("cam-0001", "exit_blocked", {"occupancy": 0.23, "evidence_id": "ev-seed-cam"})
    hub.event("sa-0201", "low_battery")
    board.locator("[data-testid=alert-row][data-type=exit_blocked]").wait_for(timeout=WAIT_MS)
    phone.locator("[data-testid=task-card][data-state=open]").first.wait_for(timeout=WAIT_MS)
    out = DOCS if os.environ.get("GRIDHUB_UPDATE_SCREENSHOTS") == "1" else hub.settings.data_dir
    out.mkdir(parents=True, exist_ok=True)
    board.wait_for_timeout(1500)  # let the live re-render and the chart settle for the picture
    board.screenshot(path=str(out / "board.png"), full_page=True)
    phone.screenshot(path=str(out / "worker.png"), full_page=False)
    assert (out / "board.png").stat().st_size > 10_000 and (out / "worker.png").stat().st_size > 10_000
