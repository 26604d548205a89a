"""The broker's doors as written in its configuration: the production deploy/mosquitto/mosquitto.conf and the one
`gridhub up`'s local mosquitto writes (gridhub/services/mosquitto.py). The hub has a listener of its own; on every
listener devices reach, the client id is the user name; packets are limited to a frame plus headroom; the
production broker speaks TLS on 8883. The broker's behaviour behind these lines is tests/test_security_broker.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridhub.mqtt import tls_cafile
from gridhub.protocol import BrokerURLError
from gridhub.services.certs import make_certs
from gridhub.services.local import default_device_port
from gridhub.services.mosquitto import MAX_PACKET_SIZE, LocalMosquitto, TlsListener, listener_lines

ROOT = Path(__file__).resolve().parents[2]
FRAME_MAX = 2 * 1024 * 1024  # CONTRACT §1


def listeners(text: str) -> dict[int, dict[str, str]]:
    """Each listener's port → its own options (the lines after `listener` up to the next one)."""
    found: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            current = found.setdefault(int(value.split()[0]), {"bind": (value.split() + [""])[1]})
        elif current is not None:
            current[key] = value
    return found


def global_options(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("listener "):
            break
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value
    return out


PRODUCTION = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()


def test_production_broker_gives_the_hub_its_own_listener_and_devices_their_user_name_as_client_id() -> None:
    found = listeners(PRODUCTION)
    assert set(found) == {1884, 1883, 8883}
    assert "use_username_as_clientid" not in found[1884]  # the hub's partition sessions keep their client ids
    for port in (1883, 8883):
        assert found[port]["use_username_as_clientid"] == "true", port


def test_production_broker_speaks_tls_on_8883_with_mounted_certificates() -> None:
    tls = listeners(PRODUCTION)[8883]
    assert tls["certfile"] == "/mosquitto/certs/server.crt"
    assert tls["keyfile"] == "/mosquitto/certs/server.key"
    assert tls["tls_version"] == "tlsv1.2"
    assert not any(key in listeners(PRODUCTION)[port] for port in (1883, 1884) for key in ("certfile", "keyfile"))


def test_production_broker_limits_packets_to_a_frame_and_headroom_for_every_listener() -> None:
    options = global_options(PRODUCTION)
    assert options["per_listener_settings"] == "false"  # accounts, ACL and the limit hold on every listener
    assert options["allow_anonymous"] == "false"
    assert FRAME_MAX < int(options["max_packet_size"]) <= 3 * 1024 * 1024
    assert int(options["max_packet_size"]) == MAX_PACKET_SIZE


def local_broker(tmp_path: Path, *, tls: TlsListener | None = None) -> LocalMosquitto:
    broker = LocalMosquitto(tmp_path / "mosquitto", 51883, device_port=default_device_port(51883), tls=tls,
                            binary=Path("/bin/true"))
    broker._run_user = None  # noqa: SLF001 - what _prepare_dir decides at start; the text is what matters here
    return broker


def test_local_broker_has_the_same_doors_on_loopback(tmp_path: Path) -> None:
    text = local_broker(tmp_path)._config_text()  # noqa: SLF001
    found = listeners(text)
    assert found == {51883: {"bind": "127.0.0.1"},
                     51884: {"bind": "127.0.0.1", "use_username_as_clientid": "true"}}
    options = global_options(text)
    assert options["per_listener_settings"] == "false" and options["allow_anonymous"] == "false"
    assert int(options["max_packet_size"]) == MAX_PACKET_SIZE


def test_local_broker_hands_the_hub_its_listener_and_devices_theirs(tmp_path: Path) -> None:
    broker = local_broker(tmp_path)
    assert broker.url().endswith("@127.0.0.1:51883")
    assert broker.device_url("sa-0001", "p@ss/word") == "mqtt://sa-0001:p%40ss%2Fword@127.0.0.1:51884"


def test_local_broker_tls_listener_uses_copies_of_the_certificate(tmp_path: Path) -> None:
    tls = TlsListener(58883, tmp_path / "given.crt", tmp_path / "given.key")
    found = listeners(local_broker(tmp_path, tls=tls)._config_text())  # noqa: SLF001
    assert found[58883]["use_username_as_clientid"] == "true"
    assert found[58883]["certfile"] == str(tmp_path / "mosquitto" / "tls" / "server.crt")
    assert found[58883]["keyfile"] == str(tmp_path / "mosquitto" / "tls" / "server.key")


def test_listener_lines_without_a_device_listener_are_the_hubs_only() -> None:
    assert [line for line in listener_lines(1884, None, None) if not line.startswith("#")] == ["listener 1884 127.0.0.1"]


# ------------------------------------------------------------------ certificates and the hub's TLS URL


def test_certs_make_a_ca_and_a_server_certificate_for_the_named_hosts(tmp_path: Path) -> None:
    from cryptography import x509

    files = make_certs(tmp_path / "certs", ["mqtt.example.org", "127.0.0.1"])
    for key in (files.ca_key, files.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert server.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.org"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_certs_again_keep_the_ca_so_devices_keep_trusting_the_broker(tmp_path: Path) -> None:
    first = make_certs(tmp_path, ["a.example.org"])
    ca_before = first.ca_cert.read_bytes()
    server_before = first.server_cert.read_bytes()
    again = make_certs(tmp_path, ["b.example.org"])
    assert again.ca_cert.read_bytes() == ca_before
    assert again.server_cert.read_bytes() != server_before


def test_the_hub_url_names_its_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    assert tls_cafile(f"mqtts://gridhub-hub:pw@broker:8883?cafile={ca}") == str(ca)
    assert tls_cafile("mqtts://gridhub-hub:pw@broker:8883") is None
    with pytest.raises(BrokerURLError, match="cafile"):
        tls_cafile(f"mqtts://gridhub-hub:pw@broker:8883?cafile={tmp_path / 'missing.crt'}")


# ------------------------------------------------------------------ the embedded broker's checks (amqtt)


def test_embedded_broker_judges_a_subscription_by_every_topic_it_matches() -> None:
    pytest.importorskip("amqtt", reason="the embedded broker is an extra: pip install -e '.[embedded]'")
    from gridhub.broker import acl_text
    from gridhub.services.amqtt_plugins import subscription_allowed

    acl = acl_text("gridhub/v1", "gridhub-hub", [("b-001", "bureau")]) + "user wide\ntopic read a/+\n"
    ok = lambda user, f: subscription_allowed(acl, user, "c", f)  # noqa: E731
    assert ok("sa-0001", "gridhub/v1/devices/sa-0001/command")
    for other in ("gridhub/v1/devices/sa-0002/command", "gridhub/v1/devices/+/command", "gridhub/v1/#", "#",
                  "gridhub/v1/devices/sa-0001/#", "$share/g/gridhub/v1/devices/+/command"):
        assert not ok("sa-0001", other), other
    assert ok("worker.b-001", "gridhub/v1/alerts") and not ok("worker.b-001", "gridhub/v1/+")
    for anything in ("#", "gridhub/v1/#", "$share/g/gridhub/v1/devices/+/telemetry"):
        assert ok("gridhub-hub", anything), anything
    assert ok("wide", "a/+") and not ok("wide", "a/#")  # `a/+` covers one level, not every depth


def test_embedded_broker_keeps_the_hubs_client_ids_for_the_hub(tmp_path: Path) -> None:
    pytest.importorskip("amqtt", reason="the embedded broker is an extra: pip install -e '.[embedded]'")
    from gridhub.accounts import mosquitto_hash
    from gridhub.services.amqtt_plugins import AccountFiles, connect_refusal

    (tmp_path / "passwd").write_text(f"gridhub-hub:{mosquitto_hash('h')}\nsa-0001:{mosquitto_hash('d')}\n")
    (tmp_path / "acl").write_text("")
    files = AccountFiles(tmp_path / "passwd", tmp_path / "acl")
    assert connect_refusal(files, "gridhub-hub", "gridhub-hub", "h", "gridhub-ingest-host") is None
    assert connect_refusal(files, "gridhub-hub", "sa-0001", "d", "sim-sa-0001") is None
    assert connect_refusal(files, "gridhub-hub", "sa-0001", "d", "gridhub-ingest-host") == 2  # identifier rejected
    assert connect_refusal(files, "gridhub-hub", "sa-0001", "wrong", "gridhub-ingest-host") == 4
    assert connect_refusal(files, "gridhub-hub", None, None, "gridhub-ingest-host") == 4
