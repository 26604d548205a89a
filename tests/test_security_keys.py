"""Separate keys (issue 13): tokens and new broker passwords from keys derived by HKDF, never the secret itself;
an upgrade keeps every deployed device's password until `gridhub devices rotate`; a short secret refused on a new
install and warned about on an existing one; no token for an account without a password."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from gridhub.accounts import derived_password, mosquitto_verify, parse_passwd
from gridhub.api.app import create_app
from gridhub.auth import AuthError, issue_token, token_key
from gridhub.broker import build_accounts
from gridhub.db import migrate, migration_files
from gridhub.registry import import_registry, load_file
from gridhub.settings import (
    DEVICE_KEY_INFO,
    SecretKeyTooShort,
    Settings,
    check_secret_key,
    derive_key,
)

DATA = Path(__file__).parent / "data"
SECRET = "keys-test-secret-" + "k" * 32
MINE = "20261207140000_revocation"


def _old_derivation(secret: str, device_id: str) -> str:
    """The device password every hub derived before this change (HMAC of the secret itself), written out here so
    that the test does not depend on the code it checks."""
    mac = hmac.new(secret.encode(), f"mqtt:device:{device_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")[:32]


def _env(url: str, data_dir: Path, secret: str = SECRET) -> dict[str, str]:
    return {"GRIDHUB_DATABASE_URL": url, "GRIDHUB_MQTT_URL": "mqtt://gridhub-hub:hub-pw@127.0.0.1:1",
            "GRIDHUB_SECRET_KEY": secret, "GRIDHUB_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}


def test_the_keys_are_derived_and_distinct() -> None:
    tk, dk = token_key(SECRET), derive_key(SECRET, DEVICE_KEY_INFO)
    assert len(tk) == len(dk) == 32 and tk != dk and SECRET.encode() not in (tk, dk)
    assert derived_password(SECRET, "device", "sa-0001") != _old_derivation(SECRET, "sa-0001")


def test_an_upgrade_keeps_every_device_password_until_rotate(make_database: Any, tmp_path: Path) -> None:
    url = make_database()
    # the schema without this change (every other migration, later ones included), then the registry and its
    # broker accounts
    others = {v for v, _ in migration_files()} - {MINE}
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(url)  # creates schema_migrations and applies all: undo the new one to stand where we were
        conn.execute("ALTER TABLE devices DROP COLUMN password_scheme")
        conn.execute("ALTER TABLE workers DROP COLUMN broker_password_scheme")
        conn.execute("DELETE FROM schema_migrations WHERE version = %s", (MINE,))
        assert {r[0] for r in conn.execute("SELECT version FROM schema_migrations")} == others
    with psycopg.connect(url) as conn:
        import_registry(conn, load_file(DATA / "registry.yaml"))
        devices = [r[0] for r in conn.execute("SELECT id FROM devices WHERE NOT retired ORDER BY id")]
    assert len(devices) == 7
    deployed = {d: _old_derivation(SECRET, d) for d in devices}

    assert migrate(url) == [MINE]  # the upgrade
    settings = Settings(database_url=url, mqtt_url="mqtt://gridhub-hub:hub-pw@127.0.0.1:1", data_dir=tmp_path,
                        secret_key=SECRET)
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO devices (id, kind, building_id) VALUES ('sa-new', 'smoke_alarm', 'b-12')")
        conn.commit()
        accounts, _, _ = build_accounts(conn, settings)
    by_user = {a.username: a.password for a in accounts}
    assert {d: by_user[d] for d in devices} == deployed  # every deployed device keeps its password
    assert by_user["sa-new"] == derived_password(SECRET, "device", "sa-new") != _old_derivation(SECRET, "sa-new")

    out = tmp_path / "broker"
    r = subprocess.run([sys.executable, "-m", "gridhub.cli", "devices", "rotate", "--out-dir", str(out), "--no-reload"],
                       env=_env(url, tmp_path), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for d in devices:
        assert f"re-provision device {d}:" in r.stdout
    assert "re-provision device sa-new" not in r.stdout
    with (out / "device-credentials.csv").open() as f:
        table = {row["id"]: row["password"] for row in csv.DictReader(f) if row["kind"] == "device"}
    passwd = parse_passwd((out / "passwd").read_text())
    for d in devices:
        assert table[d] == derived_password(SECRET, "device", d) != deployed[d]
        assert mosquitto_verify(table[d], passwd[d]) and not mosquitto_verify(deployed[d], passwd[d])
    again = subprocess.run([sys.executable, "-m", "gridhub.cli", "devices", "rotate", "--out-dir", str(out),
                            "--no-reload"], env=_env(url, tmp_path), capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to re-provision" in again.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'devices.rotate'").fetchone() == (2,)


def test_a_short_secret_is_refused_on_a_new_install_and_warned_on_an_existing_one(
        make_database: Any, make_registry_database: Any, tmp_path: Path) -> None:
    short = "too-short-secret"
    fresh = make_database()
    migrate(fresh)
    cmd = [sys.executable, "-m", "gridhub.cli", "registry", "import", str(DATA / "registry.yaml")]
    r = subprocess.run(cmd, env=_env(fresh, tmp_path / "new", short), capture_output=True, text=True)
    assert r.returncode == 2 and "16 bytes: a new install needs at least 32" in r.stderr, r.stderr
    with psycopg.connect(fresh) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)  # refused before anything
    existing = make_registry_database()
    r = subprocess.run(cmd, env=_env(existing, tmp_path / "old", short), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "shorter than 32" in r.stderr and "gridhub devices rotate" in r.stderr
    # the same rule from the data directory alone
    s = Settings(data_dir=tmp_path / "empty", secret_key=short)
    with pytest.raises(SecretKeyTooShort):
        check_secret_key(s)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broker").mkdir()
    assert check_secret_key(s) is not None
    assert check_secret_key(Settings(data_dir=tmp_path / "none", secret_key="x" * 32)) is None


def test_no_token_for_an_account_without_a_password_and_old_tokens_are_refused(
        make_registry_database: Any, tmp_path: Path) -> None:
    url = make_registry_database()  # nobody has a password here
    settings = Settings(database_url=url, data_dir=tmp_path, secret_key=SECRET)
    with pytest.raises(AuthError, match="no password"):
        issue_token("w-001", SECRET, 3600, None)
    now = int(time.time())
    # whoever holds the key can sign anything: a token for an account without a password is still refused
    forged = jwt.encode({"sub": "a-001", "iat": now, "exp": now + 600, "pwd": 0}, token_key(SECRET), algorithm="HS256")
    no_pwd = jwt.encode({"sub": "a-001", "iat": now, "exp": now + 600}, token_key(SECRET), algorithm="HS256")
    # a token of before the upgrade: signed with the secret itself
    old = jwt.encode({"sub": "a-001", "iat": now, "exp": now + 600, "pwd": 1}, SECRET, algorithm="HS256")
    with TestClient(create_app(settings)) as client:
        for token in (forged, no_pwd, old):
            r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, r.text
