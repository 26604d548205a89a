"""Broker accounts from the registry: mosquitto's password file and ACL, and each account's password.

A device may publish only under its own topics and read its own command topic; a worker's app account may
read only its own tasks topic (and the bureau and admins the alerts topic); the hub's account reads and writes
everything. Device and app passwords are derived from the hub's secret key, so they are stable across runs
and never stored in the database; the database keeps only which derivation each account uses
(`gridhub.accounts.SCHEMES`). Only active workers and devices that are not retired get an account: a worker
deactivated by a registry import loses theirs at the next write, which the import triggers for a local broker.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridhub.accounts import SCHEME_HKDF, account_password, mosquitto_hash
from gridhub.mqtt import BrokerAddress
from gridhub.services.local import apply_broker_accounts
from gridhub.settings import Settings, get_settings

WORKER_PREFIX = "worker."  # '.' cannot appear in a device id, so an app account can never pose as a device


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    kind: str  # hub | device | worker
    subject: str  # device or worker id ('' for the hub)


def device_account(secret: str, device_id: str, scheme: str = SCHEME_HKDF) -> Account:
    return Account(device_id, account_password(secret, scheme, "device", device_id), "device", device_id)


def worker_account(secret: str, worker_id: str, scheme: str = SCHEME_HKDF) -> Account:
    return Account(WORKER_PREFIX + worker_id, account_password(secret, scheme, "worker", worker_id), "worker",
                   worker_id)


def acl_text(prefix: str, hub_user: str, workers: list[tuple[str, str]]) -> str:
    """The ACL: `workers` are (worker id, role)."""
    lines = [
        "# Written by `gridhub devices credentials` from the registry; edits are overwritten.",
        f"user {hub_user}",
        "topic readwrite #",
        "",
    ]
    for wid, role in workers:
        lines.append(f"user {WORKER_PREFIX}{wid}")
        lines.append(f"topic read {prefix}/workers/{wid}/tasks")
        if role in ("bureau", "admin"):
            lines.append(f"topic read {prefix}/alerts")
        lines.append("")
    lines += [
        "# every device: its own topics only",
        f"pattern write {prefix}/devices/%u/telemetry",
        f"pattern write {prefix}/devices/%u/event",
        f"pattern write {prefix}/devices/%u/status",
        f"pattern write {prefix}/devices/%u/frame",
        f"pattern write {prefix}/devices/%u/frame/+",
        f"pattern read {prefix}/devices/%u/command",
        "",
    ]
    return "\n".join(lines)


def build_accounts(conn: Any, settings: Settings) -> tuple[list[Account], list[tuple[str, str]], Account]:
    secret = settings.signing_key()
    devices = [(r[0], r[1]) for r in conn.execute(
        "SELECT id, password_scheme FROM devices WHERE NOT retired ORDER BY id")]
    rows = conn.execute("SELECT id, role, broker_password_scheme FROM workers WHERE active ORDER BY id").fetchall()
    workers = [(r[0], r[1]) for r in rows]
    if not settings.mqtt_url:
        raise RuntimeError("GRIDHUB_MQTT_URL is not set: the hub's own broker account is unknown")
    addr = BrokerAddress.parse(settings.mqtt_url)
    if not addr.username or not addr.password:
        raise RuntimeError("GRIDHUB_MQTT_URL has no user and password: the broker needs the hub's account")
    hub = Account(addr.username, addr.password, "hub", "")
    accounts = ([hub] + [device_account(secret, d, scheme) for d, scheme in devices]
                + [worker_account(secret, r[0], r[2]) for r in rows])
    return accounts, workers, hub


def passwd_text(accounts: list[Account]) -> str:
    return "".join(f"{a.username}:{mosquitto_hash(a.password)}\n" for a in accounts)


def credentials_csv(accounts: list[Account]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "id", "username", "password"])
    for a in accounts:
        if a.kind != "hub":
            w.writerow([a.kind, a.subject, a.username, a.password])
    return buf.getvalue()


def write_credentials(settings: Settings, out_dir: Path | None = None, reload: bool = True) -> dict[str, Any]:
    """Write passwd, acl and device-credentials.csv (0600); apply them to the local broker when it is ours."""
    from gridhub.db import connect

    assert settings.database_url
    with connect(settings.database_url) as conn:
        accounts, workers, hub = build_accounts(conn, settings)
    pw = passwd_text(accounts)
    acl = acl_text(settings.topic_prefix, hub.username, workers)
    out = out_dir or (settings.data_dir / "broker")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("passwd", pw), ("acl", acl), ("device-credentials.csv", credentials_csv(accounts))):
        path = out / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o600)
        tmp.replace(path)
    applied = False
    if reload:
        applied = apply_broker_accounts(settings, pw, acl)
    return {"dir": str(out), "devices": sum(a.kind == "device" for a in accounts),
            "workers": sum(a.kind == "worker" for a in accounts), "applied_to_local_broker": applied}


def credentials_cli(args: argparse.Namespace) -> int:
    from gridhub.runtime import resolve_services

    settings = resolve_services(get_settings())
    res = write_credentials(settings, Path(args.out_dir) if args.out_dir else None, reload=not args.no_reload)
    print(f"wrote passwd, acl and device-credentials.csv to {res['dir']}: {res['devices']} devices, "
          f"{res['workers']} worker apps" + ("; the local broker reloaded them" if res["applied_to_local_broker"] else ""))
    if not res["applied_to_local_broker"]:
        print("point your mosquitto's password_file and acl_file at these files and send it SIGHUP", file=sys.stderr)
    return 0


def rotate(conn: Any) -> tuple[list[str], list[str]]:
    """Move every account still on the legacy derivation to the separated key, in the caller's transaction:
    (devices, worker apps) that now have a new password and must be re-provisioned; retired devices and inactive
    workers have no account and are moved silently."""
    devices = [r[0] for r in conn.execute(
        "UPDATE devices SET password_scheme = 'hkdf' WHERE password_scheme <> 'hkdf' RETURNING id, retired")
        if not r[1]]
    workers = [r[0] for r in conn.execute(
        "UPDATE workers SET broker_password_scheme = 'hkdf' WHERE broker_password_scheme <> 'hkdf'"
        " RETURNING id, active") if r[1]]
    return sorted(devices), sorted(workers)


def rotate_cli(args: argparse.Namespace) -> int:
    """`gridhub devices rotate`: every legacy account to the separated key, the new credentials written (and
    applied to a local broker), the accounts to re-provision listed."""
    from gridhub.audit import cli_actor, record
    from gridhub.db import connect
    from gridhub.runtime import resolve_services

    settings = resolve_services(get_settings())
    assert settings.database_url
    with connect(settings.database_url) as conn, conn.transaction():
        devices, workers = rotate(conn)
        actor, address = cli_actor()
        record(conn, actor, "devices.rotate", address=address, detail={"devices": devices, "workers": workers})
    res = write_credentials(settings, Path(args.out_dir) if args.out_dir else None, reload=not args.no_reload)
    print(f"wrote the new credentials to {res['dir']}"
          + ("; the local broker reloaded them" if res["applied_to_local_broker"] else ""))
    if not devices and not workers:
        print("every account already uses the separated key: nothing to re-provision")
    for d in devices:
        print(f"re-provision device {d}: its new password is in device-credentials.csv")
    for w in workers:
        print(f"re-provision the app of worker {w} (broker user {WORKER_PREFIX}{w})")
    return 0
