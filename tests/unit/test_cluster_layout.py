"""gridhub/services/cluster.py without starting anything: the layout `make cluster` writes and reads back, and the
settings each part is started with (CONTRACT §8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from gridhub.runtime import PARTS
from gridhub.services.cluster import (
    INSTANCES,
    ClusterLayout,
    HubCluster,
    PartProcess,
    _start_time,
    default_layout,
    free_layout,
    part_layout,
)


def _cluster(tmp_path: Path) -> HubCluster:
    """A cluster whose secrets exist (as `write_config` leaves them), nothing started."""
    cluster = HubCluster(tmp_path, default_layout(partitions=6))
    (tmp_path / "secrets.json").write_text(json.dumps({"secret_key": "k" * 64, "hub_mqtt_password": "hub-pw"}))
    (cluster.patroni.root).mkdir(parents=True)
    (cluster.patroni.root / "secrets.json").write_text(json.dumps({"superuser": "su-pw", "replication": "r"}))
    return cluster


def test_the_layout_survives_its_file() -> None:
    for layout in (default_layout(), free_layout(partitions=8, part_base=21000)):
        again = ClusterLayout.from_json(layout.to_json())
        assert again == layout


def test_two_instances_of_each_part_on_ports_of_their_own() -> None:
    parts = part_layout(8100, 8110)
    assert sorted({p.part for p in parts}) == sorted(PARTS)
    assert all(sum(p.part == part for p in parts) == INSTANCES for part in PARTS)
    assert len({p.port for p in parts}) == len(parts)
    assert len({p.instance_id for p in parts}) == len(parts)
    assert [p.port for p in parts if p.part == "api"] == [8100, 8101]
    assert [p.command()[3:] for p in parts if p.index == 0] == [
        ["ingest"], ["alerts"], ["detect"], ["notify", "run"], ["api", "--host", "127.0.0.1", "--port", "8100"]]
    every_port = [p.port for p in parts]
    layout = default_layout()
    every_port += [n.mqtt_port for n in layout.nats] + [n.pg_port for n in layout.patroni.nodes]
    assert len(set(every_port)) == len(every_port)


def test_each_part_runs_on_nats_and_both_database_nodes(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    seen_ids = set()
    for p in cluster.layout.parts:
        env = cluster.part_env(p)
        assert env["GRIDHUB_BROKER"] == "nats"
        assert env["GRIDHUB_PARTITIONS"] == "6"
        mqtt = urlsplit(env["GRIDHUB_MQTT_URL"])
        assert mqtt.netloc.split("@")[1].split(",") == [f"127.0.0.1:{n.mqtt_port}" for n in cluster.layout.nats]
        db = urlsplit(env["GRIDHUB_DATABASE_URL"])
        assert db.path == "/gridhub"
        assert db.netloc.split("@")[1].split(",") == [f"127.0.0.1:{n.pg_port}" for n in cluster.layout.patroni.nodes]
        assert parse_qs(db.query)["target_session_attrs"] == ["read-write"]
        if p.part == "api":
            assert "GRIDHUB_HEALTH_PORT" not in env  # the api serves /healthz on its own port
        else:
            assert env["GRIDHUB_HEALTH_PORT"] == str(p.port)
        seen_ids.add(env["GRIDHUB_INSTANCE_ID"])
    assert len(seen_ids) == len(cluster.layout.parts)


def test_what_start_prints_holds_no_secret(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    text = json.dumps(cluster.describe({"w-001": "李四"}))
    for secret in ("k" * 64, "hub-pw", "su-pw"):
        assert secret not in text
    assert "demo-w-001" in text  # the demo log-in is printed on purpose


def _spawn_group(cluster: HubCluster, part: PartProcess, env: dict[str, str]) -> tuple[int, int]:
    """A stand-in part (a shell and a child) in a session of its own with a pid file as `start_part` writes it:
    (leader pid, child pid)."""
    proc = subprocess.Popen(["bash", "-c", "sleep 300 & echo $!; wait"], env=env, stdout=subprocess.PIPE,
                            start_new_session=True, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    cluster.part_dir().mkdir(exist_ok=True)
    cluster.pid_file(part).write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
    return proc.pid, child


def test_stop_ends_what_a_killed_part_left_and_only_that(tmp_path: Path) -> None:
    """A part SIGKILLed leaves its child (alerts' telemetry process) in its group: stop ends it. A group that does not
    carry the part's environment (its pid reused by another program) is left alone."""
    cluster = _cluster(tmp_path)
    part = cluster.layout.parts[2]
    leader, child = _spawn_group(cluster, part, cluster.part_env(part))
    os.kill(leader, signal.SIGKILL)
    os.waitpid(leader, 0)
    assert _start_time(child) is not None
    cluster.stop_part(part, timeout=5)
    assert _start_time(child) is None, "the killed part's child still runs"
    assert not cluster.pid_file(part).exists()

    stranger_leader, stranger = _spawn_group(cluster, part, {"PATH": os.environ["PATH"]})
    try:
        os.kill(stranger_leader, signal.SIGKILL)
        os.waitpid(stranger_leader, 0)
        cluster.stop_part(part, timeout=5)
        assert _start_time(stranger) is not None, "stop ended a process the cluster had not started"
    finally:
        os.kill(stranger, signal.SIGKILL)
