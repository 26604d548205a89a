"""What the browser tests share (test_browser.py, test_browser_pwa.py): headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright), a phone's browser context, pages whose errors are collected, the log-in
form, and a database with the test registry and a password for each worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import sync_playwright

from gridhub.auth import set_password
from gridhub.db import migrate
from gridhub.registry import import_registry, load_file

CHROMIUM = "/usr/bin/chromium"
DATA = Path(__file__).parent / "data"

if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`)", pytrace=False)


def registered_database(make_database: Callable[[], str], label: str) -> tuple[str, dict[str, str]]:
    """A fresh database with the schema and tests/data/registry.yaml, each worker with the password
    `pw-<id>-<label>`: its URL and the passwords by worker id."""
    url = make_database()
    migrate(url)
    passwords: dict[str, str] = {}
    with psycopg.connect(url) as conn:
        import_registry(conn, load_file(DATA / "registry.yaml"))
        for (wid,) in conn.execute("SELECT id FROM workers ORDER BY id").fetchall():
            passwords[wid] = f"pw-{wid}-{label}"
            set_password(conn, wid, passwords[wid])
    return url, passwords


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium, for a module's `browser` fixture."""
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def phone_context(browser: Any, **kw: Any) -> Any:
    """A phone's browser context (390x844, touch, zh-CN), in Asia/Shanghai unless `timezone_id` says otherwise."""
    return browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                               has_touch=True, locale="zh-CN", timezone_id=kw.pop("timezone_id", "Asia/Shanghai"),
                               **kw)


def watch(page: Any) -> list[str]:
    """The page's errors from now on: uncaught exceptions and console errors (but failed resource loads)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
            and not msg.text.startswith("Failed to load resource") else None)
    return errors


@contextmanager
def watched_page(context: Any) -> Iterator[tuple[Any, list[str]]]:
    """A new page of `context` and its errors (`watch`); the context is closed afterwards."""
    try:
        page = context.new_page()
        yield page, watch(page)
    finally:
        context.close()


def submit_login(page: Any, url: str, user: str, password: str) -> None:
    """Open `url` and send the log-in form it shows."""
    page.goto(url)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
