"""The `gridhub` command: parses the arguments and dispatches to the module that does the work."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from gridhub.runtime import PARTS, resolve_services, supervise
from gridhub.services.nats import DEFAULT_PARTITIONS as DEFAULT_NATS_PARTITIONS
from gridhub.settings import Settings, get_settings


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _check_secret_key(url: str) -> None:
    """A GRIDHUB_SECRET_KEY shorter than 32 bytes stops a new install (exit 2, one line) and is warned about on an
    existing one (its database has devices, or its data directory has state)."""
    from gridhub.db import connect
    from gridhub.settings import SecretKeyTooShort, check_secret_key

    settings = get_settings()
    if not settings.secret_key:
        return
    with connect(url) as conn:
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM devices)").fetchone()
    try:
        warning = check_secret_key(settings, existing=bool(row and row[0]))
    except SecretKeyTooShort as exc:
        print(f"gridhub: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if warning:
        logging.getLogger("gridhub").warning("%s", warning)


def _need_db(settings: Settings) -> str:
    if not settings.database_url:
        settings = resolve_services(settings)
    assert settings.database_url
    return settings.database_url


# ------------------------------------------------------------------ commands

def cmd_migrate(args: argparse.Namespace) -> int:
    from gridhub.db import migrate

    applied = migrate(_need_db(get_settings()))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from gridhub.db import connect, migrate
    from gridhub.registry import RegistryError, apply_registry, dump_yaml, export_registry, load_file

    url = _need_db(get_settings())
    migrate(url)
    if args.action == "import":
        from gridhub.audit import cli_actor

        _check_secret_key(url)
        try:
            reg = load_file(Path(args.file), camera_files_dir=get_settings().camera_files_dir)
        except RegistryError as exc:
            print(exc, file=sys.stderr)
            return 2
        actor, address = cli_actor()
        with connect(url) as conn:
            try:
                result = apply_registry(conn, reg, prune=args.prune, actor=actor, address=address, source=args.file)
            except Exception as exc:  # a foreign key names the missing parent
                print(f"registry import refused: {exc}", file=sys.stderr)
                return 2
        print("imported " + ", ".join(f"{v} {k}" for k, v in result.counts.items()))
        for wid in result.deactivated:
            print(f"deactivated worker {wid}: log-in, tokens, push subscriptions and broker account taken away")
        for wid, grids in result.left_grids.items():
            print(f"worker {wid} no longer works in {', '.join(grids)}")
        if result.deactivated or result.left_grids:
            print(f"{result.tasks_reassigned} open task(s) reassigned")
        _write_credentials_after_import(bool(result.deactivated))
        return 0
    with connect(url) as conn:
        sys.stdout.write(dump_yaml(export_registry(conn)))
    return 0


def _write_credentials_after_import(someone_left: bool) -> None:
    """The broker's accounts follow the registry: written again after every import (a deactivated worker's account
    is gone) and applied at once to the local broker; another broker reloads the files when told (SIGHUP)."""
    from gridhub.broker import write_credentials

    settings = get_settings()
    try:
        res = write_credentials(settings)
    except RuntimeError as exc:  # no broker URL with the hub's account: nothing to write
        if someone_left:
            print(f"broker accounts not written ({exc}): run `gridhub devices credentials`", file=sys.stderr)
        return
    if res["applied_to_local_broker"]:
        print(f"broker accounts written to {res['dir']} and applied to the local broker")
    else:
        print(f"broker accounts written to {res['dir']}: send your mosquitto SIGHUP to apply them", file=sys.stderr)


def cmd_users(args: argparse.Namespace) -> int:
    from gridhub.auth import AuthError, set_password
    from gridhub.db import connect, migrate

    url = _need_db(get_settings())
    migrate(url)
    password = args.password
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass(f"new password for {args.worker_id}: ")
            if getpass.getpass("again: ") != password:
                print("the passwords differ; nothing changed", file=sys.stderr)
                return 2
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    try:
        with connect(url) as conn:
            set_password(conn, args.worker_id, password)
    except (AuthError, ValueError) as exc:
        print(f"password not set: {exc}", file=sys.stderr)
        return 2
    print(f"password set for {args.worker_id}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from gridhub.broker import credentials_cli, rotate_cli

    url = _need_db(get_settings())
    _check_secret_key(url)
    if args.action == "rotate":
        return rotate_cli(args)
    if args.broker == "nats":
        from gridhub.services.nats import credentials_cli as nats_credentials_cli

        code = nats_credentials_cli(args)
    else:
        code = credentials_cli(args)
    if code == 0:  # the audit trail: who wrote the broker's accounts (the device passwords among them), from where
        from gridhub.audit import cli_actor, record
        from gridhub.db import connect

        actor, address = cli_actor()
        with connect(url) as conn:
            record(conn, actor, "devices.credentials", target=args.out_dir, address=address,
                   detail={"reload": not args.no_reload, "broker": args.broker})
    return code


def cmd_services(args: argparse.Namespace) -> int:
    from gridhub.services.cli import services_cli

    return services_cli(args.rest)


def cmd_cluster(args: argparse.Namespace) -> int:
    from gridhub.services.cluster import main as cluster_main

    return cluster_main(args.rest)


def _check_notify_file() -> None:
    """A notify file that cannot be used stops the hub at start, naming the line and field, instead of leaving
    people un-notified (the parts that change tasks plan deliveries from it)."""
    path = get_settings().notify_file
    if path is not None:
        from gridhub.notifyfile import load

        load(path)


BROKER_CHECKED_PARTS = ("ingest", "alerts")


def _check_broker(settings: Settings, part: str) -> str | None:
    """The broker check (gridhub/brokercheck.py, GRIDHUB_BROKER_CHECK): the refusal line, None to start."""
    from gridhub.brokercheck import check_at_start

    return check_at_start(settings, part)


def cmd_broker(args: argparse.Namespace) -> int:
    """`gridhub broker check`: probe the broker the hub is given (exit 2 when a start would be refused)."""
    from gridhub.brokercheck import broker_check_cli

    return broker_check_cli(resolve_services(get_settings()))


def cmd_part(args: argparse.Namespace) -> int:
    _check_notify_file()
    settings = resolve_services(get_settings(), embedded=getattr(args, "embedded", False))
    import threading

    from gridhub.db import migrate
    from gridhub.waiting import keep_trying

    assert settings.database_url
    url = settings.database_url
    part = args.command

    def prepare() -> None:
        migrate(url)
        _check_secret_key(url)

    # the broker the part is given keeps what the part cannot take at once, or the part refuses to start (exit 2)
    if part in BROKER_CHECKED_PARTS and (refusal := _check_broker(settings, part)):
        print(f"gridhub: {refusal}", file=sys.stderr)
        return 2
    # a part started (or restarted by its supervisor) while the database is away waits for it, as a running part
    # does, instead of exiting in a loop; a signal stops it as usual (nothing is in hand yet)
    keep_trying(prepare, waiter=f"{part}-start", stopping=threading.Event(), url=url)
    if part == "ingest":
        from gridhub.ingest.service import run as run_ingest

        run_ingest(settings)
    elif part == "alerts":
        from gridhub.alerts.service import run as run_alerts

        run_alerts(settings)
    elif part == "detect":
        if getattr(args, "detect_action", None) == "replay":
            raise AssertionError("unreachable")
        from gridhub.detectors.live import run as run_detect

        run_detect(settings)
    elif part == "api":
        import uvicorn

        from gridhub.api import logredact
        from gridhub.api.app import create_app

        # tokens and stream tickets in query strings are written `***` by every handler (uvicorn's access log
        # prints the query); X-Forwarded-For and -Proto are believed from GRIDHUB_TRUSTED_PROXIES only, the same
        # list api/deps.client_address uses (uvicorn's default would believe any local peer)
        logredact.install()
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info",
                    timeout_graceful_shutdown=3, **logredact.uvicorn_options(settings.trusted_proxies))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from gridhub.detectors.replay import replay_cli

    return int(replay_cli(args.rest))


def cmd_simulate(args: argparse.Namespace) -> int:
    from gridhub.simulators.cli import main as simulate_main

    return int(simulate_main(args.rest))


def cmd_up(args: argparse.Namespace) -> int:
    """Every part in its own process, supervised: a part that dies is restarted; Ctrl-C stops them all."""
    _check_notify_file()
    settings = resolve_services(get_settings(), embedded=args.embedded)
    from gridhub.db import migrate

    assert settings.database_url
    migrate(settings.database_url)
    _check_secret_key(settings.database_url)
    parts = args.parts.split(",") if args.parts else list(PARTS)
    if any(p in BROKER_CHECKED_PARTS for p in parts):
        if refusal := _check_broker(settings, "up"):
            print(f"gridhub: {refusal}", file=sys.stderr)
            return 2
        import os

        os.environ["GRIDHUB_BROKER_CHECK"] = "off"  # checked once, here: the parts (and their restarts) do not probe
    return supervise(parts, port=args.port, host=args.host)


def cmd_demo(args: argparse.Namespace) -> int:
    from gridhub.demo_run import run_demo

    return run_demo(args)


def cmd_notify(args: argparse.Namespace) -> int:
    from gridhub.alerts.notify.cli import main as notify_main

    return int(notify_main(args, get_settings()))


def cmd_report(args: argparse.Namespace) -> int:
    """`gridhub report monthly`: a street's month in one workbook (gridhub/report_monthly.py); exit 2 with one line
    for an unknown street, a bad month or an output directory that does not exist."""
    from gridhub.db import migrate
    from gridhub.report_monthly import ReportError, parse_month, run, summary

    settings = get_settings()
    try:  # the arguments first: a bad month needs no database
        parse_month(args.month)
    except ReportError as exc:
        print(f"gridhub report: {exc}", file=sys.stderr)
        return 2
    url = _need_db(settings)
    migrate(url)
    try:
        result = run(url, street=args.street, month=args.month, out=Path(args.out), zone=settings.tz,
                     show_progress=not args.quiet)
    except ReportError as exc:
        print(f"gridhub report: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from gridhub.db import apply_retention

    s = get_settings()
    out = apply_retention(_need_db(s), s.readings_days, s.quarantine_days)
    print(", ".join(f"{k}: {v} removed" for k, v in out.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridhub", description="IoT and camera event hub for grid governance")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run every part (with local services when no URLs are set)")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--parts", help=f"comma-separated subset of {','.join(PARTS)}")
    up.add_argument("--embedded", action="store_true", help="use the embedded services even if system ones exist")
    up.set_defaults(func=cmd_up)

    for part in ("ingest", "alerts"):
        sp = sub.add_parser(part, help=f"run the {part} part alone")
        sp.add_argument("--embedded", action="store_true")
        sp.set_defaults(func=cmd_part)
    det = sub.add_parser("detect", help="run the camera detectors; `detect replay` runs one offline")
    det.add_argument("--embedded", action="store_true")
    det.set_defaults(func=cmd_part)
    det_sub = det.add_subparsers(dest="detect_action")
    rp = det_sub.add_parser("replay", help="gridhub detect replay --camera C.json --frames DIR --out OUT.jsonl",
                            add_help=False)
    rp.add_argument("rest", nargs=argparse.REMAINDER)
    rp.set_defaults(func=cmd_replay)
    api = sub.add_parser("api", help="run the API and web pages alone")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--embedded", action="store_true")
    api.set_defaults(func=cmd_part)

    sim = sub.add_parser("simulate", help="device simulators and load (see `gridhub simulate --help`)",
                         add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=cmd_simulate)

    reg = sub.add_parser("registry", help="import or export the registry file")
    reg_sub = reg.add_subparsers(dest="action", required=True)
    ri = reg_sub.add_parser("import", help="upsert a registry YAML file")
    ri.add_argument("file")
    ri.add_argument("--prune", action="store_true",
                    help="deactivate the workers the file no longer lists (without it an import is partial)")
    reg_sub.add_parser("export", help="print the registry as YAML")
    reg.set_defaults(func=cmd_registry)

    users = sub.add_parser("users", help="log-in accounts")
    users_sub = users.add_subparsers(dest="action", required=True)
    pw = users_sub.add_parser("passwd", help="set a worker's password (from stdin, or --password)")
    pw.add_argument("worker_id")
    pw.add_argument("--password")
    users.set_defaults(func=cmd_users)

    dev = sub.add_parser("devices", help="device accounts on the broker")
    dev_sub = dev.add_subparsers(dest="action", required=True)
    cr = dev_sub.add_parser("credentials", help="write the broker's accounts from the registry: mosquitto's password"
                            " file and ACL, or with --broker nats the NATS cluster's accounts.conf")
    cr.add_argument("--out-dir", help="where to write passwd, acl (nats: accounts.conf) and device-credentials.csv")
    cr.add_argument("--no-reload", action="store_true", help="do not signal the local broker to reload")
    cr.add_argument("--broker", choices=("mosquitto", "nats"), default="mosquitto",
                    help="which broker's accounts to write (default mosquitto)")
    cr.add_argument("--partitions", type=int, default=DEFAULT_NATS_PARTITIONS,
                    help=f"nats: P, the partitions devices are mapped onto (default {DEFAULT_NATS_PARTITIONS}, measured:"
                    " docs/scaling.md); every part must run with the same GRIDHUB_PARTITIONS")
    cr.add_argument("--nats-dir", help="nats: the local cluster's directory, reloaded after the write"
                    " (default <data dir>/nats)")
    ro = dev_sub.add_parser("rotate", help="move every device still on the legacy password to the separated key,"
                            " write the new credentials and list the devices to re-provision")
    ro.add_argument("--out-dir", help="where to write passwd, acl and device-credentials.csv")
    ro.add_argument("--no-reload", action="store_true", help="do not signal the local broker to reload")
    dev.set_defaults(func=cmd_devices)

    svc = sub.add_parser("services", help="the project's own PostgreSQL and mosquitto (start|stop|status|env)",
                         add_help=False)
    svc.add_argument("rest", nargs=argparse.REMAINDER)
    svc.set_defaults(func=cmd_services)

    clu = sub.add_parser("cluster", help="the clustered hub on one machine: 3 NATS nodes, Patroni, 2 of each part"
                         " (start|stop|status|env; make cluster)", add_help=False)
    clu.add_argument("rest", nargs=argparse.REMAINDER)
    clu.set_defaults(func=cmd_cluster)

    demo = sub.add_parser("demo", help="everything with a demo district and simulators")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--embedded", action="store_true")
    demo.set_defaults(func=cmd_demo)

    from gridhub.alerts.notify.cli import add_parser as add_notify_parser

    add_notify_parser(sub)
    sub.choices["notify"].set_defaults(func=cmd_notify)

    rep = sub.add_parser("report", help="reports as the bureau files them (report monthly: one workbook)")
    rep_sub = rep.add_subparsers(dest="report", required=True)
    monthly = rep_sub.add_parser("monthly", help="a street's month: the patrol plan's statistics and the patrol,"
                                 " hazard and task ledgers, one sheet each (XLSX)")
    monthly.add_argument("--street", required=True, help="the street's registry id, e.g. xiagang")
    monthly.add_argument("--month", required=True, help="YYYY-MM, in the district's time zone (GRIDHUB_TIMEZONE)")
    monthly.add_argument("--out", required=True, help="the workbook to write (.xlsx; its directory must exist)")
    monthly.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    rep.set_defaults(func=cmd_report)

    brk = sub.add_parser("broker", help="the broker the hub is given (broker check: does it keep what the hub"
                         " cannot take at once)")
    brk_sub = brk.add_subparsers(dest="action", required=True)
    brk_sub.add_parser("check", help="probe the broker's queue and in-flight limits; exit 2 when the parts would"
                       " refuse to start")
    brk.set_defaults(func=cmd_broker)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("retention", help="drop data past its retention").set_defaults(func=cmd_retention)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `gridhub simulate --devices N ...`: argparse's REMAINDER cannot start with an option, so the words after
    # a pass-through command go to it untouched
    head, rest = argv, None
    for i, word in enumerate(argv):
        if word in ("simulate", "services", "cluster"):
            head, rest = argv[: i + 1], argv[i + 1:]
            break
        if word == "detect" and argv[i + 1: i + 2] == ["replay"]:
            head, rest = argv[: i + 2], argv[i + 2:]
            break
        if not word.startswith("-"):
            break
    args = build_parser().parse_args(head)
    if rest is not None:
        args.rest = rest
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from gridhub.db import DatabaseUnavailable

        if isinstance(exc, DatabaseUnavailable):
            print(f"gridhub: {exc}", file=sys.stderr)
            return 1
        from pydantic import ValidationError

        from gridhub.settings import explain

        if isinstance(exc, ValidationError):  # a GRIDHUB_* setting that cannot work: say which, no traceback
            print(f"gridhub: {explain(exc)}", file=sys.stderr)
            return 2
        from gridhub.notifyfile import NotifyFileError

        if isinstance(exc, NotifyFileError):
            print(f"gridhub: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
