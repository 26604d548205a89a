# ruff: noqa: F811
"""`start`, `end` and `type` on GET /api/v1/tasks and /api/v1/alerts (CONTRACT §7, issue 14): bounds (start
inclusive, end exclusive, on `opened_at` / `first_seen`), type lists, pages under the filters, 422s, scope."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from apitools import all_pages, api, as_, bearer, client, make_incident, tokens  # noqa: F401

from gridhub.alerts.rules import default_rules_text
from gridhub.api.routes_alerts import ALERT_TYPES
from gridhub.api.routes_tasks import TASK_TYPES
from gridhub.labels import TYPE_NAMES

SHANGHAI = timezone(timedelta(hours=8))


def rfc(t: datetime) -> str:
    return t.isoformat()


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["id"] for i in items]


def incident_at(db_url: str, at: datetime, *, device: str = "sa-0001", grid: str = "g-xg-01", building: str = "b-12",
                assignee: str = "w-001", alert_type: str = "fire_alarm", severity: str = "critical") -> tuple[str, str]:
    """An alert and its task (apitools.make_incident) moved to `at`: opened_at, first_seen, and last_seen an hour
    later (so that first_seen and last_seen differ and the alert list's order is not the range's column)."""
    alert_id, task_id = make_incident(db_url, device, grid, building, assignee, alert_type=alert_type,
                                      severity=severity)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE tasks SET opened_at = %s, last_seen = %s WHERE id = %s", (at, at, task_id))
        conn.execute("UPDATE alerts SET first_seen = %s, last_seen = %s WHERE id = %s",
                     (at, at + timedelta(hours=1), alert_id))
    return alert_id, task_id


@pytest.fixture(scope="module")
def window(db_url: str) -> dict[str, Any]:
    """A day far from every other test's data (a random day of 2031), and incidents around its edges: in g-xg-01
    at the start exactly, 1 µs before the end, at the end exactly (out), 1 µs before the start (out), two in the
    middle of other types; one in g-xg-02 in the middle."""
    start = datetime(2031, 1, 1, tzinfo=SHANGHAI) + timedelta(days=random.randrange(360))
    end = start + timedelta(days=1)
    us = timedelta(microseconds=1)
    made = {
        "at_start": incident_at(db_url, start),
        "before_end": incident_at(db_url, end - us),
        "at_end": incident_at(db_url, end),
        "before_start": incident_at(db_url, start - us),
        "light": incident_at(db_url, start + timedelta(hours=6), device="sl-0001", alert_type="light_fault",
                             severity="normal"),
        "offline": incident_at(db_url, start + timedelta(hours=7), device="sl-0001", alert_type="device_offline",
                               severity="normal"),
        "g2": incident_at(db_url, start + timedelta(hours=12), device="sa-0201", grid="g-xg-02", building="b-20",
                          assignee="w-003", alert_type="exit_blocked", severity="high"),
    }
    return {"start": start, "end": end, **made}


def task_ids(window: dict[str, Any], *names: str) -> set[str]:
    return {window[n][1] for n in names}


def alert_ids(window: dict[str, Any], *names: str) -> set[str]:
    return {window[n][0] for n in names}


IN_G1 = ("at_start", "before_end", "light", "offline")


def test_start_is_inclusive_and_end_exclusive(client: httpx.Client, tokens: dict[str, str],
                                              window: dict[str, Any]) -> None:
    h = bearer(tokens["w-002"])  # the head of g-xg-01
    params = {"start": rfc(window["start"]), "end": rfc(window["end"])}
    assert set(ids(all_pages(client, "/api/v1/tasks", h, **params))) == task_ids(window, *IN_G1)
    assert set(ids(all_pages(client, "/api/v1/alerts", h, **params))) == alert_ids(window, *IN_G1)
    # the same instants in another offset, and Z, mean the same range
    utc = {"start": window["start"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
           "end": window["end"].astimezone(timezone(timedelta(hours=-5))).isoformat()}
    assert set(ids(all_pages(client, "/api/v1/tasks", h, **utc))) == task_ids(window, *IN_G1)
    # each bound alone
    after = set(ids(all_pages(client, "/api/v1/tasks", h, start=rfc(window["end"]))))
    assert window["at_end"][1] in after and not after & task_ids(window, *IN_G1, "before_start")
    before = set(ids(all_pages(client, "/api/v1/alerts", h, end=rfc(window["start"]))))
    assert window["before_start"][0] in before and not before & alert_ids(window, *IN_G1, "at_end")
    # the alert range is on first_seen, not on last_seen (an hour later here)
    late = {"start": rfc(window["end"]), "end": rfc(window["end"] + timedelta(hours=2))}
    assert set(ids(all_pages(client, "/api/v1/alerts", h, **late))) == alert_ids(window, "at_end")


def test_type_takes_one_type_or_a_comma_list(client: httpx.Client, tokens: dict[str, str],
                                             window: dict[str, Any]) -> None:
    h = bearer(tokens["b-001"])
    params = {"start": rfc(window["start"]), "end": rfc(window["end"])}
    assert set(ids(all_pages(client, "/api/v1/tasks", h, type="light_fault", **params))) == task_ids(window, "light")
    assert set(ids(all_pages(client, "/api/v1/alerts", h, type="light_fault, device_offline", **params))) == \
        alert_ids(window, "light", "offline")
    assert set(ids(all_pages(client, "/api/v1/tasks", h, type="fire_alarm,exit_blocked", **params))) == \
        task_ids(window, "at_start", "before_end", "g2")
    assert all_pages(client, "/api/v1/tasks", h, type="patrol", **params) == []  # known (§7), none yet
    # with the other filters: AND
    assert set(ids(all_pages(client, "/api/v1/tasks", h, type="fire_alarm,light_fault", severity="normal",
                             **params))) == task_ids(window, "light")
    assert set(ids(all_pages(client, "/api/v1/alerts", h, type="fire_alarm,exit_blocked", grid="g-xg-02",
                             **params))) == alert_ids(window, "g2")


@pytest.mark.parametrize("path", ["/api/v1/tasks", "/api/v1/alerts"])
def test_pages_under_the_filters_lose_and_double_nothing(client: httpx.Client, tokens: dict[str, str],
                                                         window: dict[str, Any], path: str) -> None:
    h = bearer(tokens["a-001"])
    params: dict[str, Any] = {"start": rfc(window["start"]), "end": rfc(window["end"]),
                              "type": "fire_alarm,light_fault,device_offline", "limit": 2}
    first = client.get(path, headers=h, params=params).json()
    assert len(first["items"]) == 2 and first["next"]
    second = client.get(path, headers=h, params={**params, "cursor": first["next"]}).json()
    assert len(second["items"]) == 2 and second["next"] is None
    got = ids(first["items"]) + ids(second["items"])
    want = task_ids(window, *IN_G1) if path.endswith("tasks") else alert_ids(window, *IN_G1)
    assert len(got) == len(set(got)) and set(got) == want
    key = "opened_at" if path.endswith("tasks") else "last_seen"
    stamps = [(datetime.fromisoformat(i[key]), i["id"]) for i in first["items"] + second["items"]]
    assert stamps == sorted(stamps, reverse=True)  # the list's own order, across the two pages


@pytest.mark.parametrize("path", ["/api/v1/tasks", "/api/v1/alerts"])
@pytest.mark.parametrize(("params", "words"), [
    ({"start": "2031-01-01T00:00:00"}, ["start", "no offset"]),
    ({"end": "2031-01-01T00:00:00.5"}, ["end", "no offset"]),
    ({"start": "2031-01-01T00:00:00 08:00"}, ["start", "%2B"]),
    ({"start": "1790000000"}, ["start", "RFC 3339"]),
    ({"start": "2031-01-01"}, ["start", "RFC 3339"]),
    ({"end": "2031-02-30T00:00:00+08:00"}, ["end", "not a valid time"]),
    ({"start": "2031-01-02T00:00:00+08:00", "end": "2031-01-01T16:00:00Z"}, ["start", "before end"]),  # equal
    ({"start": "2031-01-02T00:00:00+08:00", "end": "2031-01-01T00:00:00+08:00"}, ["start", "before end"]),
    ({"type": "fire"}, ["type", "fire", "fire_alarm", "device_offline"]),
    ({"type": "fire_alarm,nope"}, ["type", "nope"]),
    ({"type": ","}, ["type", "empty"]),
])
def test_bad_filters_are_422_saying_why(client: httpx.Client, tokens: dict[str, str], path: str,
                                        params: dict[str, str], words: list[str]) -> None:
    r = client.get(path, params=params, **as_(tokens, "b-001"))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail


def test_known_types_name_each_other_and_the_rule_book(client: httpx.Client, tokens: dict[str, str]) -> None:
    r = client.get("/api/v1/tasks", params={"type": "nope"}, **as_(tokens, "w-001"))
    assert all(t in r.json()["detail"] for t in ("patrol", "hazard", "recheck", "noisy_device"))
    assert set(yaml.safe_load(default_rules_text())["severity"]) == set(ALERT_TYPES)
    assert set(TASK_TYPES) == set(TYPE_NAMES)  # every type the notifications name is a type the lists filter on
    assert "patrol" not in ALERT_TYPES


def test_filters_do_not_widen_scope(client: httpx.Client, tokens: dict[str, str], window: dict[str, Any]) -> None:
    params = {"start": rfc(window["start"]), "end": rfc(window["end"])}
    g2_task, g2_alert = window["g2"][1], window["g2"][0]
    for wid in ("w-001", "w-002"):  # g-xg-01's worker and head
        for extra in ({}, {"type": "exit_blocked"}, {"type": "exit_blocked", "limit": 1}):
            tasks = ids(all_pages(client, "/api/v1/tasks", bearer(tokens[wid]), **params, **extra))
            alerts = ids(all_pages(client, "/api/v1/alerts", bearer(tokens[wid]), **params, **extra))
            assert g2_task not in tasks and g2_alert not in alerts, (wid, extra)
        r = client.get("/api/v1/tasks", params={**params, "grid": "g-xg-02"}, **as_(tokens, wid))
        assert r.status_code == 403
    # g-xg-02's worker sees it through the same filters
    assert ids(all_pages(client, "/api/v1/tasks", bearer(tokens["w-003"]), type="exit_blocked", **params)) == \
        [g2_task]
    assert ids(all_pages(client, "/api/v1/alerts", bearer(tokens["w-003"]), type="exit_blocked", **params)) == \
        [g2_alert]
    # w-001 only sees their own grid's tasks of the day (and any task assigned to them, here all in g-xg-01)
    mine = set(ids(all_pages(client, "/api/v1/tasks", bearer(tokens["w-001"]), **params)))
    assert mine == task_ids(window, *IN_G1)


def test_a_task_assigned_outside_the_grid_is_still_filtered_by_time(client: httpx.Client, tokens: dict[str, str],
                                                                     window: dict[str, Any], db_url: str) -> None:
    """Scope's OR (tasks assigned to me anywhere) must stay inside the other conditions, not beside them."""
    _, task_id = incident_at(db_url, window["start"] - timedelta(days=3), device="sa-0201", grid="g-xg-02",
                             building="b-20", assignee="w-001", alert_type="exit_blocked", severity="high")
    h = bearer(tokens["w-001"])
    params = {"start": rfc(window["start"]), "end": rfc(window["end"])}
    assert task_id not in ids(all_pages(client, "/api/v1/tasks", h, **params))
    assert task_id not in ids(all_pages(client, "/api/v1/tasks", h, type="light_fault"))
    assert task_id in ids(all_pages(client, "/api/v1/tasks", h, type="exit_blocked"))


def test_the_alert_range_has_its_index(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'alerts_first_seen_idx'").fetchone()
    assert row is not None and "(first_seen)" in row[0]
