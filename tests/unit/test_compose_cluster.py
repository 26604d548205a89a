"""docker-compose.cluster.yml, the production layout of the clustered hub, checked by parsing it with the files it
mounts (deploy/nats/nats-cluster.conf, deploy/patroni/): there is no Docker engine here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from gridhub.cli import build_parser
from gridhub.runtime import PARTS

ROOT = Path(__file__).resolve().parents[2]
NATS_NODES = ("nats1", "nats2", "nats3")
ETCD_MEMBERS = ("etcd1", "etcd2", "etcd3")
PG_NODES = ("pg1", "pg2")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN")
NOT_SECRET = {"ETCD_INITIAL_CLUSTER_TOKEN"}  # a name that keeps two etcd clusters apart, not a credential
REFERENCE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    return data


def interpolated(value: str) -> str:
    """A value as compose hands it over, each ${VAR...} replaced by a stand-in (`VAR-value`)."""
    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)[^}]*\}", lambda m: f"{m.group(1)}-value", value)


def hub_parts(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("command", [None])[0] == "gridhub"}


def test_the_whole_layout_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(NATS_NODES) | set(ETCD_MEMBERS) | set(PG_NODES) | {"api-proxy"} <= set(services)
    parser = build_parser()
    by_part: dict[str, list[str]] = {}
    for name, svc in hub_parts(compose).items():
        args = parser.parse_args(svc["command"][1:])  # exits on an unknown command or option
        part = "notify" if args.command == "notify" else args.command
        by_part.setdefault(part, []).append(name)
    assert {p: len(v) for p, v in by_part.items()} == {p: 2 for p in PARTS}, by_part
    proxy = services["api-proxy"]["command"]
    assert [proxy[i + 1] for i, w in enumerate(proxy) if w == "--to"] == ["api-1:8000", "api-2:8000"]


def test_every_part_runs_on_nats_and_both_database_nodes(compose: dict[str, Any]) -> None:
    ids = []
    partitions = set()
    for name, svc in hub_parts(compose).items():
        env = svc["environment"]
        assert env["GRIDHUB_BROKER"] == "nats", name
        partitions.add(env["GRIDHUB_PARTITIONS"])
        ids.append(env["GRIDHUB_INSTANCE_ID"])

        db = urlsplit(interpolated(env["GRIDHUB_DATABASE_URL"]))
        assert db.scheme == "postgresql"
        hosts = db.netloc.rsplit("@", 1)[1].split(",")
        assert hosts == [f"{n}:5432" for n in PG_NODES], name
        assert parse_qs(db.query)["target_session_attrs"] == ["read-write"], name

        mqtt = urlsplit(interpolated(env["GRIDHUB_MQTT_URL"]))
        assert mqtt.scheme == "mqtts", f"{name}: the hub's MQTT goes over TLS"
        assert mqtt.netloc.rsplit("@", 1)[1].split(",") == [f"{n}:8883" for n in NATS_NODES], name
        assert parse_qs(mqtt.query)["cafile"] == ["/certs/ca.crt"]
        assert any(v.endswith(":/certs/ca.crt:ro") for v in svc["volumes"]), name
        assert "healthcheck" in svc, name
    assert len(ids) == len(set(ids)) == 2 * len(PARTS), ids
    assert len(partitions) == 1, "every instance of every part uses the same GRIDHUB_PARTITIONS"


def _env_values(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        out += [(name, k, str(v)) for k, v in items]
    return out


def test_no_secret_is_written_inline(compose: dict[str, Any]) -> None:
    """Every password, key or secret is a ${VAR} reference, whole or as a URL's password."""
    checked = 0
    for service, key, value in _env_values(compose):
        if SECRET_NAME.search(key) and key not in NOT_SECRET:
            assert REFERENCE.match(value), f"{service}: {key} is written inline"
            checked += 1
        if (m := re.match(r"^\w+://[^:/@]+:(.*)@", value)) is not None:  # a URL with a password
            assert REFERENCE.match(m.group(1)), f"{service}: {key} has a password inline"
            checked += 1
    # each part: the secret key and the two URLs; each PostgreSQL node: three Patroni passwords and the hub's
    assert checked == 2 * len(PARTS) * 3 + len(PG_NODES) * 4


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """container path -> source of each short-syntax volume."""
    out = {}
    for entry in svc.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out[target] = source
    return out


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    conf = (ROOT / "deploy/nats/nats-cluster.conf").read_text()
    store_dir = re.search(r'store_dir:\s*"([^"]+)"', conf)
    assert store_dir
    sources = []
    for n in NATS_NODES:
        src = _mounts(compose["services"][n])[store_dir.group(1)]
        assert src in named, f"{n}: JetStream's store_dir is not a named volume"
        sources.append(src)
    patroni = yaml.safe_load((ROOT / "deploy/patroni/patroni.yml").read_text())
    data_dir = patroni["postgresql"]["data_dir"]
    for n in PG_NODES:
        mounts = _mounts(compose["services"][n])
        mount = next(t for t in mounts if data_dir.startswith(t.rstrip("/") + "/"))
        assert mounts[mount] in named, f"{n}: PostgreSQL's data is not in a named volume"
        sources.append(mounts[mount])
    for m in ETCD_MEMBERS:
        svc = compose["services"][m]
        src = _mounts(svc)[svc["environment"]["ETCD_DATA_DIR"]]
        assert src in named
        sources.append(src)
    assert len(sources) == len(set(sources)), "each node has a volume of its own"


