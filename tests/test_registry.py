"""The registry file: validation with line and field, idempotent import, round trip through export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

from gridhub.db import migrate
from gridhub.registry import RegistryError, dump_yaml, export_registry, import_registry, parse

DATA = Path(__file__).parent / "data"


def test_round_trip_is_stable_and_keeps_env_placeholders(make_database):
    url = make_database()
    migrate(url)
    text = (DATA / "registry.yaml").read_text()
    with psycopg.connect(url) as conn:
        import_registry(conn, parse(text))
        first = export_registry(conn)
        import_registry(conn, parse(dump_yaml(first)))
        second = export_registry(conn)
    assert first == second
    assert yaml.safe_load(text)["devices"][-1]["camera"]["source"] == "rtsp://${CAM_0001_AUTH}@10.0.0.21/stream1"
    cam = next(d for d in first["devices"] if d["id"] == "cam-0001")
    assert cam["camera"]["source"] == "rtsp://${CAM_0001_AUTH}@10.0.0.21/stream1"
    assert any(d["id"] == "sa-0099" and d.get("retired") for d in first["devices"])
    w1 = next(w for w in first["workers"] if w["id"] == "w-001")
    assert w1 == {"id": "w-001", "name": "张三", "phone": "13800000001", "role": "grid_worker", "grids": ["g-xg-01"]}


def test_import_twice_changes_nothing(make_database):
    url = make_database()
    migrate(url)
    reg = parse((DATA / "registry.yaml").read_text())
    with psycopg.connect(url) as conn:
        import_registry(conn, reg)
        before = conn.execute("SELECT id, updated_at FROM devices ORDER BY id").fetchall()
        import_registry(conn, reg)
        after = conn.execute("SELECT id, updated_at FROM devices ORDER BY id").fetchall()
        counts = conn.execute("SELECT (SELECT count(*) FROM devices), (SELECT count(*) FROM worker_grids)").fetchone()
    assert before == after
    assert counts == (8, 4)


@pytest.mark.parametrize(
    ("patch", "field", "words"),
    [
        (("floor: 3,", 'floor: "three",'), "devices[5](sa-0001).floor", "integer"),
        (("heartbeat_s: 3600", "heartbeat_s: -5"), "devices[5](sa-0001).heartbeat_s", "greater than 0"),
        (("kind: stairwell_light", "kind: lamp"), "devices[2](sl-0001).kind", "smoke_alarm"),
        (("building: b-20, floor: -1", "building: b-99, floor: -1"), "devices[3](sp-0201).building", "b-99"),
        (("grids: [g-xg-02]}\n  - {id: w-004", "grids: [g-zz]}\n  - {id: w-004"), "workers[2](w-003).grids", "g-zz"),
        (("[0.98, 0.99]", "[1.5, 0.99]"), "devices[7](cam-0001).camera.roi", "less than or equal to 1"),
        # the hub's MQTT sessions are gridhub-<part>-<instance>; an account of that name would take them over
        (("{id: sp-0201,", "{id: gridhub-ingest-h1,"), "devices[3](gridhub-ingest-h1)", "hub's own MQTT"),
        (("{id: w-003,", "{id: GRIDHUB-alerts-x,"), "workers[2](GRIDHUB-alerts-x)", "hub's own MQTT"),
    ],
)
def test_invalid_registry_names_line_and_field(patch, field, words):
    text = (DATA / "registry.yaml").read_text()
    assert patch[0] in text
    bad = text.replace(patch[0], patch[1], 1)
    with pytest.raises(RegistryError) as info:
        parse(bad, "reg.yaml")
    msg = str(info.value)
    assert field in msg, msg
    assert words in msg, msg
    expected_line = next(i for i, ln in enumerate(bad.splitlines(), 1) if patch[1].split("\n")[0] in ln)
    assert f"reg.yaml:{expected_line}:" in msg, msg


def test_yaml_syntax_error_names_line():
    with pytest.raises(RegistryError) as info:
        parse("districts:\n  - id: a\n    name: [unclosed\n", "x.yaml")
    assert "x.yaml:" in str(info.value)


def test_cli_import_and_export(settings, tmp_path):
    env = {"GRIDHUB_DATABASE_URL": settings.database_url, "GRIDHUB_MQTT_URL": settings.mqtt_url,
           "GRIDHUB_SECRET_KEY": "k" * 40, "GRIDHUB_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "gridhub.cli", "registry", "import", str(DATA / "registry.yaml")],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "8 devices" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text((DATA / "registry.yaml").read_text().replace("floor: 3,", "floor: x,"))
    res = subprocess.run([sys.executable, "-m", "gridhub.cli", "registry", "import", str(bad)],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert "bad.yaml:31: devices[5](sa-0001).floor" in res.stderr
    out = subprocess.run([sys.executable, "-m", "gridhub.cli", "registry", "export"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0
    assert yaml.safe_load(out.stdout)["workers"][0]["name"] == "周九"
