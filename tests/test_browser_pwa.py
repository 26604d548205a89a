"""The worker app in headless Chromium (Debian's /usr/bin/chromium through Playwright, as test_browser.py), on the
hub's API over a database of its own: the service worker installs with a valid manifest, a push delivered to it
through the DevTools protocol (`ServiceWorker.deliverPushMessage`: headless Chromium has no push service) shows the
notification and a tap opens the task while logged in, also after the page was closed; actions, a note and a photo
taken offline are replayed in order with the person's own times; the supervisor view lists an escalated task and
acts on it; a new critical task rings while the page is open; times show in the district's zone."""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from apitools import RunningApi, make_incident, serve, tiny_jpeg
from browser_support import chromium, phone_context, registered_database, submit_login, watch, watched_page

from gridhub.alerts import changes
from gridhub.alerts.notify import vapid
from gridhub.settings import Settings

WAIT_MS = 30_000


class Hub:
    def __init__(self, url: str, api: RunningApi, passwords: dict[str, str]) -> None:
        self.db_url = url
        self.api = api
        self.passwords = passwords

    def token(self, who: str) -> str:
        r = httpx.post(f"{self.api.url}/api/v1/auth/token", data={"username": who, "password": self.passwords[who]})
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def task(self, task_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.api.url}/api/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {self.token('a-001')}"})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def escalate(self, task_id: str, level: int, assignee: str | None = None) -> None:
        """Raise a task's escalation level as the alert engine does, with its change in the log (the stream)."""
        with psycopg.connect(self.db_url) as conn:
            conn.execute("UPDATE tasks SET escalation_level = %s, assignee = COALESCE(%s, assignee) WHERE id = %s",
                         (level, assignee, task_id))
            conn.execute("INSERT INTO task_history (task_id, at, actor, action, note) VALUES (%s, now(), 'system',"
                         " 'escalate', %s)", (task_id, f"level {level}"))
            uow = changes.UnitOfWork(conn)
            uow.stage_task(task_id)
            uow.flush()
            conn.commit()


