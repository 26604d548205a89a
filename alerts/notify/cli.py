"""`gridhub notify run | check | test --to ID | vapid-keys --out FILE` (docs/notifications.md)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gridhub.notifyfile import NotifyFile, NotifyFileError, load
from gridhub.settings import Settings

log = logging.getLogger("gridhub.notify")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    n = sub.add_parser("notify", help="notifications: run the sender, check the notify file, send a test, VAPID keys")
    ns = n.add_subparsers(dest="notify_action", required=True)
    run = ns.add_parser("run", help="send the deliveries (a part of `gridhub up`)")
    run.add_argument("--embedded", action="store_true")
    ns.add_parser("check", help="validate GRIDHUB_NOTIFY_FILE and print its channels and routes")
    t = ns.add_parser("test", help="send a test message to a person through every channel they have")
    t.add_argument("--to", required=True, metavar="WORKER_ID")
    v = ns.add_parser("vapid-keys", help="generate the Web Push (VAPID) key pair")
    v.add_argument("--out", required=True, type=Path, help="the private key file to write (PEM, mode 0600)")


def _file(settings: Settings) -> NotifyFile:
    if settings.notify_file is None:
        raise NotifyFileError("GRIDHUB_NOTIFY_FILE is not set: nothing is sent outside the hub"
                              " (docs/notifications.md shows the file)")
    return load(settings.notify_file)


def main(args: argparse.Namespace, settings: Settings) -> int:
    from gridhub.alerts.notify.vapid import VapidKeyError

    try:
        return _main(args, settings)
    except (NotifyFileError, VapidKeyError) as exc:
        print(f"gridhub notify: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, settings: Settings) -> int:
    action = args.notify_action
    if action == "vapid-keys":
        from gridhub.alerts.notify.vapid import generate_keys

        public = generate_keys(args.out)
        print(f"private key written to {args.out} (keep it secret; mode 0600)")
        print(f"public key (applicationServerKey): {public}")
        return 0
    if action == "check":
        nf = _file(settings)
        for name, ch in nf.channels.items():
            print(f"channel {name}: {ch.type}" + (f" ({ch.provider})" if ch.type == "sms" else ""))
        for sev, route in nf.routes.items():
            levels = ", ".join(f"{lv}: {'+'.join(route.channels(lv))}" for lv in ("assignee", "level1", "level2", "level3")
                               if route.channels(lv))
            quiet = f"; quiet {route.quiet_hours}" if route.quiet_hours else ""
            fb = nf.fallback_s(sev)
            print(f"route {sev}: {levels}{quiet}" + (f"; next level after {fb} s without accept" if fb else ""))
        return 0
    from gridhub.runtime import resolve_services

    settings = resolve_services(settings, embedded=getattr(args, "embedded", False))
    assert settings.database_url
    from gridhub.db import migrate

    migrate(settings.database_url)
    if action == "test":
        return _test(settings, _file(settings), args.to)
    if settings.notify_file is None:
        log.info("notify: GRIDHUB_NOTIFY_FILE is not set; nothing to send (idle)")
        from gridhub.runtime import stop_on_signal

        stop, _ = stop_on_signal()
        stop.wait()
        return 0
    from gridhub.alerts.notify.sender import Sender
    from gridhub.runtime import run_until_signalled

    nf = _file(settings)
    run_until_signalled(Sender(settings.database_url, nf), "notify")
    return 0


def _test(settings: Settings, nf: NotifyFile, worker_id: str) -> int:
    """One message through every channel the person has, sent at once (not queued), each answer printed."""
    from gridhub.alerts.notify.message import Message, PushSubscription
    from gridhub.alerts.notify.plan import GROUP_TYPES, new_delivery_id
    from gridhub.alerts.notify.sender import build_channels
    from gridhub.alerts.notify.text import person
    from gridhub.db import connect
    from gridhub.protocol import rfc3339

    assert settings.database_url
    with connect(settings.database_url) as conn:
        who = person(conn, worker_id)
        if who is None:
            print(f"gridhub notify test: no worker {worker_id} (import it with gridhub registry import)", file=sys.stderr)
            return 1
        subs = [PushSubscription(*r) for r in conn.execute(
            "SELECT id, endpoint, p256dh, auth FROM push_subscriptions WHERE worker_id = %s", (worker_id,))]
    now = datetime.now(UTC)
    link = f"{(nf.link_base or 'http://localhost:8000').rstrip('/')}/worker"
    task: dict[str, object] = {"id": "tk-test", "type": "test", "severity": "normal", "state": "open", "grid_id": None,
            "building_id": None, "device_id": None, "assignee": worker_id, "escalation_level": 0,
            "accept_due": rfc3339(now + timedelta(hours=1), settings.tz), "resolve_due": None, "alert_ids": [],
            "count": 1, "history": [], "drill": False}
    failures = 0
    lock = threading.Lock()
    for name, ch in build_channels(nf).items():
        cfg = nf.channels[name]
        group = cfg.type in GROUP_TYPES
        if cfg.type == "sms" and not who.phone:
            print(f"{name}: skipped ({worker_id} has no phone)")
            continue
        if cfg.type == "webpush" and not subs:
            print(f"{name}: skipped ({worker_id} has no push subscription: open the worker page and allow notifications)")
            continue
        msg = Message(delivery_id=new_delivery_id(now), event="task.changed", severity="normal", drill=False,
                      task=task, place={}, title="【测试】gridhub 通知测试",
                      lines=[f"这是一条发给 {who.name}（{who.id}）的测试消息，无需处理。", f"打开任务页：{link}"],
                      text=f"【测试】gridhub 通知测试：发给 {who.name}，无需处理。", link=link,
                      recipient=None if group else who, mentions=[who] if group else [], push_subscriptions=subs,
                      sent_at=rfc3339(now, settings.tz) or "")
        answer = ch.send(msg)
        with lock:
            print(f"{name} ({cfg.type}): {'sent' if answer.ok else 'FAILED'}: {answer.detail}")
        failures += 0 if answer.ok else 1
    return 1 if failures else 0
