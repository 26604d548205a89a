# ruff: noqa: F811
"""The live stream: alert and task changes in the caller's scope only, `id:` from the change log, resume by
Last-Event-ID without a gap."""

from __future__ import annotations

import json
import queue

import httpx
import psycopg
import pytest
from apitools import SseEvent, SseReader, api, bearer, make_incident, tokens  # noqa: F401
from psycopg.types.json import Jsonb

from gridhub.alerts import changes
from gridhub.api import routes_stream
from gridhub.db import CHANGES_CHANNEL


def stream(api: object, token: str, **kw: str) -> SseReader:
    return SseReader(f"{api.url}/api/v1/stream", params={"access_token": token, **kw})  # type: ignore[attr-defined]


def entity(e: SseEvent) -> str:
    return str(json.loads(e.data)["id"])


def test_a_grid_worker_never_receives_another_grids_alert(api: object, tokens: dict[str, str], db_url: str) -> None:
    worker = stream(api, tokens["w-001"])
    bureau = stream(api, tokens["b-001"])
    try:
        assert worker.status == 200 and bureau.status == 200
        other_alert, other_task = make_incident(db_url, "sp-0201", "g-xg-02", "b-20", "w-003",
                                                alert_type="sprinkler_high", severity="high")
        own_alert, own_task = make_incident(db_url, "sa-0002", "g-xg-01", "b-12", "w-001",
                                            alert_type="tamper", severity="high")
        # changes are delivered in id order, so seeing the later own task means the other grid's were passed over
        seen = worker.until(lambda e: e.event == "task" and entity(e) == own_task)
        assert {entity(e) for e in seen}.isdisjoint({other_alert, other_task})
        assert own_alert in {entity(e) for e in seen}
        for e in seen:
            assert json.loads(e.data)["grid_id"] == "g-xg-01" and e.id and e.id.isdigit()
        ids = [int(e.id or 0) for e in seen]
        assert ids == sorted(ids)
        everything = bureau.until(lambda e: e.event == "task" and entity(e) == own_task)
        assert {other_alert, other_task, own_alert, own_task} <= {entity(e) for e in everything}
    finally:
        worker.close()
        bureau.close()


def test_last_event_id_resumes_without_a_gap(api: object, tokens: dict[str, str], db_url: str) -> None:
    first = stream(api, tokens["s-001"])
    try:
        _, task_a = make_incident(db_url, "sl-0001", "g-xg-01", "b-12", "w-001", alert_type="camera_obstructed",
                                  severity="normal")
        got = first.until(lambda e: e.event == "task" and entity(e) == task_a)
        last_id = got[-1].id
    finally:
        first.close()
    # while the phone is away: three more changes, one in each grid and an acknowledgement
    made = [make_incident(db_url, "sa-0201", "g-xg-02", "b-20", "w-003", alert_type="tamper", severity="high"),
            make_incident(db_url, "cam-0001", "g-xg-01", "b-12", "w-001", alert_type="exit_blocked",
                          severity="high")]
    with psycopg.connect(db_url) as conn:
        with changes.UnitOfWork(conn) as uow:
            conn.execute("UPDATE alerts SET acked = true WHERE id = %s", (made[0][0],))
            uow.stage_alert(made[0][0])
        expected = [r[0] for r in conn.execute("SELECT id FROM changes WHERE id > %s ORDER BY id", (int(last_id or 0),))]
    for how in ("header", "query"):
        if how == "header":
            resumed = SseReader(f"{api.url}/api/v1/stream",  # type: ignore[attr-defined]
                                headers={**bearer(tokens["s-001"]), "Last-Event-ID": str(last_id)})
        else:
            resumed = stream(api, tokens["s-001"], last_event_id=str(last_id))
        try:
            got = resumed.until(lambda e: int(e.id or 0) >= expected[-1])
            assert [int(e.id or 0) for e in got] == expected
            assert [e.event for e in got][-1] == "alert" and json.loads(got[-1].data)["acked"] is True
        finally:
            resumed.close()


def test_stream_refuses_bad_tokens(api: object) -> None:
    with httpx.Client(base_url=api.url) as client:  # type: ignore[attr-defined]
        assert client.get("/api/v1/stream").status_code == 401
        assert client.get("/api/v1/stream", params={"access_token": "nope"}).status_code == 401
        assert client.get("/api/v1/stream", headers=bearer("nope")).status_code == 401


def test_a_change_committed_after_a_later_one_is_not_skipped(api: object, tokens: dict[str, str], db_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_stream, "HOLE_GRACE_S", 300.0)  # this test decides when the hole fills
    reader = stream(api, tokens["b-001"])
    insert = ("INSERT INTO changes (kind, entity_id, grid_id, payload) VALUES ('alert', %s, 'g-xg-01', %s)"
              " RETURNING id")
    try:
        with psycopg.connect(db_url) as slow, psycopg.connect(db_url, autocommit=True) as fast:
            late = slow.execute(insert, ("late", Jsonb({"id": "late", "grid_id": "g-xg-01"}))).fetchone()
            early = fast.execute(insert, ("early", Jsonb({"id": "early", "grid_id": "g-xg-01"}))).fetchone()
            assert late and early and late[0] < early[0]
            fast.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, str(early[0])))
            with pytest.raises(queue.Empty):  # the committed change waits behind the open transaction's id
                reader.next(timeout=3)
            slow.commit()
            fast.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, str(late[0])))
        got = reader.until(lambda e: entity(e) == "early")
        assert [(entity(e), int(e.id or 0)) for e in got] == [("late", late[0]), ("early", early[0])]
    finally:
        reader.close()
