"""PostgreSQL with failover on one machine (`PatroniCluster`): a 3-member etcd (Debian's `etcd-server` 3.4) and two
PostgreSQL nodes under Patroni (Debian's `patroni` 3.0.2, its `etcd3` settings), TimescaleDB preloaded on both,
synchronous replication on, every port on 127.0.0.1.

The invariant: with `synchronous_mode` a COMMIT returns only once the synchronous standby has the transaction, so the
node Patroni promotes when the primary dies has every committed row; the hub follows the primary with one multi-host
URL (`target_session_attrs=read-write`, `url()`). `primary_start_timeout: 0` makes Patroni fail over as soon as the
primary's postgres dies instead of restarting it in place for up to five minutes. Each etcd and Patroni process is
started here with a pid file (and Patroni's postgres writes its own `postmaster.pid`); `stop()` ends exactly the
processes those files name.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from gridhub.services.postgres import find_postgres_bindir, postgres_has_timescaledb
from gridhub.services.process import (
    ServiceError,
    chown,
    free_port,
    is_root,
    locked,
    pid_alive,
    port_open,
    read_pid,
    tail,
    terminate,
    user_exists,
    wait_until,
    write_private,
)

SCOPE = "gridhub"
PG_USER = "postgres"  # the system user Patroni (and so PostgreSQL) runs as under root
ETCD_USER = "etcd"  # created by Debian's etcd-server; etcd runs as root when it is missing
INSTALL_HINT = "apt-get install etcd-server patroni python3-etcd (or `make cluster-test`, which installs them)"
# Patroni's timing (seconds): a leader key lives `ttl` without renewal, so a dead machine's key expires after it (the
# write outage then); Patroni's documentation gives 20 as the least ttl (3.0.2 does not check) and asks for
# loop_wait + 2 * retry_timeout <= ttl.
TTL = 20
LOOP_WAIT = 2
RETRY_TIMEOUT = 5


def find_program(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    for candidate in (Path("/usr/bin") / name, Path("/usr/sbin") / name, Path("/usr/local/bin") / name):
        if candidate.exists():
            return candidate
    return None


@dataclass(frozen=True)
class EtcdMember:
    name: str
    client_port: int
    peer_port: int


@dataclass(frozen=True)
class PgNode:
    name: str
    pg_port: int
    rest_port: int


@dataclass(frozen=True)
class Layout:
    etcd: list[EtcdMember]
    nodes: list[PgNode]


def default_layout(base: int = 55500) -> Layout:
    """Fixed loopback ports: etcd clients base+i, etcd peers base+10+i (i = 0..2); PostgreSQL base+20+j, Patroni's
    REST API base+30+j (j = 0, 1)."""
    return Layout([EtcdMember(f"e{i + 1}", base + i, base + 10 + i) for i in range(3)],
                  [PgNode(f"pg{j + 1}", base + 20 + j, base + 30 + j) for j in range(2)])


def free_layout() -> Layout:
    """Ports that are free now (for tests)."""
    return Layout([EtcdMember(f"e{i + 1}", free_port(), free_port()) for i in range(3)],
                  [PgNode(f"pg{j + 1}", free_port(), free_port()) for j in range(2)])


class PatroniCluster:
    """Under `root`: `etcd/<member>/` (data, `.pid`, `.log`), `<node>/` (`patroni.yml`, `patroni.pid`,
    `patroni.log`, PostgreSQL's data in `<node>/data`), `secrets.json` (0600: the superuser's and the replication
    user's passwords) and `layout.json`. Under root PostgreSQL and Patroni run as `postgres`, etcd as `etcd`, so
    `root` must be a directory those users can enter (`make_service_tmpdir()`, or under /var/lib/gridhub-services).
    """

    def __init__(self, root: Path, layout: Layout | None = None) -> None:
        self.root = Path(root).absolute()
        layout_file = self.root / "layout.json"
        if layout is None and layout_file.exists():
            raw = json.loads(layout_file.read_text())
            layout = Layout([EtcdMember(**m) for m in raw["etcd"]], [PgNode(**n) for n in raw["nodes"]])
        self.layout = layout or default_layout()
        if len(self.layout.etcd) != 3:
            raise ServiceError("etcd has three members here: one can die and two still agree")
        if len(self.layout.nodes) < 2:
            raise ServiceError("failover needs at least two PostgreSQL nodes")
        self.run_as: str | None = PG_USER if is_root() else None
        self.etcd_user: str | None = (ETCD_USER if user_exists(ETCD_USER) else None) if is_root() else None

    # --- paths and secrets --------------------------------------------------------------------------------------

    def etcd_dir(self, m: EtcdMember) -> Path:
        return self.root / "etcd" / m.name

    def node_dir(self, n: PgNode) -> Path:
        return self.root / n.name

    def data_dir(self, n: PgNode) -> Path:
        return self.node_dir(n) / "data"

    def node(self, name: str) -> PgNode:
        for n in self.layout.nodes:
            if n.name == name:
                return n
        raise ServiceError(f"no PostgreSQL node {name!r}: the nodes are {', '.join(n.name for n in self.layout.nodes)}")

    def secrets(self) -> dict[str, str]:
        data: dict[str, str] = json.loads((self.root / "secrets.json").read_text())
        return data

    def url(self, database: str = "postgres") -> str:
        """The hub's URL: every node, and libpq picks the one that accepts writes (the primary)."""
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.layout.nodes)
        return (f"postgresql://postgres:{self.secrets()['superuser']}@{hosts}/{database}"
                "?target_session_attrs=read-write&connect_timeout=3")

    def node_url(self, n: PgNode, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.secrets()['superuser']}@127.0.0.1:{n.pg_port}/{database}"

    # --- configuration ------------------------------------------------------------------------------------------

    def etcd_hosts(self) -> str:
        return ",".join(f"127.0.0.1:{m.client_port}" for m in self.layout.etcd)

    def patroni_conf(self, n: PgNode, bindir: Path, timescaledb: bool) -> dict[str, Any]:
        s = self.secrets()
        parameters: dict[str, Any] = {
            "unix_socket_directories": str(self.node_dir(n)),
            "max_connections": 300,
            "wal_level": "replica",
            "hot_standby": "on",
            "wal_log_hints": "on",  # for pg_rewind: the old primary rejoins as a standby
        }
        if timescaledb:
            # as LocalPostgres: CREATE EXTENSION needs the library preloaded; no telemetry; the Apache edition's
            # built-in job logs an ERROR without max_background_workers=0 (SERVICES.md)
            parameters.update({"shared_preload_libraries": "timescaledb", "timescaledb.telemetry_level": "off",
                               "timescaledb.max_background_workers": 0})
        return {
            "scope": SCOPE,
            "name": n.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{n.rest_port}", "connect_address": f"127.0.0.1:{n.rest_port}"},
            # etcd 3.4 speaks the v3 API only by default: Patroni's etcd3 client (gRPC gateway over HTTP)
            "etcd3": {"hosts": self.etcd_hosts(), "protocol": "http"},
            "watchdog": {"mode": "off"},  # no /dev/watchdog here; production nodes should have one
            "bootstrap": {
                "dcs": {
                    "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    # fail over at once when the primary's postgres dies, instead of restarting it in place
                    "primary_start_timeout": 0,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": dict(parameters)},
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{n.pg_port}",
                "connect_address": f"127.0.0.1:{n.pg_port}",
                "data_dir": str(self.data_dir(n)),
                "bin_dir": str(bindir),
                "pgpass": str(self.node_dir(n) / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": s["superuser"]},
                    "replication": {"username": "replicator", "password": s["replication"]},
                    "rewind": {"username": "postgres", "password": s["superuser"]},
                },
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
                "parameters": parameters,
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def write_config(self) -> None:
        """etcd's directories, each node's patroni.yml and the passwords (kept across calls)."""
        bindir = find_postgres_bindir()
        if bindir is None:
            raise ServiceError("no PostgreSQL server in /usr/lib/postgresql/N/bin: run `make services-install` as root")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "layout.json").write_text(json.dumps(asdict(self.layout)))
        if not (self.root / "secrets.json").exists():
            write_private(self.root / "secrets.json", json.dumps(
                {"superuser": secrets.token_urlsafe(18), "replication": secrets.token_urlsafe(18)}))
        for m in self.layout.etcd:
            d = self.etcd_dir(m)
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
            if self.etcd_user:
                chown(d, self.etcd_user)
        timescaledb = postgres_has_timescaledb(bindir)
        for n in self.layout.nodes:
            d = self.node_dir(n)
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
            if self.run_as:
                chown(d, self.run_as)
            write_private(d / "patroni.yml", yaml.safe_dump(self.patroni_conf(n, bindir, timescaledb), sort_keys=False),
                          owner=self.run_as)

    # --- processes ----------------------------------------------------------------------------------------------

    def _spawn(self, cmd: list[str], user: str | None, cwd: Path, log: Path, pid_file: Path) -> int:
        if not log.exists():
            log.touch(0o600)
        if user:
            chown(log, user)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": str(cwd)}
        with log.open("ab") as fh:
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, user=user, group=user,
                                    extra_groups=[] if user else None)
        pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def etcd_pid(self, m: EtcdMember) -> int | None:
        pid = read_pid(self.etcd_dir(m) / "etcd.pid")
        return pid if pid is not None and pid_alive(pid, "etcd") else None

    def patroni_pid(self, n: PgNode) -> int | None:
        pid = read_pid(self.node_dir(n) / "patroni.pid")
        return pid if pid is not None and pid_alive(pid, "patroni") else None

    def postmaster_pid(self, n: PgNode) -> int | None:
        """The node's postgres (its own `postmaster.pid`), None when not running."""
        pid = read_pid(self.data_dir(n) / "postmaster.pid")
        return pid if pid is not None and pid_alive(pid, "postgres") else None

    @staticmethod
    def _program_with_free_ports(name: str, ports: tuple[tuple[int, str], ...]) -> Path:
        """The installed program `name`, once each of its ports is free (else a ServiceError saying which)."""
        program = find_program(name)
        if program is None:
            raise ServiceError(f"{name} is not installed: {INSTALL_HINT}")
        for port, what in ports:
            if port_open(port):
                raise ServiceError(f"127.0.0.1:{port} ({what}) is taken by another program: stop it or choose another"
                                   " layout")
        return Path(program)

    def start_etcd(self, m: EtcdMember) -> int:
        running = self.etcd_pid(m)
        if running is not None:
            return running
        program = self._program_with_free_ports("etcd", ((m.client_port, f"etcd member {m.name}'s client port"),
                                                         (m.peer_port, f"etcd member {m.name}'s peer port")))
        d = self.etcd_dir(m)
        state = "existing" if (d / "data" / "member").exists() else "new"
        cluster = ",".join(f"{e.name}=http://127.0.0.1:{e.peer_port}" for e in self.layout.etcd)
        cmd = [str(program), "--name", m.name, "--data-dir", str(d / "data"),
               "--listen-client-urls", f"http://127.0.0.1:{m.client_port}",
               "--advertise-client-urls", f"http://127.0.0.1:{m.client_port}",
               "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
               "--initial-cluster", cluster, "--initial-cluster-state", state,
               "--initial-cluster-token", f"{SCOPE}-{self.root.name}"]
        return self._spawn(cmd, self.etcd_user, d, d / "etcd.log", d / "etcd.pid")

    def etcd_healthy(self, m: EtcdMember) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{m.client_port}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def start_patroni(self, n: PgNode) -> int:
        running = self.patroni_pid(n)
        if running is not None:
            return running
        program = self._program_with_free_ports("patroni", ((n.pg_port, f"node {n.name}'s PostgreSQL port"),
                                                            (n.rest_port, f"node {n.name}'s REST API port")))
        d = self.node_dir(n)
        return self._spawn([str(program), str(d / "patroni.yml")], self.run_as, d, d / "patroni.log",
                           d / "patroni.pid")

    def start(self, timeout: float = 120) -> None:
        """etcd first (all three, until each says healthy), then Patroni on every node; returns when one node is
        the leader and every other one streams from it (synchronous mode then has its standby)."""
        with locked(self.root / ".lock"):
            if not (self.root / "secrets.json").exists():
                self.write_config()
            for m in self.layout.etcd:
                self.start_etcd(m)
            for m in self.layout.etcd:
                if not wait_until(lambda m=m: self.etcd_healthy(m), 30, 0.2):  # type: ignore[misc]
                    raise ServiceError(f"etcd member {m.name} is not healthy after 30 s; its log:\n"
                                       + tail(self.etcd_dir(m) / "etcd.log"))
            for n in self.layout.nodes:
                self.start_patroni(n)
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        """One leader, every other member streaming, and the leader's synchronous standby named."""
        if not wait_until(self._ready, timeout, 0.5):
            logs = "\n".join(f"--- {n.name} ---\n" + tail(self.node_dir(n) / "patroni.log", 15) for n in self.layout.nodes)
            raise ServiceError(f"the Patroni cluster is not ready after {timeout:.0f} s: {self.members()}\n{logs}")

    def _ready(self) -> bool:
        members = self.members()
        if len(members) != len(self.layout.nodes):
            return False
        leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        sync = [m for m in members if m.get("role") == "sync_standby" and m.get("state") in ("streaming", "running")]
        return len(leaders) == 1 and len(sync) >= 1

    def stop(self, timeout: float = 60) -> None:
        """Stop exactly what the pid files name: Patroni on every node (it stops its postgres), a postgres whose
        Patroni is gone, then etcd."""
        for n in self.layout.nodes:
            pid = self.patroni_pid(n)
            if pid is not None:
                terminate(pid, timeout)
            (self.node_dir(n) / "patroni.pid").unlink(missing_ok=True)
            postmaster = self.postmaster_pid(n)
            if postmaster is not None:  # Patroni was killed and left its postgres behind
                terminate(postmaster, timeout)
        for m in self.layout.etcd:
            pid = self.etcd_pid(m)
            if pid is not None:
                terminate(pid, 15)
            (self.etcd_dir(m) / "etcd.pid").unlink(missing_ok=True)

    # --- Patroni's REST API -------------------------------------------------------------------------------------

    def rest(self, n: PgNode, path: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of a GET on a node's REST API; (0, {}) when it does not answer. /primary
        answers 200 on the primary only."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{n.rest_port}{path}", timeout=2) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
        except (OSError, ValueError):
            return 0, {}

    def members(self) -> list[dict[str, Any]]:
        """/cluster's members, asked of each node in turn until one answers."""
        for n in self.layout.nodes:
            code, body = self.rest(n, "/cluster")
            if code == 200 and body.get("members"):
                members: list[dict[str, Any]] = body["members"]
                return members
        return []

    def leader(self) -> str | None:
        """The name of the node that is leader and running, as /cluster says."""
        for m in self.members():
            if m.get("role") == "leader" and m.get("state") == "running":
                return str(m["name"])
        return None

    def primary(self) -> PgNode | None:
        """The node whose /primary answers 200."""
        for n in self.layout.nodes:
            if self.rest(n, "/primary")[0] == 200:
                return n
        return None

    def status(self) -> dict[str, Any]:
        roles = {m["name"]: m for m in self.members()}
        return {
            "etcd": {m.name: {"pid": self.etcd_pid(m), "healthy": self.etcd_healthy(m), "client_port": m.client_port,
                              "peer_port": m.peer_port} for m in self.layout.etcd},
            "postgresql": {n.name: {"patroni_pid": self.patroni_pid(n), "postgres_pid": self.postmaster_pid(n),
                                    "role": roles.get(n.name, {}).get("role"),
                                    "state": roles.get(n.name, {}).get("state"), "pg_port": n.pg_port,
                                    "rest_port": n.rest_port} for n in self.layout.nodes},
        }


def main(argv: list[str] | None = None) -> int:
    """`python -m gridhub.services.patroni start|stop|status|url [--dir DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m gridhub.services.patroni",
                                     description="PostgreSQL under Patroni with a 3-member etcd on loopback ports")
    parser.add_argument("action", choices=["start", "stop", "status", "url"])
    parser.add_argument("--dir", default=None, help="the cluster's directory (default: <services root>/patroni)")
    args = parser.parse_args(argv)
    if args.dir:
        root = Path(args.dir)
    else:
        from gridhub.services.process import service_root
        from gridhub.settings import get_settings

        root = service_root(get_settings().data_dir) / "patroni"
    cluster = PatroniCluster(root)
    try:
        if args.action == "start":
            cluster.write_config()
            cluster.start()
            print(cluster.url())
        elif args.action == "stop":
            cluster.stop()
        elif args.action == "status":
            print(json.dumps(cluster.status(), indent=2))
        else:
            print(cluster.url())
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
