"""Deliveries (CONTRACT §6) on the real database: planned in the change's transaction, routed by severity and
level, fallback to the next level until someone accepts, retries, storms rolled up, drills, quiet hours, and
nothing sent for changes made before notifications were configured.

The channels here are recording stand-ins of the vendors (outside our control); the vendors' own request
formats and signatures are tested against local stand-ins in test_notify_channels.py, and the whole path with
real processes in test_notify_processes.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gridhub.alerts import changes, records, tasks
from gridhub.alerts.notify import plan
from gridhub.alerts.notify.message import Answer, Message
from gridhub.alerts.notify.sender import Sender
from gridhub.alerts.rules import load_rules
from gridhub.auth import Principal
from gridhub.notifyfile import parse
from gridhub.settings import get_settings

RULES = load_rules()
NOW = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai: outside quiet hours

NOTIFY_YAML = """
channels:
  push: {type: webpush, vapid_private_key_file: /nonexistent/vapid.pem, subject: "mailto:ops@example.org"}
  wecom: {type: wecom_robot, url: "https://qyapi.example/cgi-bin/webhook/send?key=k"}
  sms: {type: sms, provider: http, url: "https://sms.example/send"}
  hook: {type: webhook, url: "https://city.example/hook", secret: s3cret}
  dt: {type: dingtalk_robot, url: "https://oapi.example/robot/send?access_token=t", secret: SEC}
routes:
  critical: {assignee: [push, wecom, sms], level1: [sms], level2: [sms, hook], level3: [dt]}
  high: {assignee: [push, wecom], level1: [wecom]}
  normal: {assignee: [push, sms]}
  low: {assignee: [sms], quiet_hours: "22:00-07:00"}
fallback_after_s: {critical: 60, high: 600}
"""


class Recorder:
    """A vendor stand-in implementing the Channel protocol: records what it is given, answers as told."""

    def __init__(self, name: str, type_: str) -> None:
        self.name, self.type = name, type_
        self.sent: list[Message] = []
        self.answers: list[Answer] = []  # answered first, in order; then ok
        self.lock = threading.Lock()

    def send(self, msg: Message) -> Answer:
        with self.lock:
            self.sent.append(msg)
            return self.answers.pop(0) if self.answers else Answer(ok=True, detail=f"ok {msg.delivery_id}")


@pytest.fixture(scope="module")
def url(make_registry_database: Callable[[], str]) -> str:
    u = make_registry_database()
    with psycopg.connect(u) as conn:
        conn.execute("UPDATE workers SET phone = '13800000002', wecom_userid = 'lisi' WHERE id = 'w-002'")
        conn.execute("UPDATE workers SET phone = '13800000009' WHERE id = 's-001'")
        conn.execute("INSERT INTO push_subscriptions (id, worker_id, endpoint, p256dh, auth)"
                     " VALUES ('ps-1', 'w-001', 'https://push.example/1', 'k', 'a')")
    return u


@pytest.fixture
def notify_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "notify.yaml"
    path.write_text(NOTIFY_YAML, encoding="utf-8")
    monkeypatch.setenv("GRIDHUB_NOTIFY_FILE", str(path))
    get_settings.cache_clear()
    plan.reset_config()
    yield path
    plan.reset_config()
    monkeypatch.delenv("GRIDHUB_NOTIFY_FILE", raising=False)
    get_settings.cache_clear()


class Hub:
    """The module database, a clock the test moves, recording channels and a sender on them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.now = NOW
        self.channels = {n: Recorder(n, t) for n, t in (("push", "webpush"), ("wecom", "wecom_robot"),
                                                         ("sms", "sms"), ("hook", "webhook"),
                                                         ("dt", "dingtalk_robot"))}
        self.sender = Sender(url, parse(NOTIFY_YAML), channels=self.channels, clock=lambda: self.now)  # type: ignore[arg-type]
        self.conn.execute("DELETE FROM notify_deliveries")

    def open_task(self, severity: str = "critical", *, device: str = "sa-0001", kind: str = "fire_alarm",
                  drill: bool = False, building: str = "b-12", grid: str = "g-xg-01") -> str:
        alert_id = tasks.new_id("al", self.now)
        with changes.UnitOfWork(self.conn) as uow:
            self.conn.execute(
                "INSERT INTO alerts (id, device_id, building_id, grid_id, type, severity, first_seen, last_seen, state)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'cleared')",  # cleared: many tasks per device here
                (alert_id, device, building, grid, kind, severity, self.now, self.now))
            task_id, opened = tasks.open_or_join_task(
                uow, alert_id=alert_id, alert_type=kind, severity=severity, incident_key=f"t:{alert_id}",
                grid_id=grid, building_id=building, device_id=device, seen=self.now, now=self.now, rules=RULES,
                note="test", drill=drill)
        assert opened
        return task_id

    def act(self, task_id: str, action: str, who: Principal, body: dict[str, Any] | None = None) -> None:
        with changes.UnitOfWork(self.conn) as uow:
            tasks.apply_action(uow, task_id, action, who, body, now=self.now, rules=RULES)

    def escalate(self, task_id: str) -> None:
        with changes.UnitOfWork(self.conn) as uow:
            tasks.escalate(uow, task_id, self.now, RULES)

    def drain(self) -> None:
        while self.sender.run_once():
            pass

    def rows(self, task_id: str) -> list[dict[str, Any]]:
        cur = self.conn.cursor(row_factory=psycopg.rows.dict_row)
        return cur.execute("SELECT * FROM notify_deliveries WHERE task_id = %s ORDER BY created_at, channel,"
                           " recipient", (task_id,)).fetchall()

    def history(self, task_id: str) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT action, note FROM task_history WHERE task_id = %s ORDER BY id", (task_id,))]

    def close(self) -> None:
        self.sender.pool.shutdown()
        self.conn.close()


