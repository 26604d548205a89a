"""The worker page's patrols and hazard reports (issue 14, items 5 and 6) in headless Chromium (Debian's
/usr/bin/chromium through Playwright, as test_browser_pwa.py), on the hub's API over a database of its own: the
patrol list (today's with the overdue one marked 逾期, this week's), a patrol done on the phone (开始巡查, the
checklist with the page's own checks, a hazard item with a photo, the draft kept across a reload) after which the API
shows the patrol resolved with its results and a hazard task opened, and the board's map marker of the building turns
from 逾期巡查 to 隐患; the hazard report form with a photo (the page's size check, the server's 422 shown); and a patrol
done without signal, queued as one submission (photos, then the resolve carrying their evidence ids) and landing in
order once back online, also after the page was closed and opened again without signal; a hazard report sent
without signal likewise.

Patrols are made here as the migration's rows (tasks + patrols, with the rules' checklist of the unit's class), so
that their periods (overdue, this week) do not depend on the day the tests run."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from apitools import RunningApi, serve, tiny_jpeg
from browser_support import chromium, phone_context, registered_database, submit_login, watch, watched_page
from psycopg.types.json import Jsonb

from gridhub.alerts import changes
from gridhub.alerts.tasks import default_rules
from gridhub.settings import Settings

WAIT_MS = 30_000
ZONE = ZoneInfo("Asia/Shanghai")
# the README's picture of the checklist: to docs/ with GRIDHUB_UPDATE_SCREENSHOTS=1 (as test_browser.py)
SHOTS = Path(__file__).resolve().parent.parent / "docs" if os.environ.get("GRIDHUB_UPDATE_SCREENSHOTS") == "1" \
    else Path(tempfile.gettempdir())


class Hub:
    def __init__(self, url: str, api: RunningApi, passwords: dict[str, str]) -> None:
        self.db_url, self.api, self.passwords = url, api, passwords
        self._tokens: dict[str, str] = {}

    def token(self, who: str) -> str:
        if who not in self._tokens:
            r = httpx.post(f"{self.api.url}/api/v1/auth/token", data={"username": who, "password": self.passwords[who]})
            assert r.status_code == 200, r.text
            self._tokens[who] = str(r.json()["access_token"])
        return self._tokens[who]

    def get(self, path: str, who: str = "a-001", **params: Any) -> Any:
        r = httpx.get(f"{self.api.url}{path}", params=params, headers={"Authorization": f"Bearer {self.token(who)}"})
        assert r.status_code == 200, r.text
        return r.json()

    def task(self, task_id: str) -> dict[str, Any]:
        out: dict[str, Any] = self.get(f"/api/v1/tasks/{task_id}")
        return out


@pytest.fixture(scope="module")
def hub(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    url, passwords = registered_database(make_database, "patrols")
    work = tmp_path_factory.mktemp("patrols-hub")
    settings = Settings(database_url=url, data_dir=work / "data", secret_key="patrol-secret-" + "p" * 40,
                        instance_id=f"patrols{os.getpid()}")
    api = serve(settings)
    try:
        yield Hub(url, api, passwords)
    finally:
        api.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def local_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZONE).astimezone(UTC)


def today() -> date:
    return datetime.now(ZONE).date()


def make_patrol(db_url: str, unit_id: str, assignee: str, start: date, end: date, planned: date,
                frequency: str = "quarterly") -> str:
    """A patrol task of `unit_id` for the local days [start, end), as the migration's rows (tasks + patrols), with
    the rules' checklist of the unit's class, logged in `changes` (the stream) as the alert engine logs it."""
    task_id = f"tk-p{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT class, grid_id, building_id FROM units WHERE id = %s", (unit_id,)).fetchone()
        assert row is not None
        cls, grid, building = row
        begin, finish = local_midnight(start), local_midnight(end)
        conn.execute(
            "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, unit_id, assignee, accept_due,"
            " resolve_due, opened_at, last_seen, incident_key) VALUES (%s, 'patrol', 'normal', 'open', %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s)",
            (task_id, grid, building, unit_id, assignee, finish, finish, min(begin, now), now, f"patrol:{task_id}"))
        conn.execute(
            "INSERT INTO patrols (task_id, unit_id, class, kind, frequency, period_start, period_end, planned_for,"
            " checklist) VALUES (%s, %s, %s, 'plan', %s, %s, %s, %s, %s)",
            (task_id, unit_id, cls, frequency, begin, finish, planned, Jsonb(default_rules().patrols.checklist(cls))))
        conn.execute("INSERT INTO task_history (task_id, at, actor, action, note) VALUES (%s, %s, 'system', 'open',"
                     " %s)", (task_id, now, f"patrol of {unit_id}, assigned to {assignee}"))
        uow = changes.UnitOfWork(conn)
        uow.stage_task(task_id)
        uow.flush()
        conn.commit()
    return task_id


def log_in(page: Any, hub: Hub, who: str, path: str = "/worker") -> None:
    submit_login(page, hub.api.url + path, who, hub.passwords[who])
    page.get_by_test_id("title").wait_for(timeout=WAIT_MS)


def until(page: Any, expression: str, timeout_s: float = WAIT_MS / 1000) -> None:
    """Poll a JavaScript expression until it is true (the page's CSP refuses wait_for_function's string eval)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(100)


