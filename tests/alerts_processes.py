"""`gridhub alerts` as a real process for the alerts failover tests (tests/test_alerts_failover.py on mosquitto,
tests/test_alerts_nats.py on a NATS cluster): started in a process group of its own (its telemetry process with it),
so that SIGKILL, SIGSTOP and SIGCONT reach both processes, its log in a file of the test's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from gridhub.settings import Settings

CONNECTED = " connected (MQTT"  # one line per session connection: "alerts gridhub-alerts-p0-… connected (MQTT 3.1.1, …"


class HubEnv(Protocol):
    settings: Settings

    def env(self, instance_id: str) -> dict[str, str]: ...


class Alerts:
    """`python -m gridhub.cli alerts` in a process group of its own (the telemetry process with it)."""

    def __init__(self, hub: HubEnv, name: str, tmp_path: Path, lease_s: str, extra_env: dict[str, str] | None = None,
                 ) -> None:
        self.name = name
        self.log = tmp_path / f"{name}.log"
        env = {**hub.env(name), "GRIDHUB_LEASE_S": lease_s, **(extra_env or {})}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "alerts"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=str(hub.settings.data_dir),
                                         start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def connections(self) -> int:
        """How many session connections this process has made (both lanes, every partition)."""
        return self.text().count(CONNECTED)

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal_group(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(f"alerts {self.name} did not stop within 60 s") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(30)
