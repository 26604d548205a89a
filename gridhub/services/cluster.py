"""The whole clustered hub on one machine (`HubCluster`, `make cluster`): a 3-node NATS JetStream cluster
(`NatsCluster`), a 3-member etcd with 2 PostgreSQL nodes under Patroni (`PatroniCluster`), and two instances of each
part of the hub (ingest, alerts, detect, notify, api), every port on 127.0.0.1.

The invariant: everything it starts has a pid file under one directory (`var/cluster` by default), and `stop()` ends
exactly the processes those files name, each checked to be the very process that was started (its start time in
/proc is kept beside its pid), and what they started in their own process group; nothing else, such as the
mosquitto or PostgreSQL of `make services`, is looked at. The parts are not supervised here (as they would be by
systemd or `restart: unless-stopped` in production): `start` again starts whatever is not running.

Order: Patroni (etcd first) -> the `gridhub` database and its schema through the multi-host URL -> the demo registry
and the demo log-ins -> NATS accounts from the registry (`gridhub devices credentials --broker nats`) -> the NATS
nodes -> the parts, each with `GRIDHUB_BROKER=nats`, `GRIDHUB_PARTITIONS`, an MQTT URL naming the three nodes, the
database URL naming both PostgreSQL nodes (`target_session_attrs=read-write`), its own `GRIDHUB_INSTANCE_ID` and
health port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gridhub.services import nats, patroni
from gridhub.services.nats import NatsCluster, NatsNode
from gridhub.services.patroni import PatroniCluster
from gridhub.services.process import (
    ServiceError,
    free_port,
    is_root,
    locked,
    port_open,
    tail,
    user_can_reach,
    wait_until,
    write_private,
)

PARTS = ("ingest", "alerts", "detect", "notify", "api")
INSTANCES = 2
DATABASE = "gridhub"
HUB_USER = "gridhub-hub"
# the parts' ports in the fixed layout: the two APIs on 8100 and 8101, the other parts' health from 8110
API_PORT = 8100
HEALTH_PORT = 8110
PART_PROGRAM = "gridhub.cli"
DEMO_NOTIFY_FILE = "demo-notify.yaml"  # gridhub.demo_run.demo_notify_file's  # what /proc/<pid>/cmdline of a part names


@dataclass(frozen=True)
class PartProcess:
    """One instance of one part: `port` is the API's HTTP port for the api, the health port for the others."""

    part: str
    index: int
    port: int

    @property
    def name(self) -> str:
        return f"{self.part}-{self.index + 1}"

    @property
    def instance_id(self) -> str:
        return f"cluster-{self.name}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", PART_PROGRAM]
        if self.part == "notify":
            return [*cmd, "notify", "run"]
        if self.part == "api":
            return [*cmd, "api", "--host", "127.0.0.1", "--port", str(self.port)]
        return [*cmd, self.part]


