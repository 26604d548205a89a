"""Issue 13, the doors of log-in and the stream, probed from outside on a database of this module's own: log-in
throttled per address and per (address, account) without locking the account out elsewhere, X-Forwarded-For only
from a trusted proxy, a bound on concurrent password checks, `?access_token=` on the stream alone, stream tickets,
streams that end when their log-in is revoked, expires or changes scope, a cap on streams per person, tokens kept
out of the access log, and the audit rows of every log-in."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from apitools import RunningApi, SseReader, bearer, free_port, make_incident, serve

from gridhub.api import logredact, routes_auth, routes_stream
from gridhub.auth import issue_token, set_password
from gridhub.settings import Settings

SECRET = "security-test-secret-" + "s" * 32
ATTACKER, PHONE = "203.0.113.66", "198.51.100.7"


def password(wid: str) -> str:
    return f"pw-{wid}-security"


@pytest.fixture(scope="module")
def sec_db(make_registry_database: Any) -> str:
    """A database of this module's own: its workers are deactivated and their passwords changed here."""
    url: str = make_registry_database()
    with psycopg.connect(url) as conn:
        for (wid,) in conn.execute("SELECT id FROM workers ORDER BY id").fetchall():
            set_password(conn, wid, password(wid))
    return url


def _settings(db: str, data_dir: Path, trusted_proxies: str = "") -> Settings:
    return Settings(database_url=db, mqtt_url=None, data_dir=data_dir, secret_key=SECRET,
                    trusted_proxies=trusted_proxies)


