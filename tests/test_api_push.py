# ruff: noqa: F811
"""Web Push subscriptions and my notifications (CONTRACT §6), and the offline queue's idempotent writes with the
person's own time (api/idempotency.py), through the real app."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from apitools import RunningApi, api, as_, bearer, client, make_incident, serve, tiny_jpeg, tokens  # noqa: F401

from gridhub.alerts.notify import vapid
from gridhub.settings import Settings


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


P256DH = b64(b"\x04" + bytes(range(64)))
AUTH = b64(bytes(range(16)))


def subscription(endpoint: str | None = None, **keys: str) -> dict[str, Any]:
    return {"endpoint": endpoint or f"https://push.example.net/wpush/{uuid.uuid4().hex}", "expirationTime": None,
            "keys": {"p256dh": P256DH, "auth": AUTH, **keys}}


class PushHub:
    """An API of its own with a notify file whose webpush channel the tests can rewrite."""

    def __init__(self, running: RunningApi, notify_file: Path, key_file: Path) -> None:
        self.api = running
        self.notify_file = notify_file
        self.key_file = key_file

    def configure(self, *, webpush: bool = True, allow_private: bool = False) -> None:
        lines = ["channels:", "  city: {type: webhook, url: 'https://city.example.org/hook', secret: s3cret}"]
        if webpush:
            lines.append(f"  push: {{type: webpush, vapid_private_key_file: '{self.key_file}',"
                         f" subject: 'mailto:ops@example.org', allow_private_endpoints: {str(allow_private).lower()}}}")
        lines += ["routes:", "  critical: {assignee: [city]}"]
        self.notify_file.write_text("\n".join(lines) + "\n# " + uuid.uuid4().hex + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def push_hub(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PushHub]:
    work = tmp_path_factory.mktemp("push")
    key_file = work / "vapid.pem"
    vapid.generate_keys(key_file)
    hub = PushHub(RunningApi("", None, None), work / "notify.yaml", key_file)  # type: ignore[arg-type]
    hub.configure()
    hub.api = serve(settings.model_copy(update={"notify_file": hub.notify_file}))
    yield hub
    hub.api.stop()


@pytest.fixture
def push(push_hub: PushHub) -> Iterator[httpx.Client]:
    push_hub.configure()
    with httpx.Client(base_url=push_hub.api.url, timeout=30) as c:
        yield c


def test_every_push_route_needs_a_log_in(push: httpx.Client) -> None:
    for method, path in (("GET", "/api/v1/push/vapid-public-key"), ("POST", "/api/v1/me/push-subscriptions"),
                         ("DELETE", "/api/v1/me/push-subscriptions/ps-x"), ("GET", "/api/v1/me/notifications")):
        for headers in ({}, bearer("garbage")):
            r = push.request(method, path, headers=headers, json=subscription() if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["detail"]


def test_the_vapid_public_key_is_the_webpush_channels(push: httpx.Client, push_hub: PushHub,
                                                      client: httpx.Client, tokens: dict[str, str]) -> None:
    r = push.get("/api/v1/push/vapid-public-key", **as_(tokens, "w-001"))
    assert r.status_code == 200, r.text
    assert r.json() == {"public_key": vapid.public_key(push_hub.key_file), "channel": "push"}
    assert len(base64.urlsafe_b64decode(r.json()["public_key"] + "=")) == 65
    # the session's API has no notify file; a notify file without a webpush channel: 404 saying why
    r = client.get("/api/v1/push/vapid-public-key", **as_(tokens, "w-001"))
    assert r.status_code == 404 and "GRIDHUB_NOTIFY_FILE" in r.json()["detail"]
    push_hub.configure(webpush=False)
    r = push.get("/api/v1/push/vapid-public-key", **as_(tokens, "w-001"))
    assert r.status_code == 404 and "no webpush channel" in r.json()["detail"]


@pytest.mark.parametrize("endpoint,keys,why", [
    ("http://push.example.net/x", {}, "https"),
    ("https://127.0.0.1/x", {}, "127.0.0.1"),
    ("https://[::1]:8443/x", {}, "::1"),
    ("https://[::ffff:10.1.2.3]/x", {}, "10.1.2.3"),
    ("https://10.0.0.8/x", {}, "10.0.0.8"),
    ("https://192.168.1.20/x", {}, "192.168.1.20"),
    ("https://169.254.169.254/latest", {}, "169.254.169.254"),
    ("https://localhost:9000/x", {}, "localhost"),
    ("https://push.internal/x", {}, "push.internal"),
    ("ftp://push.example.net/x", {}, "https"),
    ("https://user:pw@push.example.net/x", {}, "user"),
    ("https://push.example.net/" + "a" * 2048, {}, "endpoint"),
    (None, {"p256dh": b64(b"\x04" + bytes(63))}, "65 bytes"),
    (None, {"p256dh": b64(b"\x02" + bytes(64))}, "uncompressed"),
    (None, {"auth": b64(bytes(12))}, "16 bytes"),
    (None, {"auth": "not base64!"}, "base64url"),
])
def test_a_bad_subscription_is_refused(push: httpx.Client, tokens: dict[str, str], endpoint: str | None,
                                       keys: dict[str, str], why: str) -> None:
    r = push.post("/api/v1/me/push-subscriptions", json=subscription(endpoint, **keys), **as_(tokens, "w-001"))
    assert r.status_code == 422, r.text
    assert why in r.json()["detail"]


def test_a_missing_key_or_endpoint_is_a_422(push: httpx.Client, tokens: dict[str, str]) -> None:
    for body in ({"endpoint": "https://push.example.net/x"}, {"keys": {"p256dh": P256DH, "auth": AUTH}}, [], "x"):
        r = push.post("/api/v1/me/push-subscriptions", json=body, **as_(tokens, "w-001"))
        assert r.status_code == 422, (body, r.text)


def test_private_endpoints_when_the_operator_allows_them(push: httpx.Client, push_hub: PushHub,
                                                         tokens: dict[str, str]) -> None:
    push_hub.configure(allow_private=True)
    for endpoint in ("http://127.0.0.1:9/push/a", "https://10.0.0.8/push/b", "http://localhost:9/push/c"):
        r = push.post("/api/v1/me/push-subscriptions", json=subscription(endpoint), **as_(tokens, "w-003"))
        assert r.status_code == 201, r.text
    # plain http stays refused for a public host
    r = push.post("/api/v1/me/push-subscriptions", json=subscription("http://push.example.net/x"),
                  **as_(tokens, "w-003"))
    assert r.status_code == 422


def test_the_same_endpoint_twice_is_the_same_subscription(push: httpx.Client, tokens: dict[str, str],
                                                           db: psycopg.Connection[Any]) -> None:
    body = subscription()
    first = push.post("/api/v1/me/push-subscriptions", json=body, **as_(tokens, "w-001"))
    assert first.status_code == 201, first.text
    sid = first.json()["id"]
    new_auth = b64(bytes(range(100, 116)))
    again = push.post("/api/v1/me/push-subscriptions", json={**body, "keys": {"p256dh": P256DH, "auth": new_auth}},
                      headers={**bearer(tokens["w-001"]), "User-Agent": "Phone/1"})
    assert again.status_code == 200 and again.json() == {"id": sid}
    row = db.execute("SELECT worker_id, endpoint, p256dh, auth, user_agent FROM push_subscriptions WHERE id = %s",
                     (sid,)).fetchone()
    assert row == ("w-001", body["endpoint"], P256DH, new_auth, "Phone/1")
    # another person's browser with the same endpoint (a shared phone) is another subscription
    other = push.post("/api/v1/me/push-subscriptions", json=body, **as_(tokens, "w-002"))
    assert other.status_code == 201 and other.json()["id"] != sid


def test_at_most_ten_subscriptions_per_person_the_oldest_go(push: httpx.Client, tokens: dict[str, str],
                                                             db: psycopg.Connection[Any]) -> None:
    ids = []
    for _ in range(12):
        r = push.post("/api/v1/me/push-subscriptions", json=subscription(), **as_(tokens, "s-001"))
        assert r.status_code == 201
        ids.append(r.json()["id"])
    kept = {r[0] for r in db.execute("SELECT id FROM push_subscriptions WHERE worker_id = 's-001'").fetchall()}
    assert kept == set(ids[2:])


def test_only_my_own_subscription_can_be_deleted(push: httpx.Client, tokens: dict[str, str]) -> None:
    sid = push.post("/api/v1/me/push-subscriptions", json=subscription(), **as_(tokens, "w-001")).json()["id"]
    r = push.delete(f"/api/v1/me/push-subscriptions/{sid}", **as_(tokens, "w-003"))
    assert r.status_code == 404 and sid in r.json()["detail"]
    r = push.delete(f"/api/v1/me/push-subscriptions/{sid}", **as_(tokens, "a-001"))  # not even the admin's
    assert r.status_code == 404
    assert push.delete(f"/api/v1/me/push-subscriptions/{sid}", **as_(tokens, "w-001")).status_code == 204
    assert push.delete(f"/api/v1/me/push-subscriptions/{sid}", **as_(tokens, "w-001")).status_code == 404


def _delivery(db: psycopg.Connection[Any], recipient: str | None, task_id: str, at: datetime, **extra: Any) -> str:
    did = f"nd-{uuid.uuid4().hex[:12]}"
    row = {"channel": "push", "channel_type": "webpush", "state": "sent", "answer": "HTTP 201", **extra}
    db.execute("INSERT INTO notify_deliveries (id, task_id, event, recipient, route, channel, channel_type, severity,"
               " state, attempts, created_at, due_at, expires_at, sent_at, answer, payload)"
               " VALUES (%s, %s, 'task.opened', %s, 'assignee', %s, %s, 'critical', %s, 1, %s, %s, %s, %s, %s, '{}')",
               (did, task_id, recipient, row["channel"], row["channel_type"], row["state"], at, at,
                at + timedelta(hours=6), at if row["state"] == "sent" else None, row["answer"]))
    return did


def test_my_notifications_are_mine_only_newest_first(push: httpx.Client, tokens: dict[str, str],
                                                     db: psycopg.Connection[Any]) -> None:
    now = datetime.now(UTC)
    task = f"tk-n{uuid.uuid4().hex[:8]}"
    older = _delivery(db, "w-003", task, now - timedelta(minutes=5))
    newer = _delivery(db, "w-003", task, now - timedelta(minutes=1), channel="sms", channel_type="sms",
                      state="failed", answer="HTTP 500")
    _delivery(db, "w-004", task, now)
    _delivery(db, None, task, now, channel="wecom", channel_type="wecom_robot")  # a group robot's message
    r = push.get("/api/v1/me/notifications", **as_(tokens, "w-003"))
    assert r.status_code == 200, r.text
    items = [i for i in r.json()["items"] if i["task_id"] == task]
    assert [i["id"] for i in items] == [newer, older]
    assert items[0] | {"created_at": None} == {
        "id": newer, "task_id": task, "event": "task.opened", "channel": "sms", "channel_type": "sms",
        "severity": "critical", "drill": False, "state": "failed", "attempts": 1, "created_at": None,
        "sent_at": None, "answer": "HTTP 500"}
    assert items[1]["sent_at"] is not None and items[1]["created_at"].endswith("+08:00")
    page = push.get("/api/v1/me/notifications", params={"limit": 1}, **as_(tokens, "w-003")).json()
    assert len(page["items"]) == 1 and page["next"]
    rest = push.get("/api/v1/me/notifications", params={"limit": 1, "cursor": page["next"]},
                    **as_(tokens, "w-003")).json()
    assert rest["items"][0]["id"] != page["items"][0]["id"]
    assert all(i["task_id"] != task for i in push.get("/api/v1/me/notifications", **as_(tokens, "w-001")).json()["items"])


# ------------------------------------------------------------------ the offline queue's writes


def _history(client: httpx.Client, tokens: dict[str, str], task_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/api/v1/tasks/{task_id}", **as_(tokens, "a-001"))
    assert r.status_code == 200
    steps: list[dict[str, Any]] = r.json()["history"]
    return steps


def test_an_idempotency_key_answers_the_first_answer_without_acting_twice(client: httpx.Client, db_url: str,
                                                                          tokens: dict[str, str]) -> None:
    _, task_id = make_incident(db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    key = f"q-{uuid.uuid4().hex}"
    headers = {**bearer(tokens["w-001"]), "Idempotency-Key": key}
    first = client.post(f"/api/v1/tasks/{task_id}/accept", headers=headers)
    assert first.status_code == 200 and first.json()["state"] == "accepted"
    assert "idempotency-replayed" not in first.headers
    again = client.post(f"/api/v1/tasks/{task_id}/accept", headers=headers)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotency-replayed"] == "true"
    # a comment sent twice with its key is one comment; the key is the person's own
    ckey = {**bearer(tokens["w-001"]), "Idempotency-Key": key + ":c"}
    for _ in range(3):
        r = client.post(f"/api/v1/tasks/{task_id}/comment", json={"note": "楼下已查看"}, headers=ckey)
        assert r.status_code == 200, r.text
    steps = _history(client, tokens, task_id)
    assert [s["action"] for s in steps].count("accept") == 1
    assert [s["note"] for s in steps].count("楼下已查看") == 1
    other = client.post(f"/api/v1/tasks/{task_id}/comment", json={"note": "组长看过"},
                        headers={**bearer(tokens["w-002"]), "Idempotency-Key": key + ":c"})
    assert other.status_code == 200 and "idempotency-replayed" not in other.headers
    # the same key for another request cannot be the same request
    r = client.post(f"/api/v1/tasks/{task_id}/comment", json={"note": "别的内容"}, headers=ckey)
    assert r.status_code == 422 and "another request" in r.json()["detail"]


def test_a_refusal_is_the_keys_answer_too(client: httpx.Client, db_url: str, tokens: dict[str, str]) -> None:
    _, task_id = make_incident(db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    assert client.post(f"/api/v1/tasks/{task_id}/accept", **as_(tokens, "w-001")).status_code == 200
    headers = {**bearer(tokens["w-001"]), "Idempotency-Key": f"q-{uuid.uuid4().hex}"}
    refused = client.post(f"/api/v1/tasks/{task_id}/accept", headers=headers)
    assert refused.status_code == 409
    again = client.post(f"/api/v1/tasks/{task_id}/accept", headers=headers)
    assert again.status_code == 409 and again.json() == refused.json()
    assert again.headers["idempotency-replayed"] == "true"


@pytest.mark.parametrize("key", ["", "a" * 129, "has space", "ключ".encode(), "a/b"])
def test_a_bad_idempotency_key_is_a_422(client: httpx.Client, tokens: dict[str, str], key: str | bytes) -> None:
    r = client.post("/api/v1/tasks/tk-none/comment", json={"note": "x"},
                    headers={**bearer(tokens["w-001"]), "Idempotency-Key": key})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]


def test_the_persons_own_time_is_kept_in_history(client: httpx.Client, db_url: str,
                                                 tokens: dict[str, str]) -> None:
    _, task_id = make_incident(db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    acted = (datetime.now(UTC) - timedelta(minutes=7)).replace(microsecond=0)
    r = client.post(f"/api/v1/tasks/{task_id}/accept", headers={
        **bearer(tokens["w-001"]), "X-Gridhub-Client-Time": acted.astimezone().isoformat()})
    assert r.status_code == 200, r.text
    step = [s for s in r.json()["history"] if s["action"] == "accept"][0]
    assert datetime.fromisoformat(step["at"]) == acted
    received = datetime.fromisoformat(step["received_at"])
    assert abs(received - datetime.now(UTC)) < timedelta(seconds=30)
    # the deadlines are the hub's: accepted_at is when the hub got it
    assert abs(datetime.fromisoformat(r.json()["accepted_at"]) - received) < timedelta(seconds=1)
    # a photo taken offline, with its key: once, at its time
    photo_at = acted + timedelta(minutes=2)
    headers = {**bearer(tokens["w-001"]), "X-Gridhub-Client-Time": photo_at.isoformat().replace("+00:00", "Z"),
               "Idempotency-Key": f"p-{uuid.uuid4().hex}"}
    answers = [client.post(f"/api/v1/tasks/{task_id}/photos", headers=headers, data={"note": "现场"},
                           files={"photo": ("scene.jpg", tiny_jpeg(), "image/jpeg")}) for _ in range(2)]
    assert [a.status_code for a in answers] == [201, 201] and answers[0].json() == answers[1].json()
    photos = [s for s in _history(client, tokens, task_id) if s["action"] == "photo"]
    assert len(photos) == 1 and datetime.fromisoformat(photos[0]["at"]) == photo_at and photos[0]["received_at"]
    evidence = client.get("/api/v1/evidence", params={"task": task_id}, **as_(tokens, "w-001")).json()["items"]
    assert len(evidence) == 1


def test_client_times_in_the_future_are_the_hubs_and_too_old_ones_refused(client: httpx.Client, db_url: str,
                                                                          tokens: dict[str, str]) -> None:
    _, task_id = make_incident(db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    url = f"/api/v1/tasks/{task_id}/comment"
    ahead = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    r = client.post(url, json={"note": "手机时间快了"}, headers={**bearer(tokens["w-001"]),
                                                            "X-Gridhub-Client-Time": ahead})
    assert r.status_code == 200
    step = r.json()["history"][-1]
    assert step["note"] == "手机时间快了" and "received_at" not in step
    assert abs(datetime.fromisoformat(step["at"]) - datetime.now(UTC)) < timedelta(seconds=30)
    for bad, why in (((datetime.now(UTC) - timedelta(days=8)).isoformat(), "7 days"),
                     ("2026-12-07T10:00:00", "offset"), ("yesterday", "RFC 3339")):
        r = client.post(url, json={"note": "x"}, headers={**bearer(tokens["w-001"]), "X-Gridhub-Client-Time": bad})
        assert r.status_code == 422 and why in r.json()["detail"], (bad, r.text)


def test_a_grids_people_for_reassigning_in_scope(client: httpx.Client, tokens: dict[str, str]) -> None:
    r = client.get("/api/v1/grids/g-xg-01/workers", **as_(tokens, "w-002"))
    assert r.status_code == 200, r.text
    assert [(p["id"], p["role"]) for p in r.json()["items"]] == [
        ("w-001", "grid_worker"), ("w-002", "grid_head"), ("s-001", "street_officer")]
    assert client.get("/api/v1/grids/g-xg-02/workers", **as_(tokens, "w-002")).status_code == 403
    assert client.get("/api/v1/grids/g-none/workers", **as_(tokens, "w-002")).status_code == 404
    assert client.get("/api/v1/grids/g-xg-01/workers").status_code == 401