@dataclass(frozen=True)
class ClusterLayout:
    nats: list[NatsNode]
    patroni: patroni.Layout
    parts: list[PartProcess]
    partitions: int

    def to_json(self) -> str:
        return json.dumps({"nats": [asdict(n) for n in self.nats], "patroni": asdict(self.patroni),
                           "parts": [asdict(p) for p in self.parts], "partitions": self.partitions}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ClusterLayout:
        raw = json.loads(text)
        pg = raw["patroni"]
        return cls([NatsNode(**n) for n in raw["nats"]],
                   patroni.Layout([patroni.EtcdMember(**m) for m in pg["etcd"]], [patroni.PgNode(**n) for n in pg["nodes"]]),
                   [PartProcess(**p) for p in raw["parts"]], int(raw["partitions"]))


def part_layout(api_port: int, health_port: int) -> list[PartProcess]:
    """Two instances of each part: the APIs on api_port and api_port + 1, the others' health ports from health_port
    on, two by two."""
    out: list[PartProcess] = []
    health = health_port
    for part in PARTS:
        for i in range(INSTANCES):
            if part == "api":
                out.append(PartProcess(part, i, api_port + i))
            else:
                out.append(PartProcess(part, i, health))
                health += 1
    return out


def default_layout(partitions: int = nats.DEFAULT_PARTITIONS) -> ClusterLayout:
    """Fixed loopback ports: NATS from 54222, etcd and PostgreSQL from 55500 (their modules' layouts), the APIs on
    8100-8101, the parts' health on 8110-8117."""
    return ClusterLayout(nats.default_layout(), patroni.default_layout(), part_layout(API_PORT, HEALTH_PORT),
                         nats.check_partitions(partitions))


def free_layout(partitions: int = nats.DEFAULT_PARTITIONS, part_base: int | None = None) -> ClusterLayout:
    """Ports that are free now (tests); the parts' ten from `part_base` on when given (a caller that picks a run
    below the ephemeral range), else one by one."""
    if part_base is not None:
        parts = part_layout(part_base, part_base + INSTANCES)
    else:
        parts = [PartProcess(p.part, p.index, free_port()) for p in part_layout(0, 0)]
    return ClusterLayout(nats.free_layout(), patroni.free_layout(), parts, nats.check_partitions(partitions))


# --- processes identified by pid and start time -----------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the pid it names one
    process for good, since a reused pid has another start time. None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _group_members(pgid: int) -> list[int]:
    """The live processes of one process group (a part's process and the children it started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def _environ_has(pid: int, entries: list[bytes]) -> bool:
    """Whether the process's environment holds each `NAME=value` entry (False when it cannot be read)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return all(e in env for e in entries)


def _health(port: int, timeout: float = 2) -> tuple[int, Any] | None:
    """(HTTP status, JSON body) of http://127.0.0.1:<port>/healthz; None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read() or b"null")
        return exc.code, None
    except (OSError, ValueError):
        return None


# --- the cluster -------------------------------------------------------------------------------------------------


class HubCluster:
    """Under `root`: `layout.json`, `secrets.json` (0600: the hub's secret key and broker password), `nats/` (the
    NatsCluster's files, the registry's accounts.conf and device-credentials.csv), `patroni/` (the PatroniCluster's),
    `parts/<part>-<n>.pid` and `.log`, and `data/` (the parts' GRIDHUB_DATA_DIR)."""

    def __init__(self, root: Path, layout: ClusterLayout | None = None) -> None:
        self.root = Path(root).absolute()
        layout_file = self.root / "layout.json"
        if layout is None and layout_file.exists():
            layout = ClusterLayout.from_json(layout_file.read_text())
        self.layout = layout or default_layout()
        self.nats = NatsCluster(self.root / "nats", self.layout.nats)
        self.patroni = PatroniCluster(self.root / "patroni", self.layout.patroni)

    # --- files and settings -------------------------------------------------------------------------------------

    def part_dir(self) -> Path:
        return self.root / "parts"

    def pid_file(self, p: PartProcess) -> Path:
        return self.part_dir() / f"{p.name}.pid"

    def log_file(self, p: PartProcess) -> Path:
        return self.part_dir() / f"{p.name}.log"

    def secrets(self) -> dict[str, str]:
        data: dict[str, str] = json.loads((self.root / "secrets.json").read_text())
        return data

    def mqtt_url(self, nodes: list[NatsNode] | None = None) -> str:
        """The hub's broker URL naming every NATS node's MQTT port (the parts try them in turn)."""
        hosts = ",".join(f"127.0.0.1:{n.mqtt_port}" for n in (nodes or self.layout.nats))
        return f"mqtt://{HUB_USER}:{self.secrets()['hub_mqtt_password']}@{hosts}"

    def database_url(self) -> str:
        return self.patroni.url(DATABASE)

    def hub_env(self, *, mqtt_url: str | None = None) -> dict[str, str]:
        """The settings every part and command of this cluster runs with (secrets included: pass it only to
        children, never print it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDHUB_")}
        env.update({
            "GRIDHUB_BROKER": "nats",
            "GRIDHUB_PARTITIONS": str(self.layout.partitions),
            "GRIDHUB_MQTT_URL": mqtt_url or self.mqtt_url(),
            "GRIDHUB_DATABASE_URL": self.database_url(),
            "GRIDHUB_SECRET_KEY": self.secrets()["secret_key"],
            "GRIDHUB_DATA_DIR": str(self.root / "data"),
        })
        # The broker check skips a NATS cluster by itself (gridhub/brokercheck.py NATS_SKIP: no per-session queue
        # limit to probe there) and logs why.
        # the demo's notify file (Web Push) unless one is given, so that notify sends and serves its health
        env["GRIDHUB_NOTIFY_FILE"] = str(self.root / "data" / DEMO_NOTIFY_FILE)
        for name in ("GRIDHUB_TIMEZONE", "GRIDHUB_TOPIC_PREFIX", "GRIDHUB_NOTIFY_FILE", "GRIDHUB_RULES_FILE",
                     "GRIDHUB_LEASE_S", "GRIDHUB_BROKER_CHECK"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def part_env(self, p: PartProcess) -> dict[str, str]:
        env = self.hub_env()
        env["GRIDHUB_INSTANCE_ID"] = p.instance_id
        if p.part != "api":
            env["GRIDHUB_HEALTH_PORT"] = str(p.port)
        return env

    def write_config(self) -> None:
        """The directory (enterable by PostgreSQL's and etcd's users under root), the layout and the secrets (kept
        across calls), and Patroni's files."""
        self.root.mkdir(parents=True, exist_ok=True)
        if is_root():
            self.root.chmod(0o755)
            if not user_can_reach(patroni.PG_USER, self.root):
                raise ServiceError(f"{self.root} is not reachable by the {patroni.PG_USER} user, who runs PostgreSQL "
                                   "under Patroni: choose a directory every user can enter (--dir)")
        (self.root / "layout.json").write_text(self.layout.to_json())
        if not (self.root / "secrets.json").exists():
            write_private(self.root / "secrets.json", json.dumps(
                {"secret_key": secrets.token_urlsafe(48), "hub_mqtt_password": secrets.token_urlsafe(24)}))
        self.part_dir().mkdir(exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        (self.root / "data").chmod(0o700)
        from gridhub.demo_run import demo_notify_file

        board = next(f"http://127.0.0.1:{p.port}/" for p in self.layout.parts if p.part == "api")
        assert demo_notify_file(self.root / "data", board).name == DEMO_NOTIFY_FILE
        self.patroni.write_config()

    # --- steps --------------------------------------------------------------------------------------------------

    def prepare_database(self) -> dict[str, str]:
        """The `gridhub` database, its schema and the demo district with the demo log-ins, all through the
        multi-host URL (so on whichever node is primary); returns worker id -> name of the log-ins."""
        from gridhub.auth import set_password
        from gridhub.db import connect, migrate
        from gridhub.demo_run import DEMO_LOGINS, demo_password, demo_registry
        from gridhub.registry import import_registry

        with connect(self.patroni.url("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        url = self.database_url()
        migrate(url)
        registry = demo_registry(datetime.now().date())
        with connect(url) as conn:
            import_registry(conn, registry)
            names = {w.id: w.name for w in registry.workers}
            for wid in DEMO_LOGINS:
                if wid in names:
                    set_password(conn, wid, demo_password(wid))
        return {w: names[w] for w in DEMO_LOGINS if w in names}

    def write_accounts(self) -> None:
        """accounts.conf and device-credentials.csv from the registry, by `gridhub devices credentials --broker
        nats` (audited like any other run), into the NATS cluster's directory; then each node's file."""
        self.nats.root.mkdir(parents=True, exist_ok=True)
        # the hub's account is read from the URL's user and password only: one node's URL is enough here
        env = self.hub_env(mqtt_url=self.mqtt_url(self.layout.nats[:1]))
        proc = subprocess.run([sys.executable, "-m", PART_PROGRAM, "devices", "credentials", "--broker", "nats",
                               "--partitions", str(self.layout.partitions), "--out-dir", str(self.nats.root),
                               "--nats-dir", str(self.nats.root), "--no-reload"],
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise ServiceError(f"gridhub devices credentials --broker nats failed (exit {proc.returncode}):\n"
                               + (proc.stdout + proc.stderr).strip()[-2000:])
        self.nats.write_config((self.nats.root / nats.ACCOUNTS_FILE).read_text())

    def part_pid(self, p: PartProcess) -> int | None:
        """The part's pid while the very process started for it runs (same pid, same start time)."""
        try:
            pid_s, started_s = self.pid_file(p).read_text().split()[:2]
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        return pid if _start_time(pid) == int(started_s) else None

    def start_part(self, p: PartProcess) -> int:
        running = self.part_pid(p)
        if running is not None:
            return running
        if port_open(p.port):
            raise ServiceError(f"127.0.0.1:{p.port} ({p.name}'s {'HTTP' if p.part == 'api' else 'health'} port) is "
                               "taken by another program: stop it or choose another layout")
        with self.log_file(p).open("ab") as log:
            proc = subprocess.Popen(p.command(), env=self.part_env(p), cwd=self.root, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        started = _start_time(proc.pid)
        self.pid_file(p).write_text(f"{proc.pid} {started}\n")
        return proc.pid

    def part_health(self, p: PartProcess) -> tuple[int, Any] | None:
        return _health(p.port)

    def wait_parts(self, timeout: float) -> list[str]:
        """Wait until every part answers /healthz with 200, or has exited; the problems left (empty: all well)."""
        def problems() -> list[str]:
            out = []
            for p in self.layout.parts:
                if self.part_pid(p) is None:
                    out.append(f"{p.name} exited; its log {self.log_file(p)}:\n{tail(self.log_file(p), 12)}")
                    continue
                h = self.part_health(p)
                if h is None or h[0] != 200:
                    out.append(f"{p.name} on 127.0.0.1:{p.port}: " + ("no answer" if h is None else
                                                                      f"{h[0]} {json.dumps(h[1])[:300]}"))
            return out

        def settled() -> bool:
            return all(self.part_pid(p) is None or (h := self.part_health(p)) is not None and h[0] == 200
                       for p in self.layout.parts)

        wait_until(settled, timeout, 0.5)
        return problems()

    def start(self, *, timeout: float = 180, progress: Any = None) -> dict[str, Any]:
        """Everything, in order (module docstring); a no-op for what runs already. Returns what `describe()`
        prints, plus `problems`: the parts that did not answer healthy within `timeout` (they are left running, or
        exited, for their logs to be read)."""
        say = progress or (lambda _msg: None)
        with locked(self.root / ".lock"):
            t0 = time.monotonic()
            self.write_config()
            self.patroni.start(timeout=timeout)
            say(f"PostgreSQL under Patroni: leader {self.patroni.leader()} ({time.monotonic() - t0:.1f} s)")
            t1 = time.monotonic()
            logins = self.prepare_database()
            say(f"database {DATABASE} migrated, demo district imported ({time.monotonic() - t1:.1f} s)")
            t2 = time.monotonic()
            self.write_accounts()
            self.nats.reload()  # nodes already running read the accounts again (SIGHUP)
            self.nats.start(timeout=60)
            say(f"NATS: 3 nodes healthy ({time.monotonic() - t2:.1f} s)")
            t3 = time.monotonic()
            for p in self.layout.parts:
                self.start_part(p)
            problems = self.wait_parts(timeout)
            say(f"parts: {len(self.layout.parts) - len(problems)} of {len(self.layout.parts)} healthy "
                f"({time.monotonic() - t3:.1f} s; {time.monotonic() - t0:.1f} s in all)")
        return {**self.describe(logins), "problems": problems}

    # --- stopping -----------------------------------------------------------------------------------------------

    def stop_part(self, p: PartProcess, timeout: float = 15) -> None:
        """SIGTERM to the part's process group (the part and what it started, e.g. alerts' telemetry process),
        SIGKILL to whatever of that group is left after `timeout`. Only when the pid file names the process that
        was started; a group whose leader is gone keeps its id while members live, so no other process has it."""
        pid = self.part_pid(p)
        if pid is None:
            # the part itself is gone (killed), but what it started may live on in its group (alerts' telemetry
            # process): the group keeps the part's pid as its id while any member lives, so those are ours
            # (checked by their environment naming this cluster's part, in case the pid was reused meanwhile)
            with contextlib.suppress(OSError, ValueError, IndexError):
                leader = int(self.pid_file(p).read_text().split()[0])
                mark = f"GRIDHUB_INSTANCE_ID={p.instance_id}\0GRIDHUB_DATA_DIR={self.root / 'data'}".encode()
                members = _group_members(leader)
                pid = leader if members and all(_environ_has(m, mark.split(b"\0")) for m in members) else None
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            if not wait_until(lambda: not _group_members(pid), timeout, 0.1):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                wait_until(lambda: not _group_members(pid), 5, 0.05)
        self.pid_file(p).unlink(missing_ok=True)

    def stop(self) -> None:
        """The parts (in reverse: the api first, ingest last), then the NATS nodes, then Patroni and etcd: each by
        its pid file, nothing else."""
        for p in reversed(self.layout.parts):
            self.stop_part(p)
        self.nats.stop()
        self.patroni.stop()

    # --- what runs ----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        parts = {}
        for p in self.layout.parts:
            h = self.part_health(p) if self.part_pid(p) is not None else None
            parts[p.name] = {"pid": self.part_pid(p), "port": p.port, "instance_id": p.instance_id,
                             "health": None if h is None else h[0]}
        return {"nats": self.nats.status(), **self.patroni.status(), "parts": parts,
                "partitions": self.layout.partitions}

    def running(self) -> bool:
        st = self.status()
        return (any(n["pid"] for n in st["nats"].values()) or any(p["pid"] for p in st["parts"].values())
                or any(m["pid"] for m in st["etcd"].values())
                or any(n["patroni_pid"] for n in st["postgresql"].values()))

    def describe(self, logins: dict[str, str] | None = None) -> dict[str, Any]:
        """Addresses and log-ins, without secrets (the hub's URLs are in secrets.json and `env`)."""
        from gridhub.demo_run import demo_password

        return {
            "board": [f"http://127.0.0.1:{p.port}/" for p in self.layout.parts if p.part == "api"],
            "mqtt": [f"127.0.0.1:{n.mqtt_port}" for n in self.layout.nats],
            "nats_monitoring": [f"http://127.0.0.1:{n.http_port}/healthz" for n in self.layout.nats],
            "patroni_rest": [f"http://127.0.0.1:{n.rest_port}/cluster" for n in self.layout.patroni.nodes],
            "postgresql": [f"127.0.0.1:{n.pg_port}" for n in self.layout.patroni.nodes],
            "part_health": {p.name: f"http://127.0.0.1:{p.port}/healthz" for p in self.layout.parts},
            "device_credentials": str(self.nats.root / "device-credentials.csv"),
            "worker_credentials": str(self.nats.root / "worker-credentials.csv"),
            "logins": {wid: {"name": name, "password": demo_password(wid)} for wid, name in (logins or {}).items()},
            "partitions": self.layout.partitions,
        }


def describe_text(info: dict[str, Any]) -> str:
    lines = ["gridhub cluster is up (every port on 127.0.0.1):",
             "  board (API, two instances): " + "  ".join(info["board"]),
             "  devices' MQTT 3.1.1 (any NATS node): " + "  ".join(info["mqtt"]),
             f"  device passwords: {info['device_credentials']} (0600)",
             f"  worker app passwords (MQTT push): {info['worker_credentials']} (0600)",
             "  NATS monitoring: " + "  ".join(info["nats_monitoring"]),
             "  Patroni REST: " + "  ".join(info["patroni_rest"]),
             "  PostgreSQL nodes: " + "  ".join(info["postgresql"]),
             f"  partitions: {info['partitions']}",
             "  parts' health: " + "  ".join(f"{k} {v}" for k, v in info["part_health"].items())]
    if info.get("logins"):
        lines.append("log in as (demo passwords):")
        lines += [f"  {wid} / {v['password']}  ({v['name']})" for wid, v in info["logins"].items()]
    lines.append("`make cluster-stop` (gridhub cluster stop) stops exactly what was started.")
    return "\n".join(lines)


def default_root() -> Path:
    from gridhub.settings import get_settings

    return Path(get_settings().data_dir) / "cluster"


def main(argv: list[str] | None = None) -> int:
    """`gridhub cluster start|stop|status|env` (also `python -m gridhub.services.cluster`)."""
    parser = argparse.ArgumentParser(prog="gridhub cluster", description="the clustered hub on one machine: 3 NATS "
                                     "nodes, 3 etcd members, 2 PostgreSQL nodes under Patroni, 2 of each part")
    parser.add_argument("action", choices=["start", "stop", "status", "env"],
                        help="env prints the parts' GRIDHUB_* settings (with secrets) for a shell")
    parser.add_argument("--dir", type=Path, default=None, help="the cluster's directory (default <data dir>/cluster)")
    parser.add_argument("--partitions", type=int, default=None,
                        help=f"GRIDHUB_PARTITIONS of a new cluster (default {nats.DEFAULT_PARTITIONS})")
    parser.add_argument("--free-ports", action="store_true", help="a new cluster on ports free now (tests)")
    parser.add_argument("--part-port-base", type=int, default=None,
                        help="with --free-ports: the parts' ten ports from here on")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for each stage (start)")
    parser.add_argument("--json", action="store_true", help="start, status: JSON on stdout")
    args = parser.parse_args(argv)
    root = args.dir or default_root()
    try:
        if args.action == "start":
            layout = None
            partitions = args.partitions or nats.DEFAULT_PARTITIONS
            if not (root / "layout.json").exists():
                layout = (free_layout(partitions, args.part_port_base) if args.free_ports
                          else default_layout(partitions))
            elif args.partitions and args.partitions != (made := ClusterLayout.from_json(
                    (root / "layout.json").read_text())).partitions:
                print(f"error: the cluster in {root} has {made.partitions} partitions: to change the number, "
                      f"`gridhub cluster stop`, remove {root} (its data too) and start it again", file=sys.stderr)
                return 2
            cluster = HubCluster(root, layout)
            info = cluster.start(timeout=args.timeout,
                                 progress=lambda msg: print(f"[cluster] {msg}", file=sys.stderr, flush=True))
            print(json.dumps(info, indent=1) if args.json else describe_text(info))
            for problem in info["problems"]:
                print(f"[cluster] not healthy: {problem}", file=sys.stderr)
            return 1 if info["problems"] else 0
        if not (root / "layout.json").exists():
            print(f"no cluster in {root}: run `gridhub cluster start`" +
                  ("" if args.action != "stop" else " (nothing to stop)"), file=sys.stderr)
            return 0 if args.action == "stop" else 3
        cluster = HubCluster(root)
        if args.action == "stop":
            cluster.stop()
            print(f"stopped the cluster in {root}")
        elif args.action == "status":
            st = cluster.status()
            if args.json:
                print(json.dumps(st, indent=1))
            else:
                for name, n in st["nats"].items():
                    print(f"nats {name}: pid {n['pid']}, healthy {n['healthy']}, MQTT 127.0.0.1:{n['mqtt_port']}")
                for name, m in st["etcd"].items():
                    print(f"etcd {name}: pid {m['pid']}, healthy {m['healthy']}")
                for name, n in st["postgresql"].items():
                    print(f"postgresql {name}: patroni pid {n['patroni_pid']}, {n['role']} {n['state']}, "
                          f"127.0.0.1:{n['pg_port']}")
                for name, p in st["parts"].items():
                    print(f"{name}: pid {p['pid']}, health {p['health']} on 127.0.0.1:{p['port']}")
            return 0 if cluster.running() else 3
        else:
            for k, v in cluster.hub_env().items():
                if k.startswith("GRIDHUB_"):
                    print(f"{k}={v}")
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