@pytest.fixture
def hub(url: str, notify_file: Path) -> Iterator[Hub]:
    h = Hub(url)
    yield h
    h.close()


def principal(conn: psycopg.Connection[Any], wid: str) -> Principal:
    from psycopg.rows import namedtuple_row

    from gridhub.auth import PRINCIPAL_SQL, principal_from_row

    row = conn.cursor(row_factory=namedtuple_row).execute(PRINCIPAL_SQL, (wid,)).fetchone()
    return principal_from_row(row)


def sent_to(rec: Recorder, task_id: str) -> list[Message]:
    return [m for m in rec.sent if m.task["id"] == task_id or task_id in m.rolled_up]


# ---------------------------------------------------------------- configured or not

def test_nothing_is_planned_or_sent_without_a_notify_file(url: str) -> None:
    get_settings.cache_clear()
    plan.reset_config()
    assert get_settings().notify_file is None
    h = Hub(url)
    try:
        task_id = h.open_task()
        assert h.rows(task_id) == []
        assert h.sender.run_once() == 0
    finally:
        h.close()


def test_changes_from_before_notifications_were_configured_are_never_sent(
        url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    plan.reset_config()
    h = Hub(url)
    try:
        before = [h.open_task("normal", kind="device_offline", device=f"dev-{i}") for i in range(1000)]
        assert h.conn.execute("SELECT count(*) FROM changes WHERE entity_id = ANY(%s)", (before,)).fetchone()[0] >= 1000
        path = tmp_path / "notify.yaml"
        path.write_text(NOTIFY_YAML, encoding="utf-8")
        monkeypatch.setenv("GRIDHUB_NOTIFY_FILE", str(path))
        get_settings.cache_clear()
        plan.reset_config()
        h.drain()
        assert sum(len(r.sent) for r in h.channels.values()) == 0
        after = h.open_task("critical")
        h.drain()
        assert [m.task["id"] for m in h.channels["sms"].sent] == [after]
    finally:
        h.close()
        monkeypatch.delenv("GRIDHUB_NOTIFY_FILE", raising=False)
        get_settings.cache_clear()
        plan.reset_config()


# ---------------------------------------------------------------- routing

def test_a_critical_task_reaches_its_assignee_on_every_channel_at_once(hub: Hub) -> None:
    task_id = hub.open_task("critical")
    rows = hub.rows(task_id)
    now_rows = [r for r in rows if not r["fallback"]]
    assert {(r["channel"], r["recipient"]) for r in now_rows} == {("push", "w-001"), ("wecom", None), ("sms", "w-001")}
    wecom = next(r for r in now_rows if r["channel"] == "wecom")
    assert wecom["mentions"] == ["w-001"]
    change = hub.conn.execute("SELECT max(id) FROM changes WHERE entity_id = %s", (task_id,)).fetchone()[0]
    assert {r["change_id"] for r in now_rows} == {change}  # written with the change, in its transaction
    hub.drain()
    for name in ("push", "wecom", "sms"):
        msgs = sent_to(hub.channels[name], task_id)
        assert len(msgs) == 1, name
        assert "火警" in msgs[0].title and "12号楼" in msgs[0].text and f"#task={task_id}" in msgs[0].link
    assert hub.channels["push"].sent[-1].push_subscriptions[0].endpoint == "https://push.example/1"
    notified = [n for a, n in hub.history(task_id) if a == "notified"]
    assert len(notified) == 3 and all("sent to" in n for n in notified)
    states = {r["channel"]: r["state"] for r in hub.rows(task_id) if not r["fallback"]}
    assert states == {"push": "sent", "wecom": "sent", "sms": "sent"}
    metrics = dict(((n, lab), v) for n, lab, v in hub.conn.execute("SELECT name, labels, value FROM counters"))
    assert metrics[("gridhub_notifications_total", 'channel="sms",result="sent"')] >= 1
    assert metrics[("gridhub_notification_send_seconds_count", 'channel="sms"')] >= 1


def test_not_accepted_in_time_goes_to_the_next_level_until_someone_accepts(hub: Hub) -> None:
    task_id = hub.open_task("critical")
    hub.drain()
    hub.now = NOW + timedelta(seconds=61)
    hub.drain()
    level1 = [m for m in hub.channels["sms"].sent if m.recipient and m.recipient.id == "w-002"]
    assert [m.task["id"] for m in level1] == [task_id]
    assert "网格长" in level1[0].title
    hub.act(task_id, "accept", principal(hub.conn, "w-001"))
    hub.now = NOW + timedelta(seconds=200)
    hub.drain()
    assert not [m for m in hub.channels["sms"].sent if m.recipient and m.recipient.id == "s-001"]
    assert not sent_to(hub.channels["hook"], task_id)
    skipped = [r for r in hub.rows(task_id) if r["route"] == "level2"]
    assert skipped and all(r["state"] == "skipped" and "accepted" in r["answer"] for r in skipped)


def test_escalation_notifies_its_level_once_even_with_a_fallback_pending(hub: Hub) -> None:
    task_id = hub.open_task("critical")
    hub.drain()
    hub.now = NOW + timedelta(seconds=30)
    hub.escalate(task_id)  # the accept deadline's escalation, before the 60 s fallback
    hub.drain()
    hub.now = NOW + timedelta(seconds=90)
    hub.drain()
    to_head = [m for m in hub.channels["sms"].sent if m.recipient and m.recipient.id == "w-002"]
    assert len(to_head) == 1 and to_head[0].event == "task.escalated"


def test_a_group_robot_gets_one_message_naming_the_people(hub: Hub) -> None:
    task_id = hub.open_task("high", kind="tamper")
    hub.drain()
    msgs = sent_to(hub.channels["wecom"], task_id)
    assert len(msgs) == 1 and msgs[0].recipient is None and [p.id for p in msgs[0].mentions] == ["w-001"]
    assert msgs[0].mentions[0].name == "张三"


def test_a_channel_a_person_lacks_is_skipped_not_an_error(hub: Hub) -> None:
    hub.conn.execute("UPDATE workers SET phone = NULL WHERE id = 'w-002'")
    try:
        task_id = hub.open_task("critical")
        hub.now = NOW + timedelta(seconds=61)
        hub.drain()
        head = [r for r in hub.rows(task_id) if r["route"] == "level1"]
        assert [(r["state"], r["answer"]) for r in head] == [("skipped", "w-002 has no phone")]
    finally:
        hub.conn.execute("UPDATE workers SET phone = '13800000002' WHERE id = 'w-002'")


def test_reassign_notifies_the_new_assignee_and_restarts_the_chain(hub: Hub) -> None:
    hub.conn.execute("INSERT INTO workers (id, name, role, phone) VALUES ('w-005', '吴十', 'grid_worker', '13800000005')"
                     " ON CONFLICT DO NOTHING")
    try:
        task_id = hub.open_task("critical")
        hub.conn.execute("INSERT INTO worker_grids VALUES ('w-005', 'g-xg-01') ON CONFLICT DO NOTHING")
        hub.drain()
        hub.now = NOW + timedelta(seconds=40)
        hub.act(task_id, "reassign", principal(hub.conn, "w-002"), {"worker_id": "w-005"})
        hub.drain()
        assert [m.event for m in hub.channels["sms"].sent
                if m.recipient and m.recipient.id == "w-005"] == ["task.changed"]
        hub.now = NOW + timedelta(seconds=61)  # the first chain's level-1 step is gone; the new one is due at 100 s
        hub.drain()
        assert not [m for m in hub.channels["sms"].sent if m.recipient and m.recipient.id == "w-002"]
        hub.now = NOW + timedelta(seconds=101)
        hub.drain()
        assert len([m for m in hub.channels["sms"].sent if m.recipient and m.recipient.id == "w-002"]) == 1
    finally:
        hub.conn.execute("DELETE FROM worker_grids WHERE worker_id = 'w-005'")


# ---------------------------------------------------------------- failures

def test_a_failing_channel_is_retried_with_the_same_delivery_id_while_the_others_go(hub: Hub) -> None:
    hub.channels["sms"].answers = [Answer(ok=False, retry=True, detail="HTTP 500"),
                                   Answer(ok=False, retry=True, detail="timed out")]
    task_id = hub.open_task("critical")
    hub.drain()
    assert len(sent_to(hub.channels["push"], task_id)) == 1  # the entry's other channels are not held back
    sms = next(r for r in hub.rows(task_id) if r["channel"] == "sms" and not r["fallback"])
    assert sms["state"] == "pending" and sms["attempts"] == 1 and sms["due_at"] > hub.now
    for _ in range(3):
        hub.now = max(hub.now, next(r for r in hub.rows(task_id) if r["id"] == sms["id"])["due_at"])
        hub.drain()
    ids = [m.delivery_id for m in sent_to(hub.channels["sms"], task_id) if m.recipient and m.recipient.id == "w-001"]
    assert ids == [sms["id"]] * 3
    final = next(r for r in hub.rows(task_id) if r["id"] == sms["id"])
    assert final["state"] == "sent" and final["attempts"] == 3


def test_a_permanent_refusal_fails_and_says_so_in_history(hub: Hub) -> None:
    hub.channels["sms"].answers = [Answer(ok=False, retry=False, detail="isv.TEMPLATE_MISSING_PARAMETERS")]
    task_id = hub.open_task("critical")
    hub.drain()
    sms = next(r for r in hub.rows(task_id) if r["channel"] == "sms" and not r["fallback"])
    assert sms["state"] == "failed"
    assert any(a == "notified" and "failed" in n and "TEMPLATE" in n for a, n in hub.history(task_id))


def test_a_delivery_whose_sender_died_mid_request_is_sent_again_once_with_its_id(hub: Hub) -> None:
    task_id = hub.open_task("normal", kind="light_fault", device="sl-0001")
    sms = next(r for r in hub.rows(task_id) if r["channel"] == "sms")
    # what a SIGKILL between the claim's commit and the answer leaves behind
    hub.conn.execute("UPDATE notify_deliveries SET state = 'sending', attempts = 1, lease_until = %s"
                     " WHERE task_id = %s", (hub.now + timedelta(seconds=60), task_id))
    hub.drain()
    assert not sent_to(hub.channels["sms"], task_id)  # leased: another sender may still be on it
    hub.now = NOW + timedelta(seconds=61)
    hub.drain()
    assert [m.delivery_id for m in sent_to(hub.channels["sms"], task_id)] == [sms["id"]]
    hub.now = NOW + timedelta(seconds=200)
    hub.drain()
    assert len(sent_to(hub.channels["sms"], task_id)) == 1


# ---------------------------------------------------------------- storms, drills, quiet hours

def test_a_storm_gives_no_person_more_than_3_messages_a_minute_and_loses_no_task(hub: Hub) -> None:
    ids = [hub.open_task("normal", kind="device_offline", device=f"storm-{i:03d}") for i in range(500)]
    critical = None
    for step in range(0, 240, 5):
        hub.now = NOW + timedelta(seconds=step)
        if step == 30:
            critical = hub.open_task("critical", device="sa-0002")
        hub.drain()
    assert critical is not None
    for name in ("push", "sms"):
        rec = hub.channels[name]
        mine = [m for m in rec.sent if m.severity != "critical"]
        times = sorted(datetime.fromisoformat(m.sent_at) for m in mine)
        for i, t in enumerate(times):
            assert len([u for u in times[i:] if u - t < timedelta(seconds=60)]) <= 3, name
        carried = set()
        for m in mine:
            carried.update(m.rolled_up or [m.task["id"]])
        assert carried == set(ids), name
        rollups = [m for m in mine if m.rolled_up]
        assert rollups and any("12号楼" in line and "台设备离线" in line for line in rollups[0].lines)
        crit = [m for m in rec.sent if m.task["id"] == critical and m.event == "task.opened"]
        assert len(crit) == 1 and datetime.fromisoformat(crit[0].sent_at) == NOW + timedelta(seconds=30)
    states = hub.conn.execute("SELECT state, count(*) FROM notify_deliveries WHERE task_id = ANY(%s) GROUP BY state",
                              (ids,)).fetchall()
    assert dict(states) == {"sent": 1000}


def test_a_drill_is_marked_and_never_texted(hub: Hub) -> None:
    task_id = hub.open_task("critical", drill=True)
    hub.drain()
    assert not sent_to(hub.channels["sms"], task_id)
    sms = next(r for r in hub.rows(task_id) if r["channel"] == "sms" and not r["fallback"])
    assert (sms["state"], sms["answer"]) == ("skipped", "drill: never by SMS")
    push = sent_to(hub.channels["push"], task_id)
    assert len(push) == 1 and push[0].title.startswith("【演练】") and push[0].drill


def test_low_severity_waits_for_the_end_of_quiet_hours(hub: Hub) -> None:
    hub.now = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)  # 23:30 in Asia/Shanghai
    task_id = hub.open_task("low", kind="low_battery")
    row = hub.rows(task_id)[0]
    assert row["due_at"] == datetime(2026, 12, 7, 23, 0, tzinfo=UTC)  # 07:00 the next morning
    hub.drain()
    assert not sent_to(hub.channels["sms"], task_id)
    hub.now = datetime(2026, 12, 7, 23, 0, 1, tzinfo=UTC)
    hub.drain()
    assert len(sent_to(hub.channels["sms"], task_id)) == 1


