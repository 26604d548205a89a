"""`gridhub simulate`: the load generator, virtual devices, scenarios and generated districts."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from gridhub.protocol import BrokerAddress, BrokerURLError
from gridhub.simulators.fleet import (
    DeviceAccounts,
    Fleet,
    FleetError,
    default_accounts,
    default_broker_url,
    default_prefix,
    fleet_from_registry,
    load_fleet,
    read_credentials,
)

log = logging.getLogger("gridhub.simulators")

USAGE = """gridhub simulate --devices N --rate R --duration S [options]   load: telemetry at R msgs/s in total
gridhub simulate devices [--registry FILE | --district SIZE]      virtual devices of every kind, live
gridhub simulate scenario NAME [NAME ...] [--speed X] [--drill]   play scenarios (`scenario --list`)
gridhub simulate district small|medium|large                      print a generated registry file
gridhub simulate workers --api URL [--registry FILE] [--seed N]   grid workers doing patrols over the REST API"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", help="mqtt://user:pass@host:port (default $GRIDHUB_MQTT_URL); with no device "
                                    "accounts, its account publishes for every device")
    p.add_argument("--registry", help="registry YAML file naming the devices (`gridhub registry export`)")
    p.add_argument("--district", choices=("small", "medium", "large"),
                   help="a generated district instead of --registry (import it first: `gridhub simulate "
                        "district SIZE > d.yaml && gridhub registry import d.yaml`)")
    p.add_argument("--credentials", help="device accounts: the CSV `gridhub devices credentials` writes")
    p.add_argument("--secret", help="device accounts: derive passwords from the hub's secret key")
    p.add_argument("--prefix", help="topic prefix (default $GRIDHUB_TOPIC_PREFIX or gridhub/v1)")
    p.add_argument("--mqtt", choices=("5", "3.1.1"), default="5", help="protocol version (amqtt speaks 3.1.1 only)")
    p.add_argument("-v", "--verbose", action="store_true")


def _fleet(args: argparse.Namespace) -> Fleet:
    if args.registry and args.district:
        raise FleetError("give either --registry or --district, not both")
    if args.district:
        from gridhub.simulators.district import generate_district

        return fleet_from_registry(generate_district(args.district), f"district {args.district}")
    if args.registry:
        return load_fleet(Path(args.registry))
    raise FleetError("which devices? pass --registry FILE (`gridhub registry export > registry.yaml`) or "
                     "--district small|medium|large")


def _explicit_accounts(args: argparse.Namespace) -> DeviceAccounts | None:
    if args.credentials:
        return DeviceAccounts(table=read_credentials(Path(args.credentials)))
    if args.secret:
        return DeviceAccounts(secret=args.secret)
    return None


def load_main(argv: list[str]) -> int:
    from gridhub.simulators.load import LoadPlan, run_load_processes, telemetry_devices

    p = argparse.ArgumentParser(prog="gridhub simulate", usage=USAGE,
                                description="Publish valid telemetry for registered devices at a total rate, "
                                            "QoS 1; progress on stderr, a JSON summary on stdout.")
    p.add_argument("--devices", type=int, help="how many devices (default: all with telemetry in the registry)")
    p.add_argument("--rate", type=float, default=100.0, help="messages per second, all devices together")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing")
    p.add_argument("--connections", type=int, default=4, help="connections when multiplexing (no device accounts)")
    p.add_argument("--window", type=int, default=64, help="unacknowledged messages per connection")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--processes", type=int, default=1, help="split the load over this many processes")
    _add_common(p)
    args = p.parse_args(argv)
    _logging(args.verbose)
    fleet = _fleet(args)
    devices = telemetry_devices(fleet.devices)
    if args.devices is not None:
        if args.devices > len(devices):
            raise FleetError(f"the registry has {len(devices)} devices with telemetry, not {args.devices}: use a "
                             "larger one (`gridhub simulate district large > d.yaml`, then `gridhub registry "
                             "import d.yaml` and `gridhub devices credentials`)")
        devices = devices[: args.devices]
    if args.rate <= 0 or args.duration <= 0:
        raise FleetError("--rate and --duration must be positive")
    target = BrokerAddress.parse(default_broker_url(args.broker))
    accounts = _explicit_accounts(args)
    if accounts is None and not target.username:
        raise FleetError("no account to publish with: pass --credentials or --secret for device accounts, or a "
                         "broker URL with the hub's user and password to multiplex")
    plan = LoadPlan(target=target, devices=devices, rate=args.rate, duration_s=args.duration, accounts=accounts,
                    connections=args.connections, window=args.window, qos=args.qos, v5=args.mqtt == "5",
                    prefix=default_prefix(args.prefix))
    summary = run_load_processes(plan, args.processes)
    import json

    print(json.dumps(summary))
    return 0 if summary["errors"] == 0 and summary["connect_errors"] == 0 else 1


