"""docs/board-map.png: the bureau board's map of buildings and units with the patrol progress per grid beside the task
board, on the demo district (gridhub/demo/district.yaml) with a year of patrols, a few hazards and alerts.

    .venv/bin/python scripts/screenshot_board.py [--out docs/board-map.png] [--who s-001]

Needs PostgreSQL (`make services`; GRIDHUB_TEST_ADMIN_URL names another server's admin URL, as for the tests) and
Debian's /usr/bin/chromium. It makes a database of its own, imports the demo district, writes the year's state with
SQL in the shapes of the migrations (as the tests do: plan patrols per unit class and period, most done, a few left
overdue, hazard tasks found on some, two of them rectified, three alerts with their tasks), serves the API on
127.0.0.1, logs in as the street officer of 厦港街道 (s-001) and drops the database afterwards. Seeded: the same
picture every time for a given day."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("GRIDHUB_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
CHROMIUM = "/usr/bin/chromium"
ZONE = ZoneInfo("Asia/Shanghai")
FREQUENCY = {"key": "quarterly", "general": "yearly", "shop": "yearly", "major_hazard": "monthly"}
CHECKLIST = [{"id": "escape_route", "label": "安全出口和疏散通道畅通"}, {"id": "extinguisher", "label": "灭火器在位且在有效期内"},
             {"id": "ebike", "label": "电动自行车未在楼道、室内充电"}, {"id": "wiring", "label": "电气线路无私拉乱接"}]
HAZARDS = [("ebike", "电动自行车未在楼道、室内充电", "ebike", "楼道内两辆电动车充电"),
           ("escape_route", "安全出口和疏散通道畅通", "escape_route", "后门堆放纸箱"),
           ("wiring", "电气线路无私拉乱接", "electrical", "厨房插线板串接"),
           ("extinguisher", "灭火器在位且在有效期内", "fire_equipment", "两具灭火器压力不足")]


def with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def periods(frequency: str, year: int, today: date) -> list[tuple[date, date]]:
    """The plan periods of `year` that have started by `today` (start, end: the day after the last)."""
    if frequency == "yearly":
        starts = [date(year, 1, 1)]
    else:
        step = {"quarterly": 3, "monthly": 1}[frequency]
        starts = [date(year, m, 1) for m in range(1, 13, step)]
    out = []
    for s in starts:
        months = {"yearly": 12, "quarterly": 3, "monthly": 1}[frequency]
        m = s.month - 1 + months
        e = date(s.year + m // 12, m % 12 + 1, 1)
        if s <= today:
            out.append((s, e))
    return out


def local(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZONE)


def seed(conn: psycopg.Connection[Any], street: str, now: datetime) -> None:
    """A year of patrols in `street`'s grids, hazards found on some, and three alerts."""
    rnd = random.Random(f"board-map-{now.date()}")
    today = now.astimezone(ZONE).date()
    workers: dict[str, list[str]] = {}
    for wid, grid in conn.execute("SELECT w.id, wg.grid_id FROM workers w JOIN worker_grids wg ON wg.worker_id = w.id"
                                  " WHERE w.role = 'grid_worker' ORDER BY w.id"):
        workers.setdefault(grid, []).append(wid)
    units = conn.execute(
        "SELECT u.id, u.name, u.class, u.grid_id, u.building_id FROM units u JOIN grids g ON g.id = u.grid_id"
        " JOIN communities c ON c.id = g.community_id WHERE c.street_id = %s ORDER BY u.id", (street,)).fetchall()
    n = 0
    done_patrols: list[tuple[Any, ...]] = []
    # three units whose last finished period was not patrolled (overdue), the rest of the past mostly done
    late_units = {u[0] for u in rnd.sample([u for u in units if u[4] and FREQUENCY[u[2]] != "yearly"], 3)}

    def task(kind: str, severity: str, grid: str, building: str | None, unit: str | None, opened: datetime,
             due: datetime, *, state: str = "open", resolution: str | None = None, closed: datetime | None = None,
             accepted: datetime | None = None,
             source: str | None = None, detail: dict[str, Any] | None = None) -> str:
        nonlocal n
        n += 1
        task_id = f"tk-demo{n:05d}"
        assignee = rnd.choice(workers.get(grid) or [None])  # type: ignore[list-item]
        conn.execute(
            "INSERT INTO tasks (id, type, severity, state, grid_id, building_id, unit_id, assignee, accept_due,"
            " resolve_due, opened_at, accepted_at, resolved_at, closed_at, resolution, last_seen, incident_key,"
            " source_task_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s)",
            (task_id, kind, severity, state, grid, building, unit, assignee, due, due, opened,
             accepted or (closed if state == "closed" else None), closed if state == "closed" else None, closed,
             resolution,
             closed or opened, f"demo:{task_id}", source, json.dumps(detail) if detail else None))
        conn.execute("INSERT INTO task_history (task_id, at, actor, action, note) VALUES (%s, %s, 'system', 'open',"
                     " %s)", (task_id, opened, f"assigned to {assignee}"))
        return task_id

    for unit_id, _name, cls, grid, building in units:
        frequency = FREQUENCY[cls]
        spans = periods(frequency, today.year, today)
        past = [p for p in spans if local(p[1]) <= now]
        for start_day, end_day in spans:
            start, end = local(start_day), local(end_day)
            current = end > now
            left = unit_id in late_units and (start_day, end_day) == past[-1]
            done = rnd.random() < 0.35 if current else not left
            done_at = None
            if done:
                span = (min(end, now) - start).total_seconds()
                done_at = start + timedelta(seconds=span * rnd.uniform(0.2, 0.95 if current else 1.08))
                done_at = min(done_at, now - timedelta(hours=1))
            accepted = None
            state = "closed" if done else "open"
            if current and not done and rnd.random() < 0.4:
                state, accepted = "accepted", min(now, start + timedelta(days=2))
            task_id = task("patrol", "normal", grid, building, unit_id, start, end, state=state,
                           resolution="done" if done else None, closed=done_at, accepted=accepted)
            planned = start_day + timedelta(days=rnd.randrange(max(1, (end_day - start_day).days)))
            conn.execute(
                "INSERT INTO patrols (task_id, unit_id, class, kind, frequency, period_start, period_end, planned_for,"
                " checklist, results, done_at, done_by, hazards) VALUES (%s, %s, %s, 'plan', %s, %s, %s, %s, %s, %s,"
                " %s, %s, 0)",
                (task_id, unit_id, cls, frequency, start, end, planned, json.dumps(CHECKLIST),
                 json.dumps([{**c, "result": "ok", "note": None, "photos": []} for c in CHECKLIST]) if done else None,
                 done_at, "w-001" if done else None))
            if done and done_at is not None:
                done_patrols.append((task_id, unit_id, grid, building, done_at))
    # hazards found on patrols: two of the last weeks' being rectified, three earlier ones rectified and checked
    recent = sorted((p for p in done_patrols if p[3] and p[1] not in late_units), key=lambda p: p[4], reverse=True)
    opened = recent[:2]
    earlier = sorted((p for p in done_patrols if now - timedelta(days=150) < p[4] and p not in opened),
                     key=lambda p: p[0])
    found_on = opened + rnd.sample(earlier, min(3, len(earlier)))
    for i, (patrol_id, unit_id, grid, building, found) in enumerate(found_on):
        item, label, category, note = HAZARDS[i % len(HAZARDS)]
        fixed = i >= len(opened)
        task("hazard", "high", grid, building, unit_id, found, max(found + timedelta(days=30), now + timedelta(days=9)),
             state="closed" if fixed else "accepted", resolution="fixed" if fixed else None,
             closed=found + timedelta(days=6) if fixed else None, accepted=found + timedelta(hours=3),
             source=patrol_id,
                      detail={"source": "patrol", "patrol": patrol_id, "item": item, "label": label,
                              "category": category, "note": note, "photos": [], "unit": unit_id})
        conn.execute("UPDATE patrols SET hazards = 1, results = %s WHERE task_id = %s",
                     (json.dumps([{**c, "result": "hazard" if c["id"] == item else "ok",
                                   "note": note if c["id"] == item else None, "photos": []} for c in CHECKLIST]),
                      patrol_id))
    # alerts: a critical fire alarm, a high one and a normal one, each with its task
    buildings = [b for (b,) in conn.execute(
        "SELECT b.id FROM buildings b JOIN grids g ON g.id = b.grid_id JOIN communities c ON c.id = g.community_id"
        " WHERE c.street_id = %s AND b.lat IS NOT NULL ORDER BY b.id", (street,))]
    for severity, alert_type, building in (("critical", "fire_alarm", buildings[7]),
                                           ("high", "sprinkler_low", buildings[2]),
                                           ("normal", "light_fault", buildings[10])):
        row = conn.execute("SELECT d.id, b.grid_id FROM devices d JOIN buildings b ON b.id = d.building_id"
                           " WHERE d.building_id = %s ORDER BY d.id LIMIT 1", (building,)).fetchone()
        if row is None:
            continue
        device, grid = row
        at = now - timedelta(minutes=rnd.randrange(3, 40))
        alert_id = f"al-demo-{severity}"
        task_id = task(alert_type, severity, grid, building, None, at, at + timedelta(minutes=30))
        conn.execute("UPDATE tasks SET device_id = %s WHERE id = %s", (device, task_id))
        conn.execute("INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, state, first_seen,"
                     " last_seen, task_id) VALUES (%s, %s, %s, %s, %s, %s, 'active', %s, %s, %s)",
                     (alert_id, device, building, grid, alert_type, severity, at, at, task_id))
        conn.execute("INSERT INTO task_alerts (task_id, alert_id) VALUES (%s, %s)", (task_id, alert_id))