def test_quiet_hours_never_hold_a_critical_alarm(hub: Hub) -> None:
    hub.now = datetime(2026, 12, 7, 15, 30, tzinfo=UTC)
    task_id = hub.open_task("critical")
    hub.drain()
    assert len(sent_to(hub.channels["sms"], task_id)) == 1


def test_a_deactivated_person_is_not_notified(hub: Hub) -> None:
    task_id = hub.open_task("critical")
    hub.conn.execute("UPDATE workers SET active = false WHERE id = 'w-001'")
    try:
        hub.drain()
        assert not sent_to(hub.channels["sms"], task_id)
    finally:
        hub.conn.execute("UPDATE workers SET active = true WHERE id = 'w-001'")


def test_records_place_lookup_is_used_for_messages(hub: Hub) -> None:
    p = records.place_of(hub.conn, "sa-0001")
    assert p is not None
    task_id = hub.open_task("high", kind="tamper")
    hub.drain()
    msg = sent_to(hub.channels["push"], task_id)[0]
    assert msg.place["community"] == "沙坡尾社区" and msg.place["floor"] == 3 and msg.place["place"] == "301 厨房"


def test_metrics_expose_notifications_by_channel_and_result_and_a_send_time_histogram(hub: Hub) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from gridhub.metrics import render_counters

    hub.channels["hook"].answers = [Answer(ok=False, retry=False, detail="HTTP 400")]
    task_id = hub.open_task("critical", drill=True)
    hub.now = NOW + timedelta(seconds=121)
    hub.drain()
    assert sent_to(hub.channels["hook"], task_id)
    text = render_counters(hub.conn.execute("SELECT name, labels, value FROM counters").fetchall())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    totals = {(s.labels["channel"], s.labels["result"]): s.value for s in families["gridhub_notifications"].samples}
    assert totals[("push", "sent")] >= 1 and totals[("sms", "skipped")] >= 1 and totals[("hook", "failed")] >= 1
    hist = families["gridhub_notification_send_seconds"]
    assert hist.type == "histogram"
    inf = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels == {"channel": "push", "le": "+Inf"}]
    count = [s for s in hist.samples if s.name.endswith("_count") and s.labels == {"channel": "push"}]
    assert inf and count and inf[0].value == count[0].value >= 1
    buckets = [s.value for s in hist.samples if s.name.endswith("_bucket") and s.labels["channel"] == "push"]
    assert buckets == sorted(buckets)  # cumulative
