"""Revocation (issue 13): a dismissed worker (`active: false`, or left out of a `registry import --prune`) loses
log-in, tokens, push subscriptions, broker account and open tasks at once; a worker moved out of a grid loses
their tasks there."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from gridhub.api.app import create_app
from gridhub.auth import set_password
from gridhub.broker import build_accounts
from gridhub.registry import apply_registry, dump_yaml, export_registry, parse
from gridhub.settings import Settings

DATA = Path(__file__).parent / "data"
SECRET = "revocation-test-secret-" + "r" * 32
W001 = "  - {id: w-001, name: 张三, phone: \"13800000001\", role: grid_worker, grids: [g-xg-01]}\n"
W003 = "  - {id: w-003, name: 赵六, role: grid_worker, grids: [g-xg-02]}\n"


def _task(conn: psycopg.Connection[Any], task_id: str, grid: str, assignee: str, state: str) -> None:
    now = datetime.now(UTC)
    conn.execute("INSERT INTO tasks (id, type, severity, state, grid_id, assignee, opened_at, last_seen, incident_key)"
                 " VALUES (%s, 'fire_alarm', 'high', %s, %s, %s, %s, %s, %s)",
                 (task_id, state, grid, assignee, now, now, f"inc-{task_id}"))


@pytest.fixture
def hub(make_registry_database: Any, tmp_path: Path) -> Any:
    url = make_registry_database()
    settings = Settings(database_url=url, mqtt_url="mqtt://gridhub-hub:hub-pw@127.0.0.1:1", data_dir=tmp_path,
                        secret_key=SECRET)
    with psycopg.connect(url) as conn:
        for wid in ("w-001", "w-002", "w-003", "w-004"):
            set_password(conn, wid, f"pw-{wid}-secret")
    with TestClient(create_app(settings)) as client:
        client.settings = settings  # type: ignore[attr-defined]
        yield client


def _login(client: TestClient, wid: str) -> Any:
    return client.post("/api/v1/auth/token", data={"username": wid, "password": f"pw-{wid}-secret"})


def test_active_false_takes_everything_away_in_the_imports_transaction(hub: TestClient) -> None:
    url = hub.settings.database_url  # type: ignore[attr-defined]
    token = _login(hub, "w-001").json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert hub.get("/api/v1/me", headers=auth).status_code == 200
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO push_subscriptions (id, worker_id, endpoint, p256dh, auth)"
                     " VALUES ('ps-1', 'w-001', 'https://push.example/1', 'k', 'a')")
        _task(conn, "tk-a", "g-xg-01", "w-001", "accepted")
        _task(conn, "tk-b", "g-xg-01", "w-001", "open")
        _task(conn, "tk-c", "g-xg-01", "w-001", "resolved")  # not open: stays
        text = (DATA / "registry.yaml").read_text()
        assert W001 in text
        reg = parse(text.replace(W001, W001.replace("grids: [g-xg-01]}", "grids: [g-xg-01], active: false}")))
        result = apply_registry(conn, reg, actor="cli:test", address="here", source="registry.yaml")
        assert result.deactivated == ["w-001"] and result.tasks_reassigned == 2

        # log-in and the existing token: 401 on every route
        assert _login(hub, "w-001").status_code == 401
        for path in ("/api/v1/me", "/api/v1/tasks", "/api/v1/alerts"):
            assert hub.get(path, headers=auth).status_code == 401, path
        assert _login(hub, "w-002").status_code == 200  # the others are untouched
        assert conn.execute("SELECT count(*) FROM push_subscriptions WHERE worker_id = 'w-001'").fetchone() == (0,)
        # the open tasks go to the grid's head (no other grid worker in g-xg-01), open again, with history
        rows = dict(conn.execute("SELECT id, (state, assignee) FROM tasks WHERE id LIKE 'tk-%'").fetchall())
        assert rows == {"tk-a": ("open", "w-002"), "tk-b": ("open", "w-002"), "tk-c": ("resolved", "w-001")}
        notes = conn.execute("SELECT note FROM task_history WHERE task_id = 'tk-a' AND action = 'reassign'").fetchall()
        assert notes == [("w-001 no longer active: assigned to w-002",)]
        # a change row each, so that the board and the new assignee are told
        changed = conn.execute("SELECT entity_id, recipients FROM changes WHERE kind = 'task' ORDER BY id").fetchall()
        assert {(e, tuple(r)) for e, r in changed} == {("tk-a", ("w-002",)), ("tk-b", ("w-002",))}
        audit = conn.execute("SELECT action, actor, target, detail FROM audit_log WHERE actor = 'cli:test'"
                             " ORDER BY id").fetchall()
        assert [(a, b, c) for a, b, c, _ in audit] == [("worker.deactivated", "cli:test", "w-001"),
                                                         ("registry.import", "cli:test", "registry.yaml")]
        assert audit[1][3]["deactivated"] == ["w-001"] and audit[1][3]["counts"]["workers"] == 7
        # no broker account; the export says so and round-trips
        accounts, _, _ = build_accounts(conn, hub.settings)  # type: ignore[attr-defined]
        assert "worker.w-001" not in {a.username for a in accounts} and "worker.w-002" in {a.username for a in accounts}
        exported = export_registry(conn)
        assert next(w for w in exported["workers"] if w["id"] == "w-001")["active"] is False
        assert "active" not in next(w for w in exported["workers"] if w["id"] == "w-002")


def test_a_worker_moved_out_of_a_grid_loses_their_tasks_there(hub: TestClient) -> None:
    url = hub.settings.database_url  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as conn:
        _task(conn, "tk-m1", "g-xg-02", "w-003", "on_site")
        _task(conn, "tk-m2", "g-xg-01", "w-003", "open")  # in the grid they move to: theirs now
        text = (DATA / "registry.yaml").read_text()
        result = apply_registry(conn, parse(text.replace(W003, W003.replace("g-xg-02", "g-xg-01"))))
        assert result.deactivated == [] and result.left_grids == {"w-003": ["g-xg-02"]}
        rows = dict(conn.execute("SELECT id, (state, assignee) FROM tasks WHERE id LIKE 'tk-m%'").fetchall())
        assert rows == {"tk-m1": ("open", "w-004"), "tk-m2": ("open", "w-003")}
        note = conn.execute("SELECT note FROM task_history WHERE task_id = 'tk-m1'").fetchone()
        assert note == ("w-003 no longer works in grid g-xg-02: assigned to w-004",)
    token = _login(hub, "w-003").json()["access_token"]
    assert hub.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).json()["grids"] == ["g-xg-01"]


def test_prune_deactivates_the_unlisted_prints_them_and_the_broker_file_loses_them(
        make_registry_database: Any, tmp_path: Path) -> None:
    url = make_registry_database()
    env = {"GRIDHUB_DATABASE_URL": url, "GRIDHUB_MQTT_URL": "mqtt://gridhub-hub:hub-pw@127.0.0.1:1",
           "GRIDHUB_SECRET_KEY": SECRET, "GRIDHUB_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    partial = tmp_path / "without-w003.yaml"
    partial.write_text((DATA / "registry.yaml").read_text().replace(W003, ""))
    cmd = [sys.executable, "-m", "gridhub.cli", "registry", "import"]
    passwd = tmp_path / "data" / "broker" / "passwd"

    plain = subprocess.run([*cmd, str(partial)], env=env, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert "deactivated" not in plain.stdout  # without --prune an import is partial
    assert "worker.w-003:" in passwd.read_text()

    pruned = subprocess.run([*cmd, "--prune", str(partial)], env=env, capture_output=True, text=True)
    assert pruned.returncode == 0, pruned.stderr
    assert "deactivated worker w-003" in pruned.stdout
    users = {line.split(":", 1)[0] for line in passwd.read_text().splitlines()}
    assert "worker.w-003" not in users and {"worker.w-004", "gridhub-hub", "sa-0001"} <= users
    assert "worker.w-003" not in (tmp_path / "data" / "broker" / "acl").read_text()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT active FROM workers WHERE id = 'w-003'").fetchone() == (False,)
        assert conn.execute("SELECT count(*) FROM workers WHERE active").fetchone() == (6,)
    # listed again: back
    again = subprocess.run([*cmd, "--prune", str(DATA / "registry.yaml")], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "deactivated" not in again.stdout
    assert "worker.w-003:" in passwd.read_text()


@pytest.fixture
def own_broker(tmp_path: Path) -> Any:
    """A mosquitto of this test's own: the test rewrites its accounts, which must not touch the session's broker."""
    import secrets

    from gridhub.accounts import mosquitto_hash
    from gridhub.broker import acl_text
    from gridhub.services.mosquitto import start_private_mosquitto

    hub_pw = secrets.token_urlsafe(16)
    mq = start_private_mosquitto(tmp_path / "mosquitto", passwd_text=f"gridhub-hub:{mosquitto_hash(hub_pw)}\n",
                                 acl_text=acl_text("gridhub/v1", "gridhub-hub", []))
    mq.test_url = f"mqtt://gridhub-hub:{hub_pw}@127.0.0.1:{mq.port}"  # type: ignore[attr-defined]
    yield mq
    mq.stop()


def test_a_dismissed_workers_live_mqtt_connection_receives_nothing_more(make_registry_database: Any, own_broker: Any,
                                                                         tmp_path: Path) -> None:
    """The worker app's broker account is gone with the credentials write the deactivation triggers: a connection
    it already had receives no more task messages, and it cannot connect again."""
    import threading

    broker = own_broker

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from gridhub.broker import acl_text, passwd_text, worker_account
    from gridhub.mqtt import BrokerAddress

    url = make_registry_database()
    settings = Settings(database_url=url, mqtt_url=broker.test_url, data_dir=tmp_path, secret_key=SECRET)

    def apply() -> None:
        with psycopg.connect(url) as conn:
            accounts, workers, hub_acct = build_accounts(conn, settings)
        broker.apply_accounts(passwd_text(accounts), acl_text(settings.topic_prefix, hub_acct.username, workers))

    apply()
    addr = BrokerAddress.parse(broker.test_url)
    topic = f"{settings.topic_prefix}/workers/w-001/tasks"

    def client(name: str, user: str, password: str) -> tuple[paho.Client, list[bytes], threading.Event]:
        got: list[bytes] = []
        ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        c.username_pw_set(user, password)
        c.on_connect = lambda cl, u, f, rc, p=None: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda cl, u, mid, rcs, p=None: ready.set()
        c.on_message = lambda cl, u, m: got.append(m.payload)
        c.connect(addr.host, addr.port)
        c.loop_start()
        assert ready.wait(10)
        return c, got, ready

    app = worker_account(SECRET, "w-001")
    phone, phone_got, _ = client("w001-phone", app.username, app.password)
    watcher, watcher_got, _ = client("test-watcher", addr.username or "", addr.password or "")
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=paho.MQTTv311)
    pub.username_pw_set(addr.username, addr.password)
    pub.connect(addr.host, addr.port)
    pub.loop_start()
    try:
        pub.publish(topic, b"before", qos=1).wait_for_publish(10)
        for got in (phone_got, watcher_got):
            deadline = datetime.now(UTC).timestamp() + 10
            while b"before" not in got and datetime.now(UTC).timestamp() < deadline:
                threading.Event().wait(0.05)
        assert phone_got == [b"before"]  # the account worked
        with psycopg.connect(url) as conn:
            reg = export_registry(conn)
            for w in reg["workers"]:
                if w["id"] == "w-001":
                    w["active"] = False
            apply_registry(conn, parse(dump_yaml(reg)))
        apply()  # the credentials write the import triggers for a local broker
        threading.Event().wait(1.0)  # mosquitto re-reads its files on SIGHUP
        pub.publish(topic, b"after", qos=1).wait_for_publish(10)
        deadline = datetime.now(UTC).timestamp() + 10
        while b"after" not in watcher_got and datetime.now(UTC).timestamp() < deadline:
            threading.Event().wait(0.05)
        assert b"after" in watcher_got  # the message went out; another second for the phone to have had it
        threading.Event().wait(1.0)
        assert b"after" not in phone_got
        again = paho.Client(CallbackAPIVersion.VERSION2, client_id="w001-again", protocol=paho.MQTTv311)
        again.username_pw_set(app.username, app.password)
        refused = threading.Event()
        again.on_connect = lambda cl, u, f, rc, p=None: refused.set() if rc.is_failure else None
        again.connect(addr.host, addr.port)
        again.loop_start()
        assert refused.wait(10)
        again.loop_stop()
    finally:
        for c in (phone, watcher, pub):
            c.loop_stop()
            c.disconnect()