def open_board(browser: Any, hub: Hub) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(viewport={"width": 1400, "height": 1600}, locale="zh-CN", timezone_id="Asia/Shanghai")
    page = context.new_page()
    errors = watch(page)
    submit_login(page, hub.api.url + "/", "a-001", hub.passwords["a-001"])
    page.get_by_test_id("who").wait_for(timeout=WAIT_MS)
    page.locator("[data-testid=map-marker][data-building=b-12]").wait_for(timeout=WAIT_MS)
    return context, page, errors


def check(item: Any, result: str) -> None:
    item.get_by_test_id({"ok": "result-ok", "hazard": "result-hazard", "n/a": "result-na"}[result]).click()


def test_a_worker_completes_a_patrol_with_a_photo_and_the_map_marker_changes(browser: Any, hub: Hub) -> None:
    day = today()
    monday = day - timedelta(days=day.weekday())
    # u-001 (沙坡尾菜市场, key unit, b-12): last quarter's patrol, not done: overdue
    late = make_patrol(hub.db_url, "u-001", "w-001", day - timedelta(days=92), day, day - timedelta(days=60))
    # u-002 (小卖部, shop): a yearly patrol planned for later this week (or today when today is Sunday)
    later = min(day + timedelta(days=2), monday + timedelta(days=6))
    soon = make_patrol(hub.db_url, "u-002", "w-001", date(day.year, 1, 1), date(day.year + 1, 1, 1), later, "yearly")
    board_context, board, board_errors = open_board(browser, hub)
    phone = phone_context(browser)
    try:
        marker = board.locator("[data-testid=map-marker][data-building=b-12]")
        board.locator("[data-testid=map-marker][data-building=b-12][data-status=overdue]").wait_for(timeout=WAIT_MS)
        colour_before = marker.get_attribute("data-colour")
        with watched_page(phone) as (page, errors):
            log_in(page, hub, "w-001")
            page.get_by_test_id("tab-patrols").click()
            assert page.get_by_test_id("title").inner_text().startswith("安全巡查")
            card = page.locator(f"[data-testid=patrols-today] [data-task-id='{late}']")
            card.wait_for(timeout=WAIT_MS)
            assert card.get_attribute("data-overdue") == "true"
            assert card.get_by_test_id("overdue").inner_text() == "逾期"
            assert card.get_by_test_id("unit-name").inner_text() == "沙坡尾菜市场"
            assert card.get_by_test_id("unit-class").inner_text() == "重点单位"
            assert card.get_by_test_id("period-end").inner_text().startswith("截止 ")
            group = "today" if later == day else "week"
            shop = page.locator(f"[data-testid=patrols-{group}] [data-task-id='{soon}']")
            shop.wait_for(timeout=WAIT_MS)
            assert shop.get_by_test_id("unit-class").inner_text() == "个体经营户"
            assert shop.get_attribute("data-overdue") == "false"
            assert f"{later.month}月{later.day}日" in shop.get_by_test_id("planned").inner_text()
            assert page.get_by_test_id("tab-patrols").get_attribute("data-count") == ("2" if later == day else "1")
            page.screenshot(path=str(Path(tempfile.gettempdir()) / "worker-patrol-list.png"))

            card.get_by_test_id("patrol-line").click()
            view = page.locator(f"[data-testid=patrol-view][data-task-id='{late}']")
            view.wait_for(timeout=WAIT_MS)
            assert page.evaluate("location.hash") == f"#patrol={late}"
            view.get_by_test_id("patrol-accept").click()
            page.locator(f"[data-testid=patrol-view][data-task-id='{late}'][data-state=accepted]").wait_for(
                timeout=WAIT_MS)
            items = page.get_by_test_id("check-item")
            items.first.wait_for(timeout=WAIT_MS)
            checklist = hub.task(late)["patrol"]["checklist"]
            assert items.count() == len(checklist) >= 3
            assert hub.task(late)["state"] == "accepted"
            # the page's own checks, in Chinese, before anything is sent
            page.get_by_test_id("patrol-submit").click()
            assert "未检查" in page.get_by_test_id("patrol-error").inner_text()
            hazard_item = items.nth(1)
            check(items.nth(0), "ok")
            check(hazard_item, "hazard")
            check(items.nth(2), "n/a")
            # the draft survives a reload (IndexedDB)
            page.reload()
            view.wait_for(timeout=WAIT_MS)
            items = page.get_by_test_id("check-item")
            items.first.wait_for(timeout=WAIT_MS)
            page.locator("[data-testid=check-item][data-result=hazard]").wait_for(timeout=WAIT_MS)
            assert [items.nth(i).get_attribute("data-result") for i in range(3)] == ["ok", "hazard", "n/a"]
            hazard_item = items.nth(1)
            for i in range(3, items.count()):
                check(items.nth(i), "ok")
            page.get_by_test_id("patrol-submit").click()
            assert "隐患项需填写说明或拍照" in page.get_by_test_id("patrol-error").inner_text()
            hazard_item.get_by_test_id("item-photo").set_input_files(
                files=[{"name": "hazard.jpg", "mimeType": "image/jpeg", "buffer": tiny_jpeg()}])
            hazard_item.get_by_test_id("item-thumb").wait_for(timeout=WAIT_MS)
            hazard_item.get_by_test_id("item-note").fill("楼道内电动车充电")
            page.get_by_test_id("patrol-note").fill("整体良好")
            assert page.get_by_test_id("patrol-progress").get_attribute("data-answered") == str(len(checklist))
            page.evaluate("window.scrollTo(0, document.querySelector('[data-testid=patrol-view]').offsetTop - 56)")
            page.screenshot(path=str(SHOTS / "worker-patrol.png"), full_page=False)
            page.get_by_test_id("patrol-submit").click()
            page.get_by_test_id("notice").filter(has_text="巡查已提交").wait_for(timeout=WAIT_MS)
            page.get_by_test_id("patrol-summary").wait_for(timeout=WAIT_MS)

            task = hub.task(late)
            assert task["state"] == "resolved" and task["resolution"] == "done"
            results = {r["id"]: r for r in task["patrol"]["results"]}
            hazard_id = checklist[1]["id"]
            assert results[hazard_id]["result"] == "hazard" and results[hazard_id]["note"] == "楼道内电动车充电"
            assert len(results[hazard_id]["photos"]) == 1 and results[hazard_id]["photos"][0].startswith("ev-")
            assert results[checklist[0]["id"]]["result"] == "ok" and results[checklist[2]["id"]]["result"] == "n/a"
            assert task["patrol"]["hazards"] == 1 and task["patrol"]["note"] == "整体良好"
            assert [s["action"] for s in task["history"] if s["actor"] == "w-001"] == ["accept", "photo", "resolve"]
            hazards = [t for t in hub.get("/api/v1/tasks", type="hazard", limit=1000)["items"]
                       if t.get("source_task_id") == late]
            assert len(hazards) == 1 and hazards[0]["state"] == "open" and hazards[0]["building_id"] == "b-12"
            # back to the list: the done patrol is gone, the shop's is still there
            page.get_by_test_id("patrol-back").click()
            shop.wait_for(timeout=WAIT_MS)
            assert page.locator(f"[data-testid=patrol-card][data-task-id='{late}']").count() == 0
            # the grid head sends it back (返工): it is listed again, the recorded answers filled in, sent again as is
            r = httpx.post(f"{hub.api.url}/api/v1/tasks/{late}/reject", json={"note": "请补拍灭火器照片"},
                           headers={"Authorization": f"Bearer {hub.token('w-002')}"})
            assert r.status_code == 200, r.text
            card.wait_for(timeout=WAIT_MS)
            card.get_by_test_id("patrol-line").click()
            view.get_by_test_id("patrol-rework").wait_for(timeout=WAIT_MS)
            assert "请补拍灭火器照片" in view.get_by_test_id("patrol-rework").inner_text()
            page.locator("[data-testid=check-item][data-result=hazard]").wait_for(timeout=WAIT_MS)
            hazard_item = page.locator(f"[data-testid=check-item][data-item='{hazard_id}']")
            assert hazard_item.get_by_test_id("item-note").input_value() == "楼道内电动车充电"
            assert hazard_item.get_by_test_id("item-thumb").count() == 1
            page.get_by_test_id("patrol-submit").click()
            page.locator("[data-testid=patrol-view][data-state=resolved]").wait_for(timeout=WAIT_MS)
            again = hub.task(late)
            assert again["state"] == "resolved"
            assert {r["id"]: r for r in again["patrol"]["results"]}[hazard_id]["photos"] == results[hazard_id]["photos"]
            assert len([t for t in hub.get("/api/v1/tasks", type="hazard", limit=1000)["items"]
                        if t.get("source_task_id") == late]) == 1
            assert errors == []
        # the board's map: b-12 was coloured by its overdue patrol, now by the open hazard
        board.locator("[data-testid=map-marker][data-building=b-12][data-status=hazard]").wait_for(timeout=WAIT_MS)
        assert marker.get_attribute("data-colour") != colour_before
        assert board_errors == []
    finally:
        board_context.close()


