"""`gridhub notify run` as a real process against the signed-webhook stand-in: killed with SIGKILL while the
stand-in holds its request open, it loses nothing, and the next sender sends that delivery again once, with the
same delivery id; a channel that refuses connections is retried until it answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from polling import wait_for as wait_until
from standins import WebhookReceiver

from gridhub.alerts import changes, tasks
from gridhub.alerts.notify import plan
from gridhub.alerts.rules import load_rules
from gridhub.settings import get_settings

RULES = load_rules()


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as h:
        yield h


@pytest.fixture
def setup(make_registry_database: Callable[[], str], broker: Any, tmp_path: Path, hook: WebhookReceiver,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    url = make_registry_database()
    nfile = tmp_path / "notify.yaml"
    nfile.write_text(
        "channels:\n"
        f"  city: {{type: webhook, url: \"{hook.url}\", secret: \"${{CITY_HOOK_SECRET}}\"}}\n"
        "routes:\n  critical: {assignee: [city]}\n  normal: {assignee: [city]}\n"
        "sender_lease_s: 4\n", encoding="utf-8")
    monkeypatch.setenv("GRIDHUB_NOTIFY_FILE", str(nfile))
    monkeypatch.setenv("CITY_HOOK_SECRET", hook.secret)
    get_settings.cache_clear()
    plan.reset_config()
    env = {**os.environ, "GRIDHUB_DATABASE_URL": url, "GRIDHUB_MQTT_URL": broker.test_url,
           "GRIDHUB_DATA_DIR": str(tmp_path), "GRIDHUB_NOTIFY_FILE": str(nfile), "CITY_HOOK_SECRET": hook.secret}
    procs: list[subprocess.Popen[bytes]] = []

    def start_sender() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"notify-{len(procs)}.log").open("ab")  # noqa: SIM115 - the child owns it
        p = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "notify", "run"], env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    yield {"url": url, "start_sender": start_sender, "tmp": tmp_path}
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    plan.reset_config()
    get_settings.cache_clear()


def open_task(url: str, severity: str = "critical") -> str:
    now = datetime.now(UTC)
    with psycopg.connect(url) as conn:
        alert_id = tasks.new_id("al", now)
        with changes.UnitOfWork(conn) as uow:
            conn.execute("INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, first_seen,"
                         " last_seen, state) VALUES (%s, 'sa-0001', 'b-12', 'g-xg-01', 'fire_alarm', %s, %s, %s,"
                         " 'cleared')",
                         (alert_id, severity, now, now))
            task_id, _ = tasks.open_or_join_task(
                uow, alert_id=alert_id, alert_type="fire_alarm", severity=severity, incident_key=f"t:{alert_id}",
                grid_id="g-xg-01", building_id="b-12", device_id="sa-0001", seen=now, now=now, rules=RULES,
                note="test")
        conn.commit()
    return task_id


def delivery(url: str, task_id: str) -> tuple[str, str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT id, state, attempts FROM notify_deliveries WHERE task_id = %s", (task_id,)).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_killed_mid_request_the_delivery_is_sent_again_once_with_the_same_id(
        setup: dict[str, Any], hook: WebhookReceiver) -> None:
    hook.hold()
    first = setup["start_sender"]()
    task_id = open_task(setup["url"])
    hook.wait_for(1, timeout=30)  # the request is in flight, the stand-in holds it open
    delivery_id, state, attempts = delivery(setup["url"], task_id)
    assert (state, attempts) == ("sending", 1)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    hook.release()  # the answer goes nowhere: the outcome is unknown to the hub
    second = setup["start_sender"]()
    hook.wait_for(2, timeout=30)
    wait_until(lambda: delivery(setup["url"], task_id)[1] == "sent", timeout=15, what="the delivery recorded as sent")
    assert hook.delivery_ids() == [delivery_id, delivery_id]
    assert hook.received[1].json["task"]["id"] == task_id and hook.received[1].json["event"] == "task.opened"
    assert delivery(setup["url"], task_id) == (delivery_id, "sent", 2)
    other = open_task(setup["url"])  # the sender goes on with new work, and the old delivery is not sent a third time
    hook.wait_for(3, timeout=30)
    time.sleep(1)
    assert hook.delivery_ids().count(delivery_id) == 2
    assert delivery(setup["url"], other)[1] in ("sending", "sent")
    with psycopg.connect(setup["url"]) as conn:
        notes = [r[0] for r in conn.execute("SELECT note FROM task_history WHERE task_id = %s AND action = 'notified'",
                                            (task_id,))]
    assert len(notes) == 1 and delivery_id in notes[0] and "attempt 2" in notes[0]
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0


def test_a_refusing_channel_is_retried_until_it_answers(setup: dict[str, Any], hook: WebhookReceiver) -> None:
    hook.refuse()
    setup["start_sender"]()
    task_id = open_task(setup["url"])
    wait_until(lambda: delivery(setup["url"], task_id)[2] >= 1 and delivery(setup["url"], task_id)[1] == "pending",
               timeout=30, what="a failed first attempt, to be retried")
    with psycopg.connect(setup["url"]) as conn:
        answer = conn.execute("SELECT answer FROM notify_deliveries WHERE task_id = %s", (task_id,)).fetchone()
    assert answer is not None and answer[0]
    hook.listen()
    hook.wait_for(1, timeout=30)
    wait_until(lambda: delivery(setup["url"], task_id)[1] == "sent", timeout=15, what="sent after the retry")
    assert hook.delivery_ids() == [delivery(setup["url"], task_id)[0]]