@pytest.fixture(scope="module")
def behind_proxy(sec_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    """The API behind a reverse proxy on 127.0.0.1 (GRIDHUB_TRUSTED_PROXIES=127.0.0.1): X-Forwarded-For names
    the client."""
    running = serve(_settings(sec_db, tmp_path_factory.mktemp("proxied"), "127.0.0.1"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def direct(sec_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    """The API reached directly (no trusted proxy): X-Forwarded-For is the client's own word and ignored."""
    running = serve(_settings(sec_db, tmp_path_factory.mktemp("direct")))
    yield running
    running.stop()


def log_in(api: RunningApi, user: str, pw: str, address: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.post(f"{api.url}/api/v1/auth/token", data={"username": user, "password": pw}, headers=headers,
                      timeout=30)


def token_of(api: RunningApi, user: str) -> str:
    r = log_in(api, user, password(user))
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def audit_rows(db: str, action: str, **where: str) -> list[dict[str, Any]]:
    cond = "".join(f" AND {k} = %({k})s" for k in where)
    with psycopg.connect(db) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(f"SELECT actor, action, target, address, detail FROM audit_log WHERE action = %(a)s{cond}"
                           " ORDER BY id", {"a": action, **where}).fetchall()


def retry_after(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    value = int(r.headers["Retry-After"])
    assert value > 0
    return value


# ------------------------------------------------------------------ log-in throttling

def test_thirtieth_wrong_password_is_429_yet_the_right_one_works_from_another_address(
        behind_proxy: RunningApi, sec_db: str) -> None:
    answers = [log_in(behind_proxy, "w-002", f"guess-{i:04d}", ATTACKER) for i in range(30)]
    assert [r.status_code for r in answers[:10]] == [401] * 10
    assert all(r.status_code == 429 for r in answers[10:])
    assert retry_after(answers[29]) <= 15 * 60
    assert "try again" in answers[29].json()["detail"]
    # the attacker's address may not try the right password either (it is refused before it is looked at) ...
    assert log_in(behind_proxy, "w-002", password("w-002"), ATTACKER).status_code == 429
    # ... but the grid head, from their phone, gets in: the account itself is never locked
    ok = log_in(behind_proxy, "w-002", password("w-002"), PHONE)
    assert ok.status_code == 200, ok.text
    # and the attacker's address may still log in another account (10 failures are below the address's 50)
    assert log_in(behind_proxy, "w-004", password("w-004"), ATTACKER).status_code == 200

    failed = audit_rows(sec_db, "login.failed", address=ATTACKER, actor="w-002")
    assert len(failed) == 10 and all(r["detail"]["username"] == "w-002" for r in failed)
    assert all("password" not in json.dumps(r["detail"]).replace("wrong password", "") for r in failed)
    throttled = audit_rows(sec_db, "login.throttled", address=ATTACKER, actor="w-002")
    assert len(throttled) == 21  # 20 wrong guesses and the right password, all refused unseen
    ok_rows = audit_rows(sec_db, "login.ok", address=PHONE, actor="w-002")
    assert len(ok_rows) == 1 and ok_rows[0]["detail"] == {"username": "w-002"}


def test_one_address_spraying_many_accounts_is_stopped(behind_proxy: RunningApi, sec_db: str) -> None:
    sprayer = "203.0.113.99"
    users = [f"ghost-{i}" for i in range(10)]
    codes = [log_in(behind_proxy, u, f"spray-{n}", sprayer).status_code for n in range(5) for u in users]
    assert codes == [401] * 50  # 5 per account: no (address, account) limit reached
    assert retry_after(log_in(behind_proxy, "a-001", "spray-x", sprayer)) > 0  # the address's 50 are spent
    failed = audit_rows(sec_db, "login.failed", address=sprayer)
    assert len(failed) == 50 and {r["actor"] for r in failed} == {None}  # no such user: no actor
    assert {r["detail"]["username"] for r in failed} == set(users)
    # a legitimate user elsewhere is untouched
    assert log_in(behind_proxy, "a-001", password("a-001"), PHONE).status_code == 200


def test_x_forwarded_for_from_an_untrusted_peer_cannot_dodge_the_limit(direct: RunningApi, sec_db: str) -> None:
    try:
        answers = [log_in(direct, "w-001", f"guess-{i}", f"192.0.2.{i + 1}") for i in range(12)]
        assert [r.status_code for r in answers] == [401] * 10 + [429] * 2
        rows = audit_rows(sec_db, "login.failed", actor="w-001")
        assert {r["address"] for r in rows} == {"127.0.0.1"}  # the peer, not what the header claimed
    finally:  # every other test here logs in from 127.0.0.1 too: a fresh throttle for them
        direct.server.config.app.state.login_guard = None  # type: ignore[attr-defined]


def test_a_successful_log_in_is_not_counted_and_clears_its_own_failures(behind_proxy: RunningApi) -> None:
    me = "198.51.100.20"
    for _ in range(3):
        for i in range(9):
            assert log_in(behind_proxy, "s-001", f"typo-{i}", me).status_code == 401
        assert log_in(behind_proxy, "s-001", password("s-001"), me).status_code == 200
    for _ in range(12):  # successes alone never throttle
        assert log_in(behind_proxy, "s-001", password("s-001"), me).status_code == 200


def test_password_checks_at_once_are_bounded(behind_proxy: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    assert log_in(behind_proxy, "b-001", password("b-001"), PHONE).status_code == 200  # the guard exists now
    guard = behind_proxy.server.config.app.state.login_guard  # type: ignore[attr-defined]
    monkeypatch.setattr(routes_auth, "VERIFY_WAIT_S", 0.2)
    monkeypatch.setattr(guard, "verifying", asyncio.Semaphore(0))  # every turn taken by checks in progress
    busy = log_in(behind_proxy, "b-001", password("b-001"), PHONE)
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) > 0
    monkeypatch.undo()
    assert log_in(behind_proxy, "b-001", password("b-001"), PHONE).status_code == 200


# ------------------------------------------------------------------ tokens in URLs, tickets

def test_access_token_in_the_query_is_taken_by_the_stream_only(direct: RunningApi) -> None:
    token = token_of(direct, "b-001")
    with httpx.Client(base_url=direct.url, timeout=30) as c:
        assert c.get("/api/v1/tasks", headers=bearer(token)).status_code == 200
        for path in ("/api/v1/tasks", "/api/v1/me", "/api/v1/devices", "/api/v1/alerts"):
            r = c.get(path, params={"access_token": token})
            assert r.status_code == 401, (path, r.text)
        ticket = c.post("/api/v1/stream/ticket", headers=bearer(token)).json()["ticket"]
        assert c.get("/api/v1/tasks", params={"ticket": ticket}).status_code == 401
        assert c.get("/api/v1/tasks", headers=bearer(ticket)).status_code == 401  # a ticket is no log-in
        assert c.post("/api/v1/stream/ticket", params={"access_token": token}).status_code == 401


def entity(e: Any) -> str:
    return str(json.loads(e.data)["id"])


def test_the_stream_opens_with_a_ticket_once_and_with_access_token(direct: RunningApi, sec_db: str) -> None:
    token = token_of(direct, "w-001")
    r = httpx.post(f"{direct.url}/api/v1/stream/ticket", headers=bearer(token))
    assert r.status_code == 200 and 0 < r.json()["expires_in"] <= 60
    ticket = r.json()["ticket"]
    by_ticket = SseReader(f"{direct.url}/api/v1/stream", params={"ticket": ticket})
    by_token = SseReader(f"{direct.url}/api/v1/stream", params={"access_token": token})
    try:
        assert by_ticket.status == 200 and by_token.status == 200
        _, task = make_incident(sec_db, "sa-0002", "g-xg-01", "b-12", "w-001", alert_type="tamper", severity="high")
        for reader in (by_ticket, by_token):
            reader.until(lambda e: e.event == "task" and entity(e) == task)
        again = httpx.get(f"{direct.url}/api/v1/stream", params={"ticket": ticket}, timeout=10)
        assert again.status_code == 401 and "already used" in again.json()["detail"]
        assert httpx.get(f"{direct.url}/api/v1/stream", params={"ticket": token}, timeout=10).status_code == 401
    finally:
        by_ticket.close()
        by_token.close()


# ------------------------------------------------------------------ streams end

@pytest.fixture
def quick_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_stream, "RECHECK_S", 0.3)


def ends(reader: SseReader) -> str:
    """The reason of the stream's `end` event (the response closes after it)."""
    got = reader.until(lambda e: e.event == "end")
    return str(json.loads(got[-1].data)["reason"])


def open_stream(api: RunningApi, token: str) -> SseReader:
    ticket = httpx.post(f"{api.url}/api/v1/stream/ticket", headers=bearer(token), timeout=10).json()["ticket"]
    reader = SseReader(f"{api.url}/api/v1/stream", params={"ticket": ticket})
    assert reader.status == 200
    return reader


def test_a_stream_ends_when_the_password_changes(direct: RunningApi, sec_db: str, quick_recheck: None) -> None:
    token = token_of(direct, "w-003")
    by_ticket, by_token = open_stream(direct, token), SseReader(f"{direct.url}/api/v1/stream",
                                                                params={"access_token": token})
    try:
        with psycopg.connect(sec_db) as conn:
            set_password(conn, "w-003", "changed-password-1")
        assert "password change" in ends(by_ticket)
        assert "password change" in ends(by_token)
        assert httpx.post(f"{direct.url}/api/v1/stream/ticket", headers=bearer(token)).status_code == 401
    finally:
        by_ticket.close()
        by_token.close()
        with psycopg.connect(sec_db) as conn:
            set_password(conn, "w-003", password("w-003"))


def test_a_stream_ends_when_the_worker_is_deactivated(direct: RunningApi, sec_db: str, quick_recheck: None) -> None:
    token = token_of(direct, "w-004")
    reader = open_stream(direct, token)
    try:
        with psycopg.connect(sec_db) as conn:
            conn.execute("UPDATE workers SET active = false WHERE id = 'w-004'")
        assert "deactivated" in ends(reader)
        assert httpx.get(f"{direct.url}/api/v1/me", headers=bearer(token)).status_code == 401
        assert log_in(direct, "w-004", password("w-004")).status_code == 401
    finally:
        reader.close()
        with psycopg.connect(sec_db) as conn:
            conn.execute("UPDATE workers SET active = true WHERE id = 'w-004'")


def test_a_stream_ends_when_the_scope_changes(direct: RunningApi, sec_db: str, quick_recheck: None) -> None:
    token = token_of(direct, "w-002")
    reader = open_stream(direct, token)
    try:
        with psycopg.connect(sec_db) as conn:
            conn.execute("INSERT INTO worker_grids (worker_id, grid_id) VALUES ('w-002', 'g-xg-02')")
        assert "scope changed" in ends(reader)
    finally:
        reader.close()
        with psycopg.connect(sec_db) as conn:
            conn.execute("DELETE FROM worker_grids WHERE worker_id = 'w-002' AND grid_id = 'g-xg-02'")


def test_a_stream_ends_when_its_log_in_expires(direct: RunningApi, sec_db: str) -> None:
    with psycopg.connect(sec_db) as conn:
        pwd = conn.execute("SELECT (extract(epoch FROM password_set_at) * 1000000)::bigint FROM workers"
                           " WHERE id = 's-001'").fetchone()
    assert pwd is not None
    short = issue_token("s-001", SECRET, 2, pwd[0])
    reader = SseReader(f"{direct.url}/api/v1/stream", params={"access_token": short})
    try:
        assert reader.status == 200
        assert "expired" in ends(reader)
    finally:
        reader.close()


def test_the_sixth_stream_of_one_person_is_refused(direct: RunningApi, quick_recheck: None) -> None:
    token = token_of(direct, "a-001")
    readers = [open_stream(direct, token) for _ in range(routes_stream.MAX_STREAMS_PER_PERSON)]
    try:
        sixth = httpx.get(f"{direct.url}/api/v1/stream", params={"access_token": token}, timeout=10)
        assert retry_after(sixth) > 0
        assert "streams are open" in sixth.json()["detail"]
        other = open_stream(direct, token_of(direct, "b-001"))  # another person is not affected
        other.close()
        readers.pop().close()  # one closed: its slot comes back once the server notices
        deadline = time.monotonic() + 30
        while True:
            again = SseReader(f"{direct.url}/api/v1/stream", params={"access_token": token})
            if again.status == 200:
                readers.append(again)
                break
            again.close()
            assert time.monotonic() < deadline, "the closed stream's slot never came back"
            time.sleep(0.2)
    finally:
        for r in readers:
            r.close()


# ------------------------------------------------------------------ tokens out of logs

def test_redact_blanks_tokens_and_tickets() -> None:
    line = '127.0.0.1:5 - "GET /api/v1/stream?last_event_id=7&access_token=eyJ.a.b&ticket=eyJ.c.d HTTP/1.1" 200'
    assert logredact.redact(line) == ('127.0.0.1:5 - "GET /api/v1/stream?last_event_id=7&access_token=***'
                                      '&ticket=*** HTTP/1.1" 200')
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("1.2.3.4:5", "GET", "/api/v1/stream?ticket=abc", "1.1", 200), None)
    assert logredact.RedactSecrets().filter(record) and "abc" not in record.getMessage()


def test_the_access_log_of_gridhub_api_holds_no_token(sec_db: str, broker: Any,
                                                      tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "GRIDHUB_DATABASE_URL": sec_db, "GRIDHUB_MQTT_URL": broker.test_url,
           "GRIDHUB_DATA_DIR": str(tmp_path), "GRIDHUB_SECRET_KEY": SECRET}
    env.pop("GRIDHUB_NOTIFY_FILE", None)
    out = tmp_path / "api.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "gridhub.cli", "api", "--port", str(port)], env=env,
                                stdout=sink, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.2)
            token = httpx.post(f"{base}/api/v1/auth/token", timeout=30,
                               data={"username": "b-001", "password": password("b-001")}).json()["access_token"]
            ticket = httpx.post(f"{base}/api/v1/stream/ticket", headers=bearer(token)).json()["ticket"]
            for params in ({"access_token": token}, {"ticket": ticket}):
                reader = SseReader(f"{base}/api/v1/stream", params=params)
                assert reader.status == 200
                reader.close()
            assert httpx.get(f"{base}/api/v1/tasks", params={"access_token": token}).status_code == 401
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log = out.read_text()
    stream_lines = [line for line in log.splitlines() if "/api/v1/stream?" in line]
    assert any("access_token=***" in line for line in stream_lines), log
    assert any("ticket=***" in line for line in stream_lines), log
    assert any("/api/v1/tasks?access_token=***" in line for line in log.splitlines()), log
    for secret in (token, ticket, token.split(".")[2], ticket.split(".")[2]):
        assert secret not in log
