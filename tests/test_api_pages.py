# ruff: noqa: F811
"""The two pages are served by the app with everything they load, from the app itself (no CDN, works offline)."""

from __future__ import annotations

import re

import httpx
import pytest
from apitools import api, client  # noqa: F401


@pytest.mark.parametrize("path", ["/", "/worker"])
def test_page_and_everything_it_loads_come_from_the_app(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert 'lang="zh-CN"' in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(ref.startswith("/static/") or ref == "data:," for ref in refs), refs
    for ref in refs:
        if ref.startswith("/static/"):
            asset = client.get(ref)
            assert asset.status_code == 200, ref
            if not ref.startswith("/static/vendor/"):  # our own code fetches nothing from elsewhere
                assert "http://" not in asset.text and "https://" not in asset.text, ref


def test_the_chart_library_ships_with_its_licence(client: httpx.Client) -> None:
    licence = client.get("/static/vendor/uplot/LICENSE")
    assert licence.status_code == 200 and "MIT License" in licence.text
    assert client.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
