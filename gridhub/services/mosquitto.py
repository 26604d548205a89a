"""mosquitto's password and ACL files with the hub's own account (`BrokerFiles`, shared with the embedded
broker), and a mosquitto process of our own (`LocalMosquitto`, `start_private_mosquitto()`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from gridhub.accounts import mosquitto_hash, mosquitto_verify, parse_passwd
from gridhub.services.process import (
    ServiceError,
    chown,
    free_port,
    is_root,
    locked,
    pid_alive,
    port_open,
    read_pid,
    require_free_port,
    tail,
    user_can_reach,
    user_exists,
    wait_until,
    write_private,
)

HUB_MQTT_USER = "gridhub-hub"


def _with_hub_account(passwd_text: str, acl_text: str, hub_password: str, *, replace: bool = False) -> tuple[str, str]:
    """The account files with the hub's own account (full access): a hub entry already in
    `passwd_text` is kept as given unless `replace`, else one for `hub_password` is added."""
    lines = [line for line in passwd_text.splitlines() if line.strip()]
    existing = parse_passwd(passwd_text).get(HUB_MQTT_USER)
    if existing is None or (replace and not mosquitto_verify(hub_password, existing)):
        lines = [line for line in lines if not line.startswith(f"{HUB_MQTT_USER}:")]
        lines.insert(0, f"{HUB_MQTT_USER}:{mosquitto_hash(hub_password)}")
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


class BrokerFiles:
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
        write_private(self.hub_password_file, password + "\n")
        self._hub_password_new = True
        return password

    def url(self) -> str:
        """The hub's URL: mqtt://gridhub-hub:PASSWORD@127.0.0.1:PORT."""
        return f"mqtt://{HUB_MQTT_USER}:{self.hub_password()}@127.0.0.1:{self.port}"

    def _write_accounts(self, passwd_text: str, acl_text: str, *, replace_hub: bool = False) -> None:
        passwd, acl = _with_hub_account(passwd_text, acl_text, self.hub_password(), replace=replace_hub)
        write_private(self.password_file, passwd, self.file_owner)
        write_private(self.acl_file, acl, self.file_owner)

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
        hub = parse_passwd(passwd).get(HUB_MQTT_USER)
        stale = hub is not None and self._hub_password_new and not mosquitto_verify(hub_password, hub)
        if hub is None or stale or not any(line.split() == ["user", HUB_MQTT_USER] for line in acl.splitlines()):
            self._write_accounts(passwd, acl, replace_hub=stale)

    def _running_pid(self, name: str) -> int | None:
        pid = read_pid(self.pid_file)
        if pid is not None and pid_alive(pid, name):
            return pid
        return None

    def _terminate(self, pid: int | None, name: str, timeout: float) -> None:
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not pid_alive(pid, name), timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid, name), 5)
        self.pid_file.unlink(missing_ok=True)


class LocalMosquitto(BrokerFiles):
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
        self.file_owner = "mosquitto" if is_root() and user_exists("mosquitto") else None
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
        if not is_root():
            self._run_user = None
            return
        if self.file_owner:
            chown(self.confdir, self.file_owner)
            self.confdir.chmod(0o750)
            if user_can_reach(self.file_owner, self.confdir, write=True):
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
        with locked(self._lockfile):
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
        with locked(self._lockfile):
            if self.is_running():
                return
            require_free_port(self.port, "mosquitto", "GRIDHUB_MQTT_PORT")
            self._prepare_dir()
            self._ensure_accounts()
            write_private(self.conf_file, self._config_text(), self.file_owner)
            self.pid_file.unlink(missing_ok=True)
            with Path(self._stderr_file).open("ab") as err:
                proc = subprocess.Popen(
                    [str(self.binary), "-c", str(self.conf_file)],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd="/", start_new_session=True,
                )

            def listening() -> bool:
                return proc.poll() is None and port_open(self.port) and self.is_running()

            if not wait_until(listening, timeout) or proc.poll() is not None:
                if proc.poll() is None:
                    proc.kill()
                raise ServiceError(
                    f"mosquitto did not start on 127.0.0.1:{self.port} (is the port taken?):\n"
                    f"{tail(self._stderr_file, 10)}\n--- {self.log_file} ---\n{tail(self.log_file)}"
                )

    def stop(self, timeout: float = 10) -> None:
        """Stop the broker; a no-op when it is not running."""
        with locked(self._lockfile):
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