def test_the_hazard_report_form_submits_a_report_with_a_photo(browser: Any, hub: Hub) -> None:
    context = phone_context(browser)
    with watched_page(context) as (page, errors):
        log_in(page, hub, "w-001")
        page.get_by_test_id("tab-report").click()
        form = page.locator("[data-testid=report-form][data-ready=true]")
        form.wait_for(timeout=WAIT_MS)
        labels = page.locator("[data-testid=report-category] option").all_inner_texts()
        assert labels == ["请选择隐患类别", "安全出口/疏散通道", "消防设施", "电气线路", "燃气", "电动自行车", "其他"]
        buildings = page.locator("[data-testid=report-building] option")
        assert {buildings.nth(i).get_attribute("value") for i in range(buildings.count())} == {"", "b-12", "b-14"}
        error = page.get_by_test_id("report-error")
        page.get_by_test_id("report-submit").click()
        assert error.inner_text() == "请选择隐患类别"
        page.get_by_test_id("report-category").select_option("ebike")
        page.get_by_test_id("report-submit").click()
        assert error.inner_text() == "请选择隐患所在楼栋"
        page.get_by_test_id("report-building").select_option("b-12")
        units = page.locator("[data-testid=report-unit] option")
        assert {units.nth(i).get_attribute("value") for i in range(units.count())} == {"", "u-001", "u-002"}
        page.get_by_test_id("report-unit").select_option("u-001")
        page.get_by_test_id("report-floor").fill("1")
        page.get_by_test_id("report-place").fill("一楼楼梯间")
        page.get_by_test_id("report-submit").click()
        assert error.inner_text() == "请填写隐患情况描述"
        page.get_by_test_id("report-description").fill("楼梯间停放电动自行车并充电")
        # over 8 MiB: refused on the phone, nothing added
        page.get_by_test_id("report-photo").set_input_files(files=[{
            "name": "big.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8" + b"\0" * (8 * 1024 * 1024)}])
        assert "超过 8 MiB" in error.inner_text()
        assert page.get_by_test_id("report-photo-count").inner_text().startswith("照片 0/5")
        # not really a JPEG: the hub's 422 detail is shown
        page.get_by_test_id("report-photo").set_input_files(files=[{
            "name": "fake.jpg", "mimeType": "image/jpeg", "buffer": b"not a jpeg at all"}])
        page.get_by_test_id("report-submit").click()
        page.get_by_test_id("report-error").filter(has_text="上报失败").wait_for(timeout=WAIT_MS)
        text = error.inner_text()
        assert "内容有误" in text and "photo 1" in text and "JPEG" in text, text
        page.locator("[data-testid=report-photos] .x").click()
        page.get_by_test_id("report-photo").set_input_files(files=[{
            "name": "ebike.jpg", "mimeType": "image/jpeg", "buffer": tiny_jpeg()}])
        assert page.get_by_test_id("report-photo-count").inner_text().startswith("照片 1/5")
        page.screenshot(path=str(Path(tempfile.gettempdir()) / "worker-report.png"), full_page=True)
        page.get_by_test_id("report-submit").click()
        page.get_by_test_id("notice").filter(has_text="隐患已上报").wait_for(timeout=WAIT_MS)
        mine = hub.get("/api/v1/reports", who="w-001", mine="true")["items"]
        assert len(mine) == 1
        report = mine[0]["report"]
        assert report["category"] == "ebike" and report["building"] == "b-12" and report["unit"] == "u-001"
        assert report["floor"] == 1 and report["place"] == "一楼楼梯间"
        assert report["description"] == "楼梯间停放电动自行车并充电" and len(report["photos"]) == 1
        assert mine[0]["type"] == "hazard" and mine[0]["state"] == "open"
        # the form is empty again, and lists the report
        page.locator(f"[data-testid=my-report][data-task-id='{mine[0]['id']}']").wait_for(timeout=WAIT_MS)
        assert page.get_by_test_id("report-description").input_value() == ""
        # without signal the report waits in the outbox (待发送) with its photo, and lands once back online
        context.set_offline(True)
        until(page, "navigator.onLine === false")
        page.get_by_test_id("report-category").select_option("escape_route")
        page.get_by_test_id("report-building").select_option("b-14")
        page.get_by_test_id("report-description").fill("14号楼安全出口被杂物堵塞")
        page.get_by_test_id("report-photo").set_input_files(files=[{
            "name": "exit.jpg", "mimeType": "image/jpeg", "buffer": tiny_jpeg()}])
        page.get_by_test_id("report-submit").click()
        page.get_by_test_id("outbox").filter(has_text="待发送 (1)").wait_for(timeout=WAIT_MS)
        assert "无网络" in page.get_by_test_id("notice").inner_text()
        page.get_by_test_id("outbox").click()
        assert "隐患上报" in page.get_by_test_id("outbox-item").first.inner_text()
        assert len(hub.get("/api/v1/reports", who="w-001", mine="true")["items"]) == 1
        context.set_offline(False)
        page.locator("[data-testid=outbox][data-count='0']").wait_for(state="attached", timeout=WAIT_MS)
        mine = hub.get("/api/v1/reports", who="w-001", mine="true")["items"]
        assert len(mine) == 2 and mine[0]["report"]["building"] == "b-14" and len(mine[0]["report"]["photos"]) == 1
        assert mine[0]["report"]["category"] == "escape_route"
        assert errors == []


