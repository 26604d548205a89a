"""The notify file (CONTRACT §6): parsing, errors with line and field, `${NAME}` expansion rules, quiet hours,
and the demo's own file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gridhub.notifyfile import NotifyFileError, expand, parse

SH = ZoneInfo("Asia/Shanghai")


def test_the_contract_example_parses() -> None:
    nf = parse("""
channels:
  wecom-xiagang: {type: wecom_robot, url: "https://x/webhook/send?key=${WECOM_XG_KEY}"}
  dingtalk-bureau: {type: dingtalk_robot, url: "https://x/robot/send?access_token=${DT_TOKEN}", secret: "${DT_SECRET}"}
  sms: {type: sms, provider: tencent, secret_id: a, secret_key: b, sdk_app_id: "1400", sign_name: s, template_id: "1"}
  push: {type: webpush, vapid_private_key_file: /etc/gridhub/vapid.pem, subject: "mailto:ops@example.org"}
  city: {type: webhook, url: "https://x/gridhub-events", secret: "${CITY_HOOK_SECRET}"}
routes:
  critical: {assignee: [push, wecom-xiagang, sms], level1: [sms], level2: [sms], level3: [dingtalk-bureau]}
  high: {assignee: [push, wecom-xiagang], level1: [wecom-xiagang]}
  normal: {assignee: [push]}
  low: {assignee: [push], quiet_hours: "22:00-07:00"}
fallback_after_s: {critical: 60, high: 600}
""")
    route = nf.route("critical")
    assert route is not None and route.channels("level3") == ["dingtalk-bureau"]
    assert nf.fallback_s("critical") == 60 and nf.fallback_s("normal") is None
    assert nf.channels["wecom-xiagang"].url.endswith("${WECOM_XG_KEY}")  # expanded when used, not when loaded


def test_a_route_naming_an_unknown_channel_is_refused_with_its_line() -> None:
    with pytest.raises(NotifyFileError) as err:
        parse("channels:\n  push: {type: webpush, vapid_private_key_file: /k, subject: 'mailto:a@b'}\n"
              "routes:\n  critical: {assignee: [push, pager]}\n", "notify.yaml")
    assert "no channel named 'pager'" in str(err.value) and "notify.yaml" in str(err.value)


def test_a_missing_field_names_its_line_and_field() -> None:
    with pytest.raises(NotifyFileError) as err:
        parse("channels:\n  hook: {type: webhook, url: 'https://x'}\n")
    assert "line 2" in str(err.value) and "channels.hook.secret" in str(err.value)


def test_the_hubs_own_settings_never_expand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDHUB_SECRET_KEY", "the-hub-key")
    monkeypatch.setenv("WECOM_KEY", "abc")
    assert expand("https://x/send?key=${WECOM_KEY}") == "https://x/send?key=abc"
    with pytest.raises(NotifyFileError, match="hub's own settings"):
        expand("https://evil.example/?k=${GRIDHUB_SECRET_KEY}")
    with pytest.raises(NotifyFileError, match="NOT_SET_ANYWHERE} is not set"):
        expand("${NOT_SET_ANYWHERE}")


@pytest.mark.parametrize(("local", "until"), [
    ((23, 30), (2026, 12, 8, 7, 0)),   # late evening: until tomorrow 07:00
    ((3, 0), (2026, 12, 7, 7, 0)),     # small hours: until 07:00 today
    ((12, 0), None),                   # daytime: no wait
    ((7, 0), None),                    # the end itself is outside
])
def test_quiet_hours_across_midnight(local: tuple[int, int], until: tuple[int, ...] | None) -> None:
    nf = parse("channels:\n  s: {type: sms, provider: http, url: 'https://x'}\n"
               "routes:\n  low: {assignee: [s], quiet_hours: '22:00-07:00'}\n")
    route = nf.route("low")
    assert route is not None
    at = datetime(2026, 12, 7, *local, tzinfo=SH).astimezone(UTC)
    got = route.quiet_until(at, SH)
    assert got == (datetime(*until, tzinfo=SH) if until else None)


def test_bad_quiet_hours_are_refused() -> None:
    with pytest.raises(NotifyFileError, match="HH:MM-HH:MM"):
        parse("channels: {}\nroutes:\n  low: {quiet_hours: 'at night'}\n")


def test_the_demo_writes_a_push_only_file_and_keeps_its_key(tmp_path: Path) -> None:
    from gridhub.demo_run import demo_notify_file
    from gridhub.notifyfile import load

    path = demo_notify_file(tmp_path, "http://127.0.0.1:8000")
    key = (tmp_path / "vapid.pem").read_bytes()
    nf = load(path)
    assert {c.type for c in nf.channels.values()} == {"webpush"}
    assert nf.link_base == "http://127.0.0.1:8000" and nf.fallback_s("critical") == 60
    demo_notify_file(tmp_path, "http://127.0.0.1:8000")
    assert (tmp_path / "vapid.pem").read_bytes() == key  # the subscriptions stay bound to it
