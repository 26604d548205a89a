"""The amqtt broker as a process of our own (`EmbeddedMqttBroker`), reading the same password and ACL files as
mosquitto through the plugins in `gridhub.services.amqtt_plugins`, which also keep other accounts off the hub's
client ids and check subscriptions against the ACL (amqtt has one listener: devices and the hub share it).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from gridhub.services.mosquitto import HUB_MQTT_USER, BrokerFiles
from gridhub.services.process import (
    ServiceError,
    locked,
    port_open,
    require_free_port,
    tail,
    wait_until,
    write_private,
)


def run_broker(config_file: Path) -> int:
    """Run the amqtt broker in this process until SIGTERM (the embedded broker's process)."""
    import asyncio
    import logging

    import yaml
    from amqtt.broker import Broker

    from gridhub.services.amqtt_plugins import install_connect_guard

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = yaml.safe_load(config_file.read_text())
    files = config["plugins"]["gridhub.services.amqtt_plugins.MosquittoFileAuth"]
    install_connect_guard(Path(files["password_file"]), Path(files["acl_file"]), files["hub_user"])

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


class EmbeddedMqttBroker(BrokerFiles):
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
        files = {"password_file": str(self.password_file), "acl_file": str(self.acl_file), "hub_user": HUB_MQTT_USER}
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "gridhub.services.amqtt_plugins.MosquittoFileAuth": files,
                "gridhub.services.amqtt_plugins.MosquittoFileAcl": files,
            },
        }

    def is_running(self) -> bool:
        return self._running_pid("python") is not None

    def apply_accounts(self, passwd_text: str, acl_text: str) -> None:
        """Write the password and ACL files; the broker re-reads them when they change."""
        with locked(self._lockfile):
            self.confdir.mkdir(parents=True, exist_ok=True)
            self._write_accounts(passwd_text, acl_text)

    def reload(self) -> None:
        """Nothing to do: the broker notices changed account files by itself."""

    def ensure_started(self, timeout: float = 20) -> None:
        """Write the configuration and start the broker process; a no-op when it already runs."""
        import yaml

        with locked(self._lockfile):
            if self.is_running():
                return
            require_free_port(self.port, "the amqtt broker", "GRIDHUB_MQTT_PORT")
            self.confdir.mkdir(parents=True, exist_ok=True)
            self._ensure_accounts()
            write_private(self.conf_file, yaml.safe_dump(self._config()))
            package_root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            with Path(self.log_file).open("ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gridhub.services.embedded_broker", str(self.conf_file)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env, start_new_session=True,
                )
            self.pid_file.write_text(f"{proc.pid}\n")
            if not wait_until(lambda: proc.poll() is None and port_open(self.port), timeout) or proc.poll() is not None:
                if proc.poll() is None:
                    proc.kill()
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(
                    f"the amqtt broker did not start on 127.0.0.1:{self.port} (is the port taken?):\n"
                    f"--- {self.log_file} ---\n{tail(self.log_file)}"
                )

    def stop(self, timeout: float = 10) -> None:
        """Stop the broker process; a no-op when it is not running."""
        with locked(self._lockfile):
            self._terminate(self._running_pid("python"), "python", timeout)


if __name__ == "__main__":  # the broker's own process: python -m gridhub.services.embedded_broker CONFIG
    sys.exit(run_broker(Path(sys.argv[1])))
