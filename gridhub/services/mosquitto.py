"""mosquitto's password and ACL files with the hub's own account (`BrokerFiles`, shared with the embedded
broker), and a mosquitto process of our own (`LocalMosquitto`, `start_private_mosquitto()`).

The broker's doors, the same here as in deploy/mosquitto/mosquitto.conf: the hub's parts connect on a listener of
their own (`port`), devices and worker apps on a device listener (`device_port`, and `tls.port` over TLS) where
`use_username_as_clientid` makes every client id the account's user name, so that no device account can take a
session named by one of the hub's client ids (`gridhub-<part>-<instance>`) and knock the hub's consumer off. A
packet larger than `MAX_PACKET_SIZE` disconnects its sender before the broker reads it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

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
    terminate,
    user_can_reach,
    user_exists,
    wait_until,
    write_private,
)

HUB_MQTT_USER = "gridhub-hub"
# a frame is at most 2 MiB (CONTRACT §1); 2.5 MiB leaves room for the topic, MQTT 5 properties and headers.
# `max_packet_size` (mosquitto >= 1.6, so Debian 12's 2.0.11 and Debian 13's 2.0.21) disconnects the sender as soon
# as the packet's length is read; `message_size_limit` would read the whole payload first and then drop it quietly.
MAX_PACKET_SIZE = 2_621_440
# the hub's client ids (`Settings.client_id`): only the hub's account may use them on the embedded broker
HUB_CLIENT_ID_PREFIX = "gridhub-"


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
    port: int  # the hub's listener
    device_port: int | None = None  # devices' and worker apps' listener; None: they share `port`
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

    def device_url(self, username: str, password: str) -> str:
        """A device's (or worker app's) URL: its account on the device listener."""
        return f"mqtt://{quote(username, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.device_port or self.port}"

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
        terminate(pid, timeout, name)
        self.pid_file.unlink(missing_ok=True)


@dataclass(frozen=True)
class TlsListener:
    """A TLS listener for devices: its port and the server's certificate chain and key (PEM files, e.g. from
    `gridhub services certs`); they are copied into the broker's directory, readable by the broker's user."""

    port: int
    certfile: Path
    keyfile: Path


class LocalMosquitto(BrokerFiles):
    """A mosquitto broker of our own: configuration, accounts, persistence and log in `confdir`, password
    authentication and an ACL file, no anonymous access; the hub's listener on 127.0.0.1:`port`, the devices' on
    127.0.0.1:`device_port` (when given) and over TLS on 127.0.0.1:`tls.port` (when given), both with the client id
    replaced by the user name."""

    def __init__(
        self,
        confdir: Path,
        port: int,
        *,
        device_port: int | None = None,
        tls: TlsListener | None = None,
        max_inflight_messages: int = 4000,
        max_queued_messages: int = 1_000_000,
        max_packet_size: int = MAX_PACKET_SIZE,
        binary: Path | None = None,
    ) -> None:
        self.confdir = Path(confdir).absolute()
        self.port = port
        self.device_port = device_port
        self.tls = tls
        self.max_packet_size = max_packet_size
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
        return f"LocalMosquitto(confdir={str(self.confdir)!r}, port={self.port}, device_port={self.device_port})"

    @property
    def ports(self) -> list[int]:
        """Every port it listens on: the hub's, the devices', the TLS one."""
        return [p for p in (self.port, self.device_port, self.tls.port if self.tls else None) if p is not None]

    @property
    def tls_certfile(self) -> Path:
        return self.confdir / "tls" / "server.crt"

    @property
    def tls_keyfile(self) -> Path:
        return self.confdir / "tls" / "server.key"

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
            # accounts, ACL and limits below hold for every listener
            "per_listener_settings false",
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
            f"max_packet_size {self.max_packet_size}",
        ]
        if self._run_user:
            lines.append(f"user {self._run_user}")
        lines += listener_lines(self.port, self.device_port,
                                (self.tls.port, self.tls_certfile, self.tls_keyfile) if self.tls else None)
        return "\n".join(lines) + "\n"

    def _copy_tls_files(self) -> None:
        if self.tls is None:
            return
        (self.confdir / "tls").mkdir(exist_ok=True)
        if self.file_owner:
            chown(self.confdir / "tls", self.file_owner)
        write_private(self.tls_certfile, Path(self.tls.certfile).read_text(), self.file_owner)
        write_private(self.tls_keyfile, Path(self.tls.keyfile).read_text(), self.file_owner)

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
            if self.device_port is not None:
                require_free_port(self.device_port, "mosquitto's device listener", "GRIDHUB_MQTT_PORT")
            if self.tls is not None:
                require_free_port(self.tls.port, "mosquitto's TLS listener", "the TLS port")
            self._prepare_dir()
            self._ensure_accounts()
            self._copy_tls_files()
            write_private(self.conf_file, self._config_text(), self.file_owner)
            self.pid_file.unlink(missing_ok=True)
            with Path(self._stderr_file).open("ab") as err:
                proc = subprocess.Popen(
                    [str(self.binary), "-c", str(self.conf_file)],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd="/", start_new_session=True,
                )

            def listening() -> bool:
                return proc.poll() is None and all(port_open(p) for p in self.ports) and self.is_running()

            if not wait_until(listening, timeout) or proc.poll() is not None:
                if proc.poll() is None:
                    proc.kill()
                raise ServiceError(
                    f"mosquitto did not start on 127.0.0.1:{', '.join(map(str, self.ports))} (is a port taken?):\n"
                    f"{tail(self._stderr_file, 10)}\n--- {self.log_file} ---\n{tail(self.log_file)}"
                )

    def stop(self, timeout: float = 10) -> None:
        """Stop the broker; a no-op when it is not running."""
        with locked(self._lockfile):
            self._terminate(self._running_pid("mosquitto"), "mosquitto", timeout)


def listener_lines(hub_port: int, device_port: int | None, tls: tuple[int, Path, Path] | None,
                   bind: str = "127.0.0.1") -> list[str]:
    """mosquitto's listeners: the hub's own, and the devices' (plain and over TLS: `(port, certfile, keyfile)`) where
    the client id is the user name (`use_username_as_clientid`, a per-listener option in mosquitto 2.0.x)."""
    lines = ["# the hub's parts: their own client ids (persistent sessions named by part and instance)",
             f"listener {hub_port} {bind}"]
    if device_port is not None:
        lines += ["# devices and worker apps: the client id is the user name, so no account takes the hub's sessions",
                  f"listener {device_port} {bind}", "use_username_as_clientid true"]
    if tls is not None:
        port, certfile, keyfile = tls
        lines += ["# devices and worker apps over TLS, client id as above",
                  f"listener {port} {bind}", "use_username_as_clientid true",
                  f"certfile {certfile}", f"keyfile {keyfile}", "tls_version tlsv1.2"]
    return lines


def start_private_mosquitto(
    tmpdir: Path, port: int | None = None, *, passwd_text: str = "", acl_text: str = "",
    max_inflight_messages: int = 4000, device_port: int | None = None,
    tls: tuple[Path, Path] | None = None,
) -> LocalMosquitto:
    """A mosquitto of its own for one test session, in `tmpdir`, with the hub's listener on `port` or a free one and
    the devices' listener on `device_port` or a free one (and a TLS one on a free port with `tls`: the server's
    certificate and key files), with the given accounts (the hub account `gridhub-hub` is always added; see
    `hub_password()`)."""
    attempts = 1 if port is not None else 5
    last: ServiceError | None = None
    for _ in range(attempts):
        tls_listener = TlsListener(free_port(), tls[0], tls[1]) if tls is not None else None
        broker = LocalMosquitto(Path(tmpdir) / "mosquitto", port or free_port(), device_port=device_port or free_port(),
                                tls=tls_listener, max_inflight_messages=max_inflight_messages)
        broker.apply_accounts(passwd_text, acl_text)
        try:
            broker.ensure_started()
            return broker
        except ServiceError as exc:  # another process took the free port meanwhile
            last = exc
    assert last is not None
    raise last

