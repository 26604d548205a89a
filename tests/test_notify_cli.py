"""`gridhub notify vapid-keys | check | test --to ID` as a person would run them, against the vendors' stand-ins."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from standins import HttpSmsGateway, PushService, WebhookReceiver, WecomRobot


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridhub.cli", "notify", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def standins() -> Iterator[dict[str, Any]]:
    out = {"hook": WebhookReceiver(), "sms": HttpSmsGateway(), "wecom": WecomRobot(), "push": PushService()}
    yield out
    for s in out.values():
        s.close()


@pytest.fixture
def env(make_registry_database: Callable[[], str], broker: Any, tmp_path: Path,
        standins: dict[str, Any]) -> dict[str, Any]:
    url = make_registry_database()
    vapid = tmp_path / "vapid.pem"
    e = {**os.environ, "GRIDHUB_DATABASE_URL": url, "GRIDHUB_MQTT_URL": broker.test_url,
         "GRIDHUB_DATA_DIR": str(tmp_path), "GRIDHUB_NOTIFY_FILE": str(tmp_path / "notify.yaml"),
         "HOOK_SECRET": standins["hook"].secret, "GW_TOKEN": standins["sms"].token}
    out = run(e, "vapid-keys", "--out", str(vapid))
    assert out.returncode == 0, out.stderr
    assert vapid.stat().st_mode & 0o777 == 0o600
    public = out.stdout.split("applicationServerKey): ")[1].strip()
    standins["push"].vapid_key = public
    (tmp_path / "notify.yaml").write_text(f"""
channels:
  push: {{type: webpush, vapid_private_key_file: "{vapid}", subject: "mailto:ops@example.org",
          allow_private_endpoints: true}}
  wecom: {{type: wecom_robot, url: "{standins['wecom'].url}"}}
  sms: {{type: sms, provider: http, url: "{standins['sms'].url}", headers: {{Authorization: "Bearer ${{GW_TOKEN}}"}}}}
  hook: {{type: webhook, url: "{standins['hook'].url}", secret: "${{HOOK_SECRET}}"}}
routes:
  critical: {{assignee: [push, wecom, sms], level1: [hook]}}
fallback_after_s: {{critical: 60}}
""", encoding="utf-8")
    sub = standins["push"].subscription()
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO push_subscriptions (id, worker_id, endpoint, p256dh, auth) VALUES"
                     " ('ps-cli', 'w-001', %s, %s, %s)", (sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"]))
    return {"env": e, "vapid": vapid, "url": url}


def test_vapid_keys_are_never_overwritten(env: dict[str, Any]) -> None:
    before = env["vapid"].read_bytes()
    out = run(env["env"], "vapid-keys", "--out", str(env["vapid"]))
    assert out.returncode == 2 and "not overwritten" in out.stderr
    assert env["vapid"].read_bytes() == before


def test_check_prints_the_channels_and_routes(env: dict[str, Any]) -> None:
    out = run(env["env"], "check")
    assert out.returncode == 0, out.stderr
    assert "channel sms: sms (http)" in out.stdout
    assert "route critical: assignee: push+wecom+sms, level1: hook; next level after 60 s without accept" in out.stdout


def test_check_names_the_line_and_field_of_a_mistake(env: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels:\n  sms: {type: sms, provider: aliyun}\nroutes:\n  critical: {assignee: [sms, pager]}\n")
    out = run({**env["env"], "GRIDHUB_NOTIFY_FILE": str(bad)}, "check")
    assert out.returncode == 2
    assert "line 2" in out.stderr and "access_key_id" in out.stderr


def test_a_test_message_goes_through_every_channel_the_person_has(env: dict[str, Any],
                                                                  standins: dict[str, Any]) -> None:
    out = run(env["env"], "test", "--to", "w-001")
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("push", "wecom", "sms", "hook"):
        assert f"{name} (" in out.stdout and "FAILED" not in out.stdout
    assert "张三" in standins["sms"].received[0].text
    assert standins["sms"].received[0].json["phone"] == "13800000001"
    assert standins["push"].received[0].json["title"].startswith("【测试】")
    assert "测试" in standins["wecom"].received[0].text
    assert standins["hook"].received[0].json["recipient"]["id"] == "w-001"


def test_a_test_message_to_someone_without_a_phone_or_push_skips_those(env: dict[str, Any],
                                                                        standins: dict[str, Any]) -> None:
    out = run(env["env"], "test", "--to", "w-002")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sms: skipped (w-002 has no phone)" in out.stdout
    assert "push: skipped (w-002 has no push subscription" in out.stdout
    assert not standins["sms"].received


def test_a_test_message_to_nobody_says_so(env: dict[str, Any]) -> None:
    out = run(env["env"], "test", "--to", "w-404")
    assert out.returncode == 1 and "no worker w-404" in out.stderr


def test_the_hub_refuses_to_start_with_a_notify_file_it_cannot_use(env: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels:\n  hook: {type: webhook, url: 'https://x'}\n")
    out = subprocess.run([sys.executable, "-m", "gridhub.cli", "alerts"], env={**env["env"], "GRIDHUB_NOTIFY_FILE": str(bad)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "line 2" in out.stderr and "channels.hook.secret" in out.stderr