def test_nats_nodes_replicate_and_take_frames(compose: dict[str, Any]) -> None:
    conf = (ROOT / "deploy/nats/nats-cluster.conf").read_text()
    body = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    assert re.search(r"stream_replicas:\s*3\b", body)
    assert int(re.search(r"max_payload:\s*(\d+)", body).group(1)) > 2 * 1024 * 1024  # type: ignore[union-attr]
    assert set(re.findall(r"nats-route://(\w+):6222", body)) == set(NATS_NODES)
    assert 'include "accounts/accounts.conf"' in body
    assert re.search(r"tls\s*\{[^}]*cert_file", body), "devices' MQTT over TLS"
    names = {compose["services"][n]["environment"]["NATS_NAME"] for n in NATS_NODES}
    assert names == set(NATS_NODES)


def test_patroni_is_synchronous_with_timescaledb_and_three_etcd_members(compose: dict[str, Any]) -> None:
    patroni = yaml.safe_load((ROOT / "deploy/patroni/patroni.yml").read_text())
    dcs = patroni["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True
    assert dcs["postgresql"]["parameters"]["shared_preload_libraries"] == "timescaledb"
    assert (ROOT / "deploy/patroni/Dockerfile").read_text().count("FROM timescale/timescaledb:") == 1
    for n in PG_NODES:
        env = compose["services"][n]["environment"]
        assert env["PATRONI_NAME"] == n
        assert env["PATRONI_ETCD3_HOSTS"].split(",") == [f"{m}:2379" for m in ETCD_MEMBERS]
    cluster = compose["services"]["etcd1"]["environment"]["ETCD_INITIAL_CLUSTER"]
    assert [e.split("=")[0] for e in cluster.split(",")] == list(ETCD_MEMBERS)


def _published(svc: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for entry in svc.get("ports", []):
        parts = str(entry).split(":")
        out.append(((":".join(parts[:-2]) if len(parts) > 2 else "0.0.0.0"), int(parts[-1])))
    return out


def test_only_devices_tls_and_the_local_api_proxy_are_published(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for host_ip, container_port in _published(svc):
            if name in NATS_NODES:
                assert container_port == 8883, f"{name} publishes {container_port}"
            elif name == "api-proxy":
                assert (host_ip, container_port) == ("127.0.0.1", 8000)
            else:
                raise AssertionError(f"{name} publishes {container_port}: only the NATS nodes and the API proxy may")
    assert all(_published(compose["services"][n]) for n in NATS_NODES)