@pytest.fixture(scope="module")
def hub(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    url, passwords = registered_database(make_database, "pwa")
    work = tmp_path_factory.mktemp("pwa-hub")
    vapid.generate_keys(work / "vapid.pem")
    notify = work / "notify.yaml"
    notify.write_text(f"channels:\n  push: {{type: webpush, vapid_private_key_file: '{work / 'vapid.pem'}',"
                      " subject: 'mailto:ops@example.org', allow_private_endpoints: true}\n"
                      "routes:\n  critical: {assignee: [push]}\n", encoding="utf-8")
    settings = Settings(database_url=url, data_dir=work / "data", secret_key="pwa-secret-" + "q" * 40,
                        instance_id=f"pwa{os.getpid()}", notify_file=notify)
    api = serve(settings)
    try:
        yield Hub(url, api, passwords)
    finally:
        api.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def phone(browser: Any, hub: Hub, **kw: Any) -> Any:
    """A phone's browser context (browser_support.phone_context) that may show the hub's notifications."""
    context = phone_context(browser, **kw)
    context.grant_permissions(["notifications"], origin=hub.api.url)
    return context


def log_in(page: Any, hub: Hub, who: str, path: str = "/worker") -> None:
    submit_login(page, hub.api.url + path, who, hub.passwords[who])
    page.get_by_test_id("title").wait_for(timeout=WAIT_MS)


def until(page: Any, expression: str, timeout_s: float = WAIT_MS / 1000) -> None:
    """Poll a JavaScript expression until it is true (wait_for_function would evaluate strings, which the page's
    CSP refuses once it has to poll)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(100)


def service_worker_ready(page: Any) -> str:
    scope: str = page.evaluate("navigator.serviceWorker.ready.then((r) => r.scope)")
    # the page is controlled once the worker has claimed it
    until(page, "navigator.serviceWorker.controller !== null")
    return scope


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_app_installs_its_service_worker_with_a_valid_manifest(browser: Any, hub: Hub) -> None:
    context = phone(browser, hub)
    with watched_page(context) as (page, errors):
        log_in(page, hub, "w-001")
        assert service_worker_ready(page) == hub.api.url + "/worker"
        href = page.get_attribute("link[rel=manifest]", "href")
        assert href == "/static/manifest.webmanifest"
        manifest = httpx.get(hub.api.url + href)
        assert manifest.headers["content-type"].startswith("application/manifest+json")
        m = manifest.json()
        assert m["name"] == "网格任务" and m["start_url"] == "/worker" and m["display"] == "standalone"
        assert m["scope"] == "/worker" and m["theme_color"].startswith("#")
        sizes = set()
        for icon in m["icons"]:
            r = httpx.get(hub.api.url + icon["src"])
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            w, h = png_size(r.content)
            assert icon["sizes"] == f"{w}x{h}"
            sizes.add(w)
        assert {192, 512} <= sizes
        # what Chromium itself makes of the manifest: no installability errors
        cdp = context.new_cdp_session(page)
        got = cdp.send("Page.getAppManifest")
        assert got["errors"] == [] and got["url"].endswith("/static/manifest.webmanifest"), got
        installable = cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]
        # Playwright's contexts are incognito ones, where nothing installs; any other reason is ours
        assert [e for e in installable if e["errorId"] != "in-incognito"] == [], installable
        sw = httpx.get(hub.api.url + "/sw.js")
        assert sw.headers["content-type"].startswith("text/javascript")
        csp = httpx.get(hub.api.url + "/worker").headers["content-security-policy"]
        assert "worker-src 'self'" in csp and "manifest-src 'self'" in csp and "script-src 'self';" in csp
        assert errors == []


def test_times_are_the_districts_whatever_the_phones_zone(browser: Any, hub: Hub) -> None:
    context = phone(browser, hub, timezone_id="America/New_York")
    with watched_page(context) as (page, _):
        log_in(page, hub, "w-001")
        assert page.evaluate("document.documentElement.dataset.timezone") == "Asia/Shanghai"
        assert page.evaluate("GH.clock('2026-12-07T00:00:00Z')") == "12/07 08:00:00"
        assert page.evaluate("new Date('2026-12-07T00:00:00Z').getHours()") == 19  # the phone's own zone differs


def deliver_push(context: Any, page: Any, origin: str, payload: dict[str, Any]) -> None:
    """A push message to the page's service worker through the DevTools protocol."""
    cdp = context.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated", lambda ev: registrations.extend(ev["registrations"]))
    cdp.send("ServiceWorker.enable")
    deadline = time.monotonic() + 15
    while not any(r["scopeURL"] == origin + "/worker" and not r.get("isDeleted") for r in registrations):
        assert time.monotonic() < deadline, registrations
        page.wait_for_timeout(100)
    rid = next(r["registrationId"] for r in registrations if r["scopeURL"] == origin + "/worker")
    cdp.send("ServiceWorker.deliverPushMessage", {"origin": origin, "registrationId": rid,
                                                  "data": json.dumps(payload, ensure_ascii=False)})


def browser_keys() -> dict[str, str]:
    """The keys a browser's PushSubscription carries: its P-256 public key and a 16-byte auth secret."""
    import base64
    import secrets

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return {"p256dh": b64(point), "auth": b64(secrets.token_bytes(16))}


def notifications(page: Any) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = page.evaluate("""navigator.serviceWorker.ready.then((r) => r.getNotifications())
        .then((ns) => ns.map((n) => ({title: n.title, body: n.body, data: n.data, tag: n.tag,
                                      requireInteraction: n.requireInteraction, vibrate: Array.from(n.vibrate)})))""")
    return got


def test_a_push_shows_the_notification_and_a_tap_opens_the_task_logged_in(browser: Any, hub: Hub) -> None:
    _, task_id = make_incident(hub.db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    other_id = make_incident(hub.db_url, "sa-0002", "g-xg-01", "b-12", "w-001", alert_type="light_fault",
                             severity="normal")[1]
    context = phone(browser, hub)
    with watched_page(context) as (page, errors):
        log_in(page, hub, "w-001")
        service_worker_ready(page)
        # a subscription as the browser would make it (headless Chromium has none): through the API
        sub = {"endpoint": f"https://push.example.net/wpush/{uuid.uuid4().hex}", "keys": browser_keys()}
        r = httpx.post(hub.api.url + "/api/v1/me/push-subscriptions", json=sub,
                       headers={"Authorization": f"Bearer {hub.token('w-001')}"})
        assert r.status_code == 201, r.text
        payload = {"title": "【火警】12号楼 3层", "body": "12号楼 3层 301 厨房 烟感报警，请2分钟内接单",
                   "task_id": task_id, "url": f"https://hub.example.org/worker#task={task_id}",
                   "severity": "critical", "drill": False, "delivery_id": "nd-test-1"}
        deliver_push(context, page, hub.api.url, payload)
        deadline = time.monotonic() + 15
        while not (shown := notifications(page)):
            assert time.monotonic() < deadline, "the service worker showed no notification"
            page.wait_for_timeout(200)
        n = shown[0]
        assert n["title"] == payload["title"] and n["body"] == payload["body"]
        assert n["requireInteraction"] is True and n["vibrate"] and n["tag"] == f"task-{task_id}"
        assert n["data"]["url"] == f"/worker#task={task_id}"  # this hub's own address, whatever the sender's
        # a tap while the page is open: the page shows the task, opened (no reload, no log-in)
        page.evaluate("window.__sameDocument = true")
        worker = context.service_workers[0]
        worker.evaluate("""self.registration.getNotifications().then((ns) =>
            self.dispatchEvent(new NotificationEvent('notificationclick', {notification: ns[0]})))""")
        page.locator(f"[data-task-id='{task_id}'][data-open=true]").wait_for(timeout=WAIT_MS)
        assert page.evaluate("window.__sameDocument") is True
        assert page.evaluate("location.hash") == f"#task={task_id}"
        assert notifications(page) == []  # the tap closed it
        # a drill's title carries 【演练】 and a normal task does not ring the phone for long
        deliver_push(context, page, hub.api.url, {"title": "【演练】楼道灯故障", "body": "演练", "task_id": other_id,
                                                  "severity": "normal", "drill": True})
        deadline = time.monotonic() + 15
        while not (shown := notifications(page)):
            assert time.monotonic() < deadline
            page.wait_for_timeout(200)
        assert shown[0]["title"].startswith("【演练】") and shown[0]["requireInteraction"] is False
        # closed and opened again at the notification's link: still logged in, the task open
        url = hub.api.url + shown[0]["data"]["url"]
        page.close()
        again = context.new_page()
        errors += watch(again)
        again.goto(url)
        again.locator(f"[data-task-id='{other_id}'][data-open=true]").wait_for(timeout=WAIT_MS)
        assert again.get_by_test_id("login-form").count() == 0
        assert "张三" in again.get_by_test_id("title").inner_text()
        assert errors == []


def test_actions_note_and_photo_taken_offline_are_replayed_in_order(browser: Any, hub: Hub) -> None:
    _, task_id = make_incident(hub.db_url, "sa-0002", "g-xg-01", "b-12", "w-001", alert_type="exit_blocked",
                               severity="high")
    context = phone(browser, hub)
    with watched_page(context) as (page, errors):
        log_in(page, hub, "w-001", f"/worker#task={task_id}")
        service_worker_ready(page)
        card = page.locator(f"[data-task-id='{task_id}'][data-open=true]")
        card.wait_for(timeout=WAIT_MS)
        context.set_offline(True)
        until(page, "navigator.onLine === false")
        before_offline = datetime.now().astimezone()
        card.get_by_test_id("action-accept").click()
        page.get_by_test_id("outbox").filter(has_text="待发送 (1)").wait_for(timeout=WAIT_MS)
        card = page.locator(f"[data-task-id='{task_id}']")
        assert card.get_attribute("data-state") == "accepted"  # shown as it will be
        page.wait_for_timeout(1200)
        card.get_by_test_id("note").fill("通道已清理，电动车已移走")
        card.get_by_test_id("action-comment").click()
        page.get_by_test_id("outbox").filter(has_text="待发送 (2)").wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(1200)
        card.get_by_test_id("photo").set_input_files(files=[{"name": "exit.jpg", "mimeType": "image/jpeg",
                                                             "buffer": tiny_jpeg()}])
        card.get_by_test_id("upload-photo").click()
        page.get_by_test_id("outbox").filter(has_text="待发送 (3)").wait_for(timeout=WAIT_MS)
        assert card.get_by_test_id("pending").inner_text() == "待发送 3"
        assert [s["action"] for s in hub.task(task_id)["history"]] == ["open"]  # nothing reached the hub
        page.wait_for_timeout(6000)  # the replay comes well after the actions
        context.set_offline(False)
        page.locator("[data-testid=outbox][data-count='0']").wait_for(state="attached", timeout=WAIT_MS)
        back_online = datetime.now().astimezone()
        page.locator(f"[data-task-id='{task_id}'][data-state=accepted]").wait_for(timeout=WAIT_MS)
        # the card's "待发送" badge goes once the card is drawn again from the hub's answer (a state, waited for)
        page.locator(f"[data-task-id='{task_id}'] [data-testid=pending]").wait_for(state="detached", timeout=WAIT_MS)
        steps = hub.task(task_id)["history"]
        mine = [s for s in steps if s["actor"] == "w-001"]
        assert [s["action"] for s in mine] == ["accept", "comment", "photo"]
        assert mine[1]["note"] == "通道已清理，电动车已移走"
        ats = [datetime.fromisoformat(s["at"]) for s in mine]
        received = [datetime.fromisoformat(s["received_at"]) for s in mine]
        assert before_offline - timedelta(seconds=1) <= ats[0] < ats[1] < ats[2] < back_online - timedelta(seconds=5)
        assert all(r - a >= timedelta(seconds=5) for a, r in zip(ats, received, strict=True))
        assert received == sorted(received)
        task = hub.task(task_id)
        assert task["state"] == "accepted" and task["assignee"] == "w-001"
        # the deadline clock is the hub's: accepted when it arrived
        assert abs(datetime.fromisoformat(task["accepted_at"]) - received[0]) < timedelta(seconds=1)
        assert errors == []


def test_an_offline_action_the_task_no_longer_allows_is_shown_and_dropped(browser: Any, hub: Hub) -> None:
    _, task_id = make_incident(hub.db_url, "sa-0002", "g-xg-01", "b-12", "w-001", alert_type="light_fault",
                               severity="normal")
    context = phone(browser, hub)
    with watched_page(context) as (page, _):
        log_in(page, hub, "w-001", f"/worker#task={task_id}")
        card = page.locator(f"[data-task-id='{task_id}'][data-open=true]")
        card.wait_for(timeout=WAIT_MS)
        context.set_offline(True)
        until(page, "navigator.onLine === false")
        card.get_by_test_id("action-accept").click()
        page.get_by_test_id("outbox").filter(has_text="待发送 (1)").wait_for(timeout=WAIT_MS)
        # meanwhile the grid head gave the task to someone else
        r = httpx.post(f"{hub.api.url}/api/v1/tasks/{task_id}/accept",
                       headers={"Authorization": f"Bearer {hub.token('w-002')}"})
        assert r.status_code == 200, r.text
        context.set_offline(False)
        problem = page.get_by_test_id("outbox-error").locator("li")
        problem.first.wait_for(timeout=WAIT_MS)
        text = problem.first.inner_text()
        assert "未能发送「接单」" in text and "无权进行此操作" in text and "you are grid_worker w-001" in text, text
        page.locator("[data-testid=outbox][data-count='0']").wait_for(state="attached", timeout=WAIT_MS)
        assert hub.task(task_id)["assignee"] == "w-002"


def test_the_supervisor_view_lists_an_escalated_task_and_acts_on_it(browser: Any, hub: Hub) -> None:
    _, late = make_incident(hub.db_url, "sa-0002", "g-xg-01", "b-12", "w-001")
    _, returned = make_incident(hub.db_url, "sa-0002", "g-xg-01", "b-12", "w-001", alert_type="exit_blocked",
                                severity="high")
    hub.escalate(late, 1)
    hub.escalate(returned, 1, assignee="w-002")
    context = phone(browser, hub)
    with watched_page(context) as (page, errors):
        log_in(page, hub, "w-002")
        assert page.get_by_test_id("title").inner_text().startswith("辖区督办")
        escalated = page.get_by_test_id("group-escalated")
        card = escalated.locator(f"[data-task-id='{late}']")
        card.wait_for(timeout=WAIT_MS)
        assert card.get_attribute("data-escalated") == "true"
        # a critical task waiting to be accepted shows its actions at once; the others are one line until tapped
        card = page.locator(f"[data-task-id='{late}'][data-open=true]")
        assert "已升级至网格长" in card.get_by_test_id("meta").inner_text()
        card.get_by_test_id("action-accept").click()
        page.locator(f"[data-task-id='{late}'][data-state=accepted]").wait_for(timeout=WAIT_MS)
        task = hub.task(late)
        assert task["state"] == "accepted" and task["assignee"] == "w-002"
        # reassign the returned one to the grid's worker
        card = page.locator(f"[data-task-id='{returned}']")
        card.wait_for(timeout=WAIT_MS)
        assert card.get_attribute("data-open") == "false" and card.get_by_test_id("action-reassign").count() == 0
        assert card.get_by_test_id("task-line").bounding_box()["height"] < 80
        card.get_by_test_id("task-line").click()
        card = page.locator(f"[data-task-id='{returned}'][data-open=true]")
        card.locator("[data-testid=reassign-to] option[value=w-001]").wait_for(state="attached", timeout=WAIT_MS)
        assert card.locator("[data-testid=reassign-to] option[value=w-002]").count() == 0  # already theirs
        card.get_by_test_id("reassign-to").select_option("w-001")
        card.get_by_test_id("note").fill("请张三处理")
        card.get_by_test_id("action-reassign").click()
        deadline = time.monotonic() + 20
        while hub.task(returned)["assignee"] != "w-001":
            assert time.monotonic() < deadline, "the reassignment did not reach the hub"
            page.wait_for_timeout(200)
        task = hub.task(returned)
        assert task["assignee"] == "w-001" and task["history"][-1]["action"] == "reassign"
        assert "请张三处理" in task["history"][-1]["note"]
        # the street officer sees it among the area's tasks, not as escalated to the street
        street = context.new_page()
        street.goto(hub.api.url + "/worker")
        street.get_by_test_id("title").wait_for(timeout=WAIT_MS)
        street.evaluate("GH.logOut()")
        log_in(street, hub, "s-001")
        street.locator(f"[data-testid=group-area] [data-task-id='{returned}']").wait_for(timeout=WAIT_MS)
        hub.escalate(returned, 2)
        street.locator(f"[data-testid=group-escalated] [data-task-id='{returned}']").wait_for(timeout=WAIT_MS)
        assert street.get_by_test_id("tab-mine").inner_text() == "我的任务"
        assert errors == []


def test_a_new_critical_task_rings_and_vibrates_while_the_page_is_open(browser: Any, hub: Hub) -> None:
    context = phone(browser, hub)
    context.add_init_script("navigator.vibrate = (p) => { window.__vibrated = (window.__vibrated || 0) + 1;"
                            " return true; };")
    with watched_page(context) as (page, errors):
        log_in(page, hub, "w-003")
        page.get_by_test_id("live").filter(has_text="实时").wait_for(timeout=WAIT_MS)
        page.mouse.click(5, 300)  # a tap: browsers let a page sound only after one
        _, task_id = make_incident(hub.db_url, "sa-0201", "g-xg-02", "b-20", "w-003")
        page.locator(f"[data-task-id='{task_id}'][data-open=true]").wait_for(timeout=WAIT_MS)
        until(page, "Number(document.body.dataset.alarms || 0) >= 1")
        assert page.evaluate("window.__vibrated") >= 1
        # a normal one does not ring
        make_incident(hub.db_url, "sa-0201", "g-xg-02", "b-20", "w-003", alert_type="low_battery", severity="low")
        page.wait_for_timeout(1500)
        assert page.evaluate("document.body.dataset.alarms") == "1"
        assert errors == []
