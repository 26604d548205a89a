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