def devices_main(argv: list[str]) -> int:
    from gridhub.simulators.devices import run_fleet

    p = argparse.ArgumentParser(prog="gridhub simulate devices",
                                description="Virtual devices of every kind, each with its own broker account, last "
                                            "will, seq and heartbeats, until Ctrl-C or --duration.")
    p.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--kinds", help="comma-separated kinds to play (default: all)")
    p.add_argument("--limit", type=int, help="play at most this many devices")
    p.add_argument("--spread", type=float, default=20.0, help="seconds over which the devices first report")
    _add_common(p)
    args = p.parse_args(argv)
    _logging(args.verbose)
    fleet = _fleet(args)
    devices = fleet.active
    if args.kinds:
        kinds = set(args.kinds.split(","))
        devices = [d for d in devices if d.kind.value in kinds]
    if args.limit:
        devices = devices[: args.limit]
    accounts = _device_accounts(args)
    target = BrokerAddress.parse(default_broker_url(args.broker))
    summary = asyncio.run(run_fleet(target, accounts, devices, prefix=default_prefix(args.prefix),
                                    v5=args.mqtt == "5", duration_s=args.duration,
                                    spread_s=args.spread))
    import json

    print(json.dumps(summary))
    return 0


def _device_accounts(args: argparse.Namespace) -> DeviceAccounts:
    accounts = default_accounts(args.credentials, args.secret)
    if accounts is None:
        raise FleetError("devices log in with their own accounts: pass --credentials CSV (the file `gridhub devices "
                         "credentials` writes)")
    return accounts


def scenario_main(argv: list[str]) -> int:
    from gridhub.simulators.scenario import ScenarioError, list_scenarios, load_scenario, play_cli

    p = argparse.ArgumentParser(prog="gridhub simulate scenario",
                                description="Play named scenarios (files in simulators/scenarios/, or paths to "
                                            "YAML files) against the broker with the devices' own accounts.")
    p.add_argument("names", nargs="*", help="scenario names or files; several play together")
    p.add_argument("--list", action="store_true", help="list the scenarios and what each does")
    p.add_argument("--speed", type=float, help="time compression (default: the scenario's own, 1 = real time)")
    p.add_argument("--seed", type=int, default=0, help="choose buildings and values reproducibly")
    p.add_argument("--cast", action="append", default=[],
                   help="override a role: ROLE=ID[,ID...] (for example building=b-12)")
    p.add_argument("--drill", action="store_true",
                   help="play it as a drill (演练): every event carries detail.drill, the hub's tasks are drill tasks")
    _add_common(p)
    args = p.parse_args(argv)
    _logging(args.verbose)
    if args.list or not args.names:
        for sc in list_scenarios():
            print(f"{sc.name:16} {'[drill] ' if sc.drill else ''}{sc.summary}")
        return 0
    try:
        scenarios = [load_scenario(n) for n in args.names]
        if args.drill:
            scenarios = [sc.model_copy(update={"drill": True}) for sc in scenarios]
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    fleet = _fleet(args)
    return play_cli(scenarios, fleet, BrokerAddress.parse(default_broker_url(args.broker)), _device_accounts(args),
                    prefix=default_prefix(args.prefix), v5=args.mqtt == "5", speed=args.speed, seed=args.seed,
                    cast_overrides=args.cast)


def district_main(argv: list[str]) -> int:
    from gridhub.simulators.district import dump_registry, generate_district

    p = argparse.ArgumentParser(prog="gridhub simulate district",
                                description="Print a generated registry file (CONTRACT §2) for a district size.")
    p.add_argument("size", choices=("small", "medium", "large"))
    args = p.parse_args(argv)
    sys.stdout.write(dump_registry(generate_district(args.size)))
    return 0


