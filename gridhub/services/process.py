"""Process and file helpers for the local services: running commands as a service user, pid files,
ports, waiting, locks and private files; `ServiceError` for anything that goes wrong.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from gridhub.settings import ServicesSettings, explain

SERVICE_ROOT_WHEN_ROOT = Path("/var/lib/gridhub-services")
EMBEDDED_SYSTEM_USER = "gridhub"


class ServiceError(RuntimeError):
    """A local service could not be installed, started or stopped; the message says what to do."""


# --- small process and file helpers -------------------------------------------------------------


def is_root() -> bool:
    return os.geteuid() == 0


def services_settings() -> ServicesSettings:
    """GRIDHUB_SERVICES_DIR, GRIDHUB_PG_PORT and GRIDHUB_MQTT_PORT as they are set now; a `ServiceError` names
    one that is wrong."""
    try:
        return ServicesSettings()
    except ValidationError as exc:
        raise ServiceError(explain(exc)) from None


def service_root(data_dir: Path) -> Path:
    """Where the local services keep their state: $GRIDHUB_SERVICES_DIR when set, else a system
    directory under root (so that the `postgres` and `mosquitto` users can reach it even when the
    checkout is in a private home), else `<data_dir>/services`."""
    override = services_settings().services_dir
    if override is not None:
        return override.absolute()
    if is_root():
        return SERVICE_ROOT_WHEN_ROOT
    return Path(data_dir).resolve() / "services"


def ensure_service_root(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if is_root() and path == SERVICE_ROOT_WHEN_ROOT:
        path.chmod(0o755)


def make_service_tmpdir(prefix: str = "gridhub-") -> Path:
    """A fresh directory that the service users (`postgres`, `mosquitto`) can enter: under
    /var/lib/gridhub-services/tmp when root (a pytest tmp dir there is private to root), else a
    plain temporary directory. The caller removes it."""
    if is_root():
        base = SERVICE_ROOT_WHEN_ROOT / "tmp"
        ensure_service_root(SERVICE_ROOT_WHEN_ROOT)
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


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_free_port(port: int, what: str, env_name: str) -> None:
    if port_open(port):
        raise ServiceError(
            f"127.0.0.1:{port} is taken by another program, so {what} cannot listen there: "
            f"stop that program or choose another port with {env_name}"
        )


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def as_user(user: str | None, cmd: list[str]) -> list[str]:
    if user and is_root():
        return ["runuser", "-u", user, "--", *cmd]
    return cmd


def run_command(user: str | None, cmd: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command, as `user` when we are root, from a directory every user can enter."""
    proc = subprocess.run(as_user(user, cmd), cwd="/", capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ServiceError(
            f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()}"
        )
    return proc


def user_can_reach(user: str, path: Path, *, write: bool = False) -> bool:
    """Whether `user` can enter (and with write=True, write) `path`; only meaningful as root."""
    if not is_root():
        return True
    flag = "-w" if write else "-x"
    return subprocess.run(["runuser", "-u", user, "--", "test", flag, str(path)], cwd="/").returncode == 0


def pid_alive(pid: int, name: str | None = None) -> bool:
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


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()



def terminate(pid: int, timeout: float, name: str | None = None) -> None:
    """SIGTERM to `pid`, SIGKILL when it still runs (as `name`, when given) after `timeout`; returns once it is gone
    (or 5 s after the SIGKILL). A process already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not pid_alive(pid, name), timeout, 0.1):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid, name), 5)

@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock between processes managing the same service directory."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with Path(lock_file).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_private(path: Path, text: str, owner: str | None = None) -> None:
    """Write a file readable only by its owner (`owner` when we are root)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    Path(tmp).chmod(0o600)
    if owner and is_root() and user_exists(owner):
        chown(tmp, owner)
    Path(tmp).replace(path)


def ensure_system_user(name: str) -> str:
    """An unprivileged system user to run a server as under root: `name`, created if missing,
    else `nobody`."""
    if user_exists(name):
        return name
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if Path(useradd).exists():
        proc = subprocess.run(
            [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True,
        )
        if proc.returncode == 0 or user_exists(name):
            return name
    return "nobody"

