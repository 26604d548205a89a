# ruff: noqa: F811
"""Issue 13, the audit trail: a row for every command sent to a device, every task action and photo, every
registry import and credentials write (who, what, when, from where), in the action's own transaction; and
GET /api/v1/audit for admin and bureau, filtered and paged like the other lists."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from apitools import (  # noqa: F401
    ALL_WORKERS,
    all_pages,
    api,
    as_,
    bearer,
    client,
    command_listener,
    make_incident,
    tiny_jpeg,
    tokens,
)
from psycopg.rows import dict_row

from gridhub.audit import cli_actor
from gridhub.settings import Settings

DATA = Path(__file__).parent / "data"


def audit_rows(db_url: str, **where: Any) -> list[dict[str, Any]]:
    cond = " AND ".join(f"{k} = %s" for k in where) or "true"
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        return conn.execute(f"SELECT * FROM audit_log WHERE {cond} ORDER BY id", list(where.values())).fetchall()


def test_a_silence_command_leaves_an_audit_row(client: httpx.Client, tokens: dict[str, str], db_url: str,
                                               command_listener: queue.Queue[tuple[str, bytes]]) -> None:
    r = client.post("/api/v1/devices/sa-0001/commands", json={"type": "silence"}, **as_(tokens, "w-002"))
    assert r.status_code == 202, r.text
    sent = r.json()
    _, payload = command_listener.get(timeout=10)
    assert json.loads(payload) == {"id": sent["id"], "type": "silence"}
    rows = [x for x in audit_rows(db_url, action="device.command", target="sa-0001")
            if x["detail"].get("command_id") == sent["id"]]
    assert len(rows) == 1
    row = rows[0]
    assert row["actor"] == "w-002" and row["address"] == "127.0.0.1"
    assert row["detail"] == {"type": "silence", "command_id": sent["id"], "delivered": True}
    assert abs(row["at"] - datetime.now(UTC)) < timedelta(minutes=1)
    # refused commands (out of role, out of scope, retired) were never sent: no row
    before = len(audit_rows(db_url, action="device.command"))
    assert client.post("/api/v1/devices/sa-0001/commands", json={"type": "silence"},
                       **as_(tokens, "w-001")).status_code == 403
    assert client.post("/api/v1/devices/sa-0201/commands", json={"type": "silence"},
                       **as_(tokens, "w-002")).status_code == 403
    assert client.post("/api/v1/devices/sa-0099/commands", json={"type": "silence"},
                       **as_(tokens, "a-001")).status_code == 409
    assert len(audit_rows(db_url, action="device.command")) == before


def test_task_actions_and_photos_leave_audit_rows_in_their_transaction(client: httpx.Client, tokens: dict[str, str],
                                                                       db_url: str) -> None:
    _, task_id = make_incident(db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    url = f"/api/v1/tasks/{task_id}"
    assert client.post(f"{url}/accept", **as_(tokens, "w-001")).status_code == 200
    assert client.post(f"{url}/comment", json={"note": "到场途中"}, **as_(tokens, "w-001")).status_code == 200
    r = client.post(f"{url}/photos", files={"photo": ("p.jpg", tiny_jpeg(), "image/jpeg")}, data={"note": "现场"},
                    **as_(tokens, "w-001"))
    assert r.status_code == 201, r.text
    evidence_id = r.json()["id"]
    assert client.post(f"{url}/reassign", json={"worker_id": "w-002", "note": "换人"},
                       **as_(tokens, "w-002")).status_code == 200
    # refused actions change nothing, so they leave no row: a state that does not allow it, a role that may not
    assert client.post(f"{url}/accept", **as_(tokens, "w-001")).status_code in (403, 409)
    assert client.post(f"{url}/close", **as_(tokens, "w-001")).status_code in (403, 409)
    rows = audit_rows(db_url, target=task_id)
    assert [(x["actor"], x["action"]) for x in rows] == [
        ("w-001", "task.accept"), ("w-001", "task.comment"), ("w-001", "task.photo"), ("w-002", "task.reassign")]
    assert {x["address"] for x in rows} == {"127.0.0.1"}
    assert rows[0]["detail"] == {}
    assert rows[1]["detail"] == {"note_chars": 4}  # the note's length, not its words
    photo = rows[2]["detail"]
    assert photo["evidence_id"] == evidence_id and photo["bytes"] == len(tiny_jpeg())
    assert (photo["width"], photo["height"]) == (64, 48) and len(photo["sha256"]) == 64
    assert photo["note_chars"] == 2 and "data" not in photo
    assert rows[3]["detail"] == {"worker_id": "w-002", "note_chars": 2}
    # the same Idempotency-Key again is the stored answer, not a second action: no second row
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    for _ in range(2):
        r = client.post(f"{url}/comment", json={"note": "x"}, headers={**bearer(tokens["w-002"]), **key})
        assert r.status_code == 200
    assert len(audit_rows(db_url, target=task_id, action="task.comment")) == 2


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gridhub.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("GRIDHUB_")}, **env})


def test_a_registry_import_and_a_credentials_write_leave_audit_rows(make_registry_database: Callable[[], str],
                                                                     settings: Settings, tmp_path: Path) -> None:
    url = make_registry_database()  # a database of its own: the import rewrites what other tests rely on
    assert settings.secret_key
    env = {"GRIDHUB_DATABASE_URL": url, "GRIDHUB_DATA_DIR": str(tmp_path / "data"),
           "GRIDHUB_SECRET_KEY": settings.secret_key}
    done = run_cli("registry", "import", str(DATA / "registry.yaml"), env=env)
    assert done.returncode == 0, done.stderr
    actor, host = cli_actor()
    rows = audit_rows(url, action="registry.import", actor=actor)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["target"] == str(DATA / "registry.yaml") and row["address"] == host
    assert row["detail"]["counts"]["devices"] > 0 and row["detail"]["counts"]["workers"] == 7
    out = tmp_path / "broker"
    done = run_cli("devices", "credentials", "--out-dir", str(out), "--no-reload",
                   env={**env, "GRIDHUB_MQTT_URL": settings.mqtt_url or ""})
    assert done.returncode == 0, done.stderr
    assert (out / "passwd").exists()
    rows = audit_rows(url, action="devices.credentials")
    assert len(rows) == 1 and rows[0]["actor"] == actor and rows[0]["target"] == str(out)
    assert rows[0]["address"] == host and rows[0]["detail"] == {"reload": False, "broker": "mosquitto"}


# -- GET /api/v1/audit ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def marked(db_url: str) -> tuple[str, list[int]]:
    """Five rows of their own, an hour apart in 2020, on one marker target."""
    marker = f"probe-{uuid.uuid4().hex[:8]}"
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    ids = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        for i, (actor, action) in enumerate([("a-001", "task.accept"), ("w-002", "device.command"),
                                             ("a-001", "task.close"), ("cli:ops", "registry.import"),
                                             ("w-002", "task.comment")]):
            row = conn.execute(
                "INSERT INTO audit_log (at, actor, action, target, address, detail) VALUES (%s, %s, %s, %s, %s, %s)"
                " RETURNING id", (t0 + timedelta(hours=i), actor, action, marker, "10.1.2.3", json.dumps({"i": i})),
            ).fetchone()
            assert row
            ids.append(row[0])
    return marker, ids


@pytest.mark.parametrize("wid", ALL_WORKERS)
def test_the_audit_list_is_for_admin_and_bureau(client: httpx.Client, tokens: dict[str, str], wid: str,
                                                marked: tuple[str, list[int]]) -> None:
    r = client.get("/api/v1/audit", **as_(tokens, wid))
    assert r.status_code == (200 if wid in ("a-001", "b-001") else 403), r.text
    assert r.json()["detail" if r.status_code == 403 else "items"]


def test_the_audit_list_needs_a_token(client: httpx.Client) -> None:
    for headers in ({}, bearer("garbage")):
        r = client.get("/api/v1/audit", headers=headers)
        assert r.status_code == 401 and r.json()["detail"]


def test_the_audit_list_is_newest_first_paged_and_filtered(client: httpx.Client, tokens: dict[str, str],
                                                           marked: tuple[str, list[int]]) -> None:
    marker, ids = marked
    h = bearer(tokens["b-001"])
    mine = all_pages(client, "/api/v1/audit", h, target=marker, limit=2)
    assert [x["id"] for x in mine] == [str(i) for i in reversed(ids)]
    first = mine[-1]
    assert first == {"id": str(ids[0]), "at": "2020-01-01T08:00:00+08:00", "actor": "a-001", "action": "task.accept",
                     "target": marker, "address": "10.1.2.3", "detail": {"i": 0}}
    everything = all_pages(client, "/api/v1/audit", h, limit=1000)
    stamps = [(datetime.fromisoformat(x["at"]), int(x["id"])) for x in everything]
    assert stamps == sorted(stamps, reverse=True)

    def ids_for(**params: str) -> list[int]:
        return [int(x["id"]) for x in all_pages(client, "/api/v1/audit", h, target=marker, **params)]

    assert ids_for(actor="w-002") == [ids[4], ids[1]]
    assert ids_for(action="device.command") == [ids[1]]
    assert ids_for(action="task.*") == [ids[4], ids[2], ids[0]]
    assert ids_for(start="2020-01-01T01:00:00Z", end="2020-01-01T03:00:00Z") == [ids[2], ids[1]]  # [start, end)
    assert ids_for(start="2020-01-01T11:00:00+08:00") == [ids[4], ids[3]]
    assert ids_for(actor="nobody") == []
    for bad in ({"start": "2020-01-01T01:00:00"}, {"cursor": "not-ours"}, {"limit": "0"},
                {"start": "2020-01-02T00:00:00Z", "end": "2020-01-01T00:00:00Z"}):
        r = client.get("/api/v1/audit", params=bad, headers=h)
        assert r.status_code == 422 and r.json()["detail"], bad
