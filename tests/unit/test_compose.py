"""docker-compose.yml is checked by parsing it (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gridhub.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_hub_command_exists_in_the_cli():
    parser = build_parser()
    services = _compose()["services"]
    hub_parts = {name for name, svc in services.items() if svc.get("command", [None])[0] == "gridhub"}
    assert hub_parts == {"ingest", "alerts", "detect", "api"}
    for name in hub_parts:
        argv = services[name]["command"][1:]
        args = parser.parse_args(argv)  # exits (SystemExit) on an unknown command or option
        assert args.command == argv[0]


def test_production_services_have_health_checks_and_volumes():
    c = _compose()
    services = c["services"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    for name in ("timescaledb", "mosquitto", "api"):
        assert "healthcheck" in services[name], name
    assert {"pg-data", "mosquitto-data"} <= set(c["volumes"])
    for name in ("ingest", "alerts", "detect", "api"):
        env = services[name]["environment"]
        assert {"GRIDHUB_DATABASE_URL", "GRIDHUB_MQTT_URL", "GRIDHUB_SECRET_KEY"} <= set(env)
        assert services[name]["depends_on"]["timescaledb"]["condition"] == "service_healthy"


def test_mosquitto_config_is_authenticated_and_does_not_drop_queued_messages():
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
    settings = dict(line.split(None, 1) for line in conf if line.strip() and not line.startswith("#"))
    assert settings["allow_anonymous"] == "false"
    assert int(settings["max_queued_messages"]) >= 100000
    assert "acl_file" in settings and "password_file" in settings


def _published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each short-syntax `ports` entry; no address: every interface."""
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        host_ip = ":".join(parts[:-2]) if len(parts) > 2 else "0.0.0.0"
        out.append((host_ip, int(parts[-2]) if len(parts) > 1 else int(parts[-1]), int(parts[-1])))
    return out


def test_nothing_plain_text_is_published_on_every_interface():
    """Plain MQTT (1883) and the API's plain HTTP (8000) only on loopback; the hub's broker listener (1884) not at
    all; devices come in over TLS on 8883."""
    services = _compose()["services"]
    for name, svc in services.items():
        for host_ip, host_port, container_port in _published(svc):
            if container_port in (1883, 8000, 1884) or host_port in (1883, 8000, 1884):
                assert host_ip in ("127.0.0.1", "::1"), f"{name} publishes {host_port} on {host_ip}"
            assert container_port != 1884, f"{name} publishes the hub's broker listener"
    assert ("0.0.0.0", 8883, 8883) in _published(services["mosquitto"])
    assert ("127.0.0.1", 8000, 8000) in _published(services["api"])


def test_the_hub_uses_its_own_broker_listener_and_the_broker_has_its_certificates():
    services = _compose()["services"]
    for name in ("ingest", "alerts", "detect", "api"):
        assert services[name]["environment"]["GRIDHUB_MQTT_URL"].endswith("@mosquitto:1884"), name
    assert any(v.endswith(":/mosquitto/certs:ro") for v in services["mosquitto"]["volumes"])
    assert "-p 1884" in " ".join(services["mosquitto"]["healthcheck"]["test"])