def workers_main(argv: list[str]) -> int:
    from gridhub.simulators.fleet import demo_district_path
    from gridhub.simulators.workers import DEMO_PASSWORD, WorkerOptions, WorkerSim, roster

    p = argparse.ArgumentParser(
        prog="gridhub simulate workers",
        description="Simulated grid workers on the hub's REST API: they log in, do some of their patrols (a hazard "
                    "on about one in five), leave the rest to go overdue, fix hazards so that re-checks open, do the "
                    "re-checks, and now and then file a resident's report; grid heads confirm reports (立案). Paced, "
                    "reproducible from --seed; a JSON summary on stdout at the end.")
    p.add_argument("--api", default="http://127.0.0.1:8000", help="the hub's base URL (default %(default)s)")
    p.add_argument("--registry", help="registry YAML naming the workers (default: the demo district)")
    p.add_argument("--workers", help="comma-separated grid worker ids (default: every grid worker in the registry)")
    p.add_argument("--heads", help="comma-separated grid head ids who confirm reports (default: every grid head "
                                   "in the registry; '' for none)")
    p.add_argument("--grids", help="only the workers and heads of these comma-separated grids")
    p.add_argument("--password", default=DEMO_PASSWORD,
                   help="each log-in's password, {id} standing for the worker id (default: the demo's, "
                        "%(default)s; set them with `gridhub users passwd ID --password ...`)")
    p.add_argument("--seed", type=int, default=0, help="the choices, reproducibly")
    p.add_argument("--per-minute", type=float, default=4.0, help="actions a minute, all workers together "
                                                                 "(default %(default)s; 0: no pause)")
    p.add_argument("--done", type=float, default=0.75, help="share of patrols done (default %(default)s)")
    p.add_argument("--hazards", type=float, default=0.2, help="share of patrols finding a hazard (default %(default)s)")
    p.add_argument("--fix", type=float, default=0.7, help="share of hazards rectified (default %(default)s)")
    p.add_argument("--report-every", type=int, default=20,
                   help="a resident's report after this many actions (default %(default)s; 0: none)")
    p.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--until-idle", action="store_true", help="stop when nobody has anything left to do")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    _logging(args.verbose)
    grids = args.grids.split(",") if args.grids else None
    listed_workers, listed_heads = roster(Path(args.registry) if args.registry else demo_district_path(), grids=grids)
    workers = tuple(w for w in args.workers.split(",") if w) if args.workers is not None else tuple(listed_workers)
    heads = tuple(h for h in args.heads.split(",") if h) if args.heads is not None else tuple(listed_heads)
    if not workers and not heads:
        raise FleetError("no grid workers or grid heads to play: pass --workers or a --registry that lists some")
    for name in ("done", "hazards", "fix"):
        if not 0 <= getattr(args, name) <= 1:
            raise FleetError(f"--{name} is a share between 0 and 1")
    options = WorkerOptions(api=args.api, workers=workers, heads=heads, password=args.password, seed=args.seed,
                            per_minute=args.per_minute, done_share=args.done, hazard_share=args.hazards,
                            fix_share=args.fix, report_every=args.report_every)

    async def run() -> dict[str, int]:
        stop = asyncio.Event()
        if args.duration:
            asyncio.get_running_loop().call_later(args.duration, stop.set)
        return await WorkerSim(options).run(stop, until_idle=args.until_idle)

    log.info("%d grid workers and %d grid heads at work on %s", len(workers), len(heads), args.api)
    import json

    print(json.dumps(asyncio.run(run()), sort_keys=True))
    return 0


def _logging(verbose: bool) -> None:
    logging.getLogger("gridhub").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")


COMMANDS = {"devices": devices_main, "scenario": scenario_main, "district": district_main, "load": load_main,
            "workers": workers_main}


def main(argv: list[str]) -> int:
    """`gridhub simulate ...`: the first word picks the command; options alone mean load."""
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE + "\n\nEach command has --help (`gridhub simulate load --help` for the load options); "
              "docs/testers.md explains them all.")
        return 0
    command = COMMANDS.get(argv[0]) if argv else None
    rest = argv[1:] if command else argv
    try:
        return (command or load_main)(rest)
    except (FleetError, BrokerURLError) as exc:
        print(f"gridhub simulate: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