def test_a_patrol_done_offline_is_queued_and_lands_once_back_online(browser: Any, hub: Hub) -> None:
    day = today()
    # u-201 (加油站, major hazard, b-20, grid g-xg-02, w-003): this month's patrol, planned today
    first = date(day.year, day.month, 1)
    nxt = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    patrol = make_patrol(hub.db_url, "u-201", "w-003", first, nxt, day, "monthly")
    context = phone_context(browser)
    with watched_page(context) as (page, errors):
        log_in(page, hub, "w-003", f"/worker#patrol={patrol}")
        view = page.locator(f"[data-testid=patrol-view][data-task-id='{patrol}']")
        view.get_by_test_id("patrol-accept").wait_for(timeout=WAIT_MS)
        # once the service worker has the page, what the page reads is kept for reading it without signal
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        until(page, "navigator.serviceWorker.controller !== null")
        page.reload()
        view.get_by_test_id("patrol-accept").wait_for(timeout=WAIT_MS)
        context.set_offline(True)
        until(page, "navigator.onLine === false")
        view.get_by_test_id("patrol-accept").click()
        page.get_by_test_id("outbox").filter(has_text="待发送 (1)").wait_for(timeout=WAIT_MS)
        items = page.get_by_test_id("check-item")
        items.first.wait_for(timeout=WAIT_MS)
        checklist = [items.nth(i).get_attribute("data-item") for i in range(items.count())]
        for i in range(items.count()):
            check(items.nth(i), "hazard" if i == 0 else "ok")
        items.nth(0).get_by_test_id("item-photo").set_input_files(
            files=[{"name": "leak.jpg", "mimeType": "image/jpeg", "buffer": tiny_jpeg()}])
        items.nth(0).get_by_test_id("item-thumb").wait_for(timeout=WAIT_MS)
        page.get_by_test_id("patrol-submit").click()
        page.get_by_test_id("outbox").filter(has_text="待发送 (2)").wait_for(timeout=WAIT_MS)
        page.locator("[data-testid=patrol-view][data-pending=submit]").wait_for(timeout=WAIT_MS)
        assert "待发送" in page.get_by_test_id("patrol-summary").inner_text()
        page.get_by_test_id("outbox").click()
        queued = page.get_by_test_id("outbox-item")
        assert queued.count() == 2
        assert "接单" in queued.nth(0).inner_text() and "巡查提交" in queued.nth(1).inner_text()
        assert "照片 0/1" in queued.nth(1).inner_text()
        # closed and opened again without signal (the service worker's copy of the page): still waiting, as sent
        page.reload()
        page.locator(f"[data-testid=patrol-view][data-task-id='{patrol}'][data-pending=submit]").wait_for(
            timeout=WAIT_MS)
        page.locator("[data-testid=outbox][data-count='2']").wait_for(state="attached", timeout=WAIT_MS)
        # in the list, shown as sent
        page.get_by_test_id("patrol-back").click()
        listed = page.locator(f"[data-testid=patrol-card][data-task-id='{patrol}']")
        listed.get_by_test_id("pending").wait_for(timeout=WAIT_MS)
        task = hub.task(patrol)
        assert task["state"] == "open" and [s["action"] for s in task["history"]] == ["open"]
        page.wait_for_timeout(6000)  # the hub receives it well after it was done (over 5 s: received_at)
        context.set_offline(False)
        page.locator("[data-testid=outbox][data-count='0']").wait_for(state="attached", timeout=WAIT_MS)
        listed.wait_for(state="detached", timeout=WAIT_MS)
        task = hub.task(patrol)
        assert task["state"] == "resolved" and task["resolution"] == "done"
        mine = [s for s in task["history"] if s["actor"] == "w-003"]
        assert [s["action"] for s in mine] == ["accept", "photo", "resolve"]
        assert all("received_at" in s for s in mine)  # done offline: the person's times, the hub's beside them
        ats = [datetime.fromisoformat(s["at"]) for s in mine]
        assert ats == sorted(ats)
        results = {r["id"]: r for r in task["patrol"]["results"]}
        assert [r["id"] for r in task["patrol"]["results"]] == checklist
        evidence = results[checklist[0]]["photos"]
        assert len(evidence) == 1 and evidence[0] in mine[1]["note"]  # the queued photo's id, known only once sent
        assert results[checklist[0]]["result"] == "hazard" and results[checklist[0]]["note"] is None
        assert all(results[i]["result"] == "ok" for i in checklist[1:])
        hazards = [t for t in hub.get("/api/v1/tasks", type="hazard", limit=1000)["items"]
                   if t.get("source_task_id") == patrol]
        assert len(hazards) == 1 and hazards[0]["building_id"] == "b-20"
        assert errors == []