def serve(settings: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    import socket

    from gridhub.api.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def shoot(url: str, who: str, password: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(viewport={"width": 1440, "height": 1900}, locale="zh-CN",
                                      timezone_id="Asia/Shanghai", device_scale_factor=1)
        page = context.new_page()
        page.goto(url + "/")
        page.fill("input[name=username]", who)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.locator("[data-testid=map-marker]").first.wait_for(timeout=30_000)
        page.locator("[data-testid=unit-marker]").first.wait_for(timeout=30_000)
        page.locator("[data-testid=patrol-progress], [data-testid=patrols-error]").first.wait_for(timeout=30_000)
        page.locator("[data-testid=live]").filter(has_text="实时").wait_for(timeout=30_000)
        page.wait_for_timeout(800)
        top = page.locator("#bmap").bounding_box()
        tasks = page.locator("#tasks").bounding_box()
        patrols = page.locator("#patrols").bounding_box()
        assert top and tasks and patrols
        bottom = max(tasks["y"] + tasks["height"], patrols["y"] + patrols["height"])
        bottom = min(bottom, top["y"] + 1100)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), clip={"x": 0, "y": top["y"] - 12, "width": 1440,
                                             "height": bottom - top["y"] + 24})
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "board-map.png")
    parser.add_argument("--who", default="s-001", help="who logs in (default: the street officer of 厦港街道)")
    args = parser.parse_args()

    from gridhub.auth import set_password
    from gridhub.db import migrate
    from gridhub.demo_run import demo_registry
    from gridhub.registry import import_registry
    from gridhub.settings import Settings

    name = f"gridhub_shot_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_db(ADMIN_URL, name)
    server = None
    try:
        migrate(url)
        now = datetime.now(UTC)
        with psycopg.connect(url) as conn:
            import_registry(conn, demo_registry(now.astimezone(ZONE).date()))
            password = "shot-" + uuid.uuid4().hex
            set_password(conn, args.who, password)
            street = conn.execute("SELECT street_id FROM workers WHERE id = %s", (args.who,)).fetchone()
            seed(conn, (street and street[0]) or "xiagang", now)
            conn.commit()
        with tempfile.TemporaryDirectory() as work:
            settings = Settings(database_url=url, data_dir=Path(work) / "data", secret_key="shot-" + "s" * 48,
                                instance_id=f"shot{os.getpid()}")
            base, server, thread = serve(settings)
            try:
                shoot(base, args.who, password, args.out)
            finally:
                server.should_exit = True
                thread.join(10)
        print(f"wrote {args.out}")
        return 0
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
