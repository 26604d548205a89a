"""The broker check and URLs naming several nodes (CONTRACT §8): a NATS cluster is not probed (its gateway keeps a
session's messages in a replicated stream, with no per-session queue limit to find) and a multi-host URL never
crashes the check's look for the local services (it did: `urlsplit(url).port` raises on `h1:p1,h2:p2`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from gridhub import brokercheck
from gridhub.settings import Settings

CLUSTER_URL = "mqtt://hub:secret@127.0.0.1:9,127.0.0.1:10,127.0.0.1:11"


def settings(tmp_path: Path, broker: str) -> Settings:
    return Settings(broker=broker, mqtt_url=CLUSTER_URL, data_dir=tmp_path, broker_check="on")


def test_a_nats_cluster_is_skipped_with_its_reason_and_never_probed(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def probe(_settings: Settings) -> brokercheck.BrokerReport:
        raise AssertionError("a NATS cluster was probed")

    monkeypatch.setattr(brokercheck, "run_check", probe)
    s = settings(tmp_path, "nats")
    assert brokercheck.skip_reason(s) == brokercheck.NATS_SKIP
    assert brokercheck.check_at_start(s, "ingest") is None


def test_a_multi_host_url_is_not_the_local_services_and_does_not_crash(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import gridhub.services.local as local

    running = SimpleNamespace(broker=SimpleNamespace(port=9), broker_kind="embedded")  # local services on port 9
    monkeypatch.setattr(local, "running_local_services", lambda _data_dir: running)
    s = settings(tmp_path, "mosquitto")
    assert brokercheck._local_broker_kind(s) is None
    assert brokercheck.skip_reason(s) is None  # a mosquitto named so is probed as usual
