"""Log-in and tokens through the real API on the real database."""

from __future__ import annotations

import subprocess
import sys

import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from gridhub.api.app import create_app
from gridhub.auth import token_key
from gridhub.settings import Settings


@pytest.fixture(scope="module")
def client(db_url, passwords, tmp_path_factory):
    s = Settings(database_url=db_url, mqtt_url=None, data_dir=tmp_path_factory.mktemp("auth"),
                 secret_key="auth-test-secret-" + "y" * 32)
    with TestClient(create_app(s)) as c:
        c.settings = s  # type: ignore[attr-defined]
        yield c


def _login(client, user, password):
    return client.post("/api/v1/auth/token", data={"username": user, "password": password})


def test_login_gives_a_bearer_token(client, passwords):
    r = _login(client, "w-001", passwords["w-001"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    # signed with the token key derived from the secret (gridhub.auth.token_key), never with the secret itself
    claims = jwt.decode(body["access_token"], token_key(client.settings.signing_key()), algorithms=["HS256"])
    assert claims["sub"] == "w-001"


@pytest.mark.parametrize("user,password", [("w-001", "wrong-password"), ("nobody", "whatever-pass"), ("w-001", "")])
def test_wrong_user_or_password_is_401(client, user, password):
    r = _login(client, user, password)
    assert r.status_code in (401, 422)
    if password:
        assert r.status_code == 401
        assert r.json() == {"detail": "wrong user or password"}


def test_tampered_token_is_401(client, passwords):
    token = _login(client, "w-001", passwords["w-001"]).json()["access_token"]
    head, payload, sig = token.split(".")
    forged_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    # a token signed with another key, and one with an altered signature
    other = jwt.encode({"sub": "a-001", "exp": 9999999999}, "another-key-" + "z" * 32, algorithm="HS256")
    for bad in (f"{head}.{payload}.{forged_sig}", other, "not-a-token"):
        r = client.get("/api/v1/me", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, (bad, r.text)
        assert "detail" in r.json()
    assert client.get("/api/v1/me").status_code == 401


def test_password_change_revokes_old_tokens(client, db_url, passwords):
    try:
        _change_passwords_of_w003(client, db_url)
    finally:  # the session's other tests log in as w-003 with the session's password
        from gridhub.auth import set_password

        with psycopg.connect(db_url) as conn:
            set_password(conn, "w-003", passwords["w-003"])


def _change_passwords_of_w003(client, db_url):
    env = {"GRIDHUB_DATABASE_URL": db_url, "GRIDHUB_MQTT_URL": "mqtt://x:y@127.0.0.1:1", "PATH": "/usr/bin:/bin",
           "GRIDHUB_DATA_DIR": str(client.settings.data_dir)}
    set_pw = [sys.executable, "-m", "gridhub.cli", "users", "passwd", "w-003"]
    r = subprocess.run(set_pw, input="first-password-1\n", env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    token = _login(client, "w-003", "first-password-1").json()["access_token"]
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["grids"] == ["g-xg-02"]
    r = subprocess.run(set_pw + ["--password", "second-password-2"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert _login(client, "w-003", "first-password-1").status_code == 401
    assert _login(client, "w-003", "second-password-2").status_code == 200
    short = subprocess.run(set_pw + ["--password", "short"], env=env, capture_output=True, text=True)
    assert short.returncode == 2 and "8 characters" in short.stderr
