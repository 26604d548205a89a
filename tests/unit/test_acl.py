"""Who may publish and subscribe where: the ACL the hub writes from the registry (gridhub/broker.py), as read by
gridhub/services/acl.py with mosquitto's rules (the embedded broker enforces it; mosquitto reads the same file).
A device only under its own topics, a worker's app only its own tasks, the bureau and admins also the alerts."""

from __future__ import annotations

import pytest

from gridhub.broker import WORKER_PREFIX, acl_text
from gridhub.ingest.validate import Device, Rejected, Validator
from gridhub.protocol import DeviceKind, Reason
from gridhub.services.acl import acl_allows

P = "gridhub/v1"
ACL = acl_text(P, "gridhub-hub", [("w-001", "grid_worker"), ("h-001", "grid_head"), ("b-001", "bureau"),
                                  ("a-001", "admin")])


def may_write(user: str | None, topic: str, client_id: str = "c1") -> bool:
    return acl_allows(ACL, user, client_id, topic, "write")


def may_read(user: str | None, topic: str, client_id: str = "c1") -> bool:
    return acl_allows(ACL, user, client_id, topic, "read")


@pytest.mark.parametrize("channel", ["telemetry", "event", "status", "frame", "frame/17"])
def test_a_device_publishes_under_its_own_topics_only(channel: str) -> None:
    assert may_write("sa-0001", f"{P}/devices/sa-0001/{channel}")
    assert not may_write("sa-0001", f"{P}/devices/sa-0002/{channel}")
    assert not may_read("sa-0001", f"{P}/devices/sa-0001/{channel}")  # nor reads back what others see


def test_a_device_reads_its_own_commands_and_cannot_forge_them() -> None:
    assert may_read("sa-0001", f"{P}/devices/sa-0001/command")
    assert not may_write("sa-0001", f"{P}/devices/sa-0001/command")
    assert not may_read("sa-0001", f"{P}/devices/sa-0002/command")


@pytest.mark.parametrize("topic", [f"{P}/devices/sa-0001/other", f"{P}/devices/sa-0001/frame/1/2",
                                   f"{P}/devices/sa-0001", f"{P}/alerts", f"{P}/workers/w-001/tasks", "elsewhere"])
def test_a_device_has_nothing_else(topic: str) -> None:
    assert not may_write("sa-0001", topic) and not may_read("sa-0001", topic)


@pytest.mark.parametrize("topic_filter", [f"{P}/#", f"{P}/devices/+/command", f"{P}/devices/sa-0001/#", "#"])
def test_a_device_cannot_subscribe_to_wildcards_over_others(topic_filter: str) -> None:
    assert not may_read("sa-0001", topic_filter)


def test_a_workers_app_reads_its_own_tasks_only() -> None:
    me = WORKER_PREFIX + "w-001"
    assert may_read(me, f"{P}/workers/w-001/tasks")
    assert not may_read(me, f"{P}/workers/h-001/tasks")
    assert not may_write(me, f"{P}/workers/w-001/tasks")
    assert not may_read(me, f"{P}/alerts")
    assert not may_read(WORKER_PREFIX + "h-001", f"{P}/alerts")  # a grid head sees alerts through its tasks


@pytest.mark.parametrize("wid", ["b-001", "a-001"])
def test_the_bureau_and_admins_also_read_the_alerts(wid: str) -> None:
    assert may_read(WORKER_PREFIX + wid, f"{P}/alerts")
    assert may_read(WORKER_PREFIX + wid, f"{P}/workers/{wid}/tasks")
    assert not may_write(WORKER_PREFIX + wid, f"{P}/alerts")


def test_a_worker_id_without_the_app_prefix_is_no_worker() -> None:
    assert not may_read("w-001", f"{P}/workers/w-001/tasks")


def test_an_app_account_cannot_pose_as_a_device() -> None:
    """The pattern rules give every account its own device topics; for an app account those are topics ingest
    refuses, because '.' cannot appear in a device id."""
    me = WORKER_PREFIX + "w-001"
    topic = f"{P}/devices/{me}/telemetry"
    assert may_write(me, topic)  # what mosquitto's pattern allows...
    v = Validator(P, {me: Device(DeviceKind.SMOKE_ALARM, False)}, readings_days=30)
    out = v.classify(topic, b'{"ts": 1790000000000, "metrics": {"x": 1}}', retained=False, now_ms=1790000000000)
    assert isinstance(out, Rejected) and out.reason == Reason.BAD_TOPIC  # ...ingest never takes as a device's


def test_the_hub_reads_and_writes_every_topic_but_not_the_brokers_own() -> None:
    for topic in (f"{P}/devices/sa-0001/telemetry", f"{P}/devices/sa-0001/command", f"{P}/alerts",
                  f"{P}/workers/w-001/tasks", f"{P}/#"):
        assert may_write("gridhub-hub", topic) and may_read("gridhub-hub", topic)
    assert not may_read("gridhub-hub", "$SYS/broker/uptime")  # '#' does not match '$' topics (MQTT 4.7.2)


def test_anonymous_clients_get_nothing() -> None:
    assert not may_write(None, f"{P}/devices/sa-0001/telemetry")
    assert not may_read(None, f"{P}/devices/sa-0001/command")
    assert not may_read(None, f"{P}/alerts")


def test_an_unknown_account_gets_only_its_own_device_topics() -> None:
    assert may_write("stranger", f"{P}/devices/stranger/telemetry")
    assert not may_write("stranger", f"{P}/devices/sa-0001/telemetry")
    assert not may_read("stranger", f"{P}/alerts")


# ------------------------------------------------------------------ mosquitto's ACL rules

def test_topic_lines_before_any_user_are_for_anonymous_clients() -> None:
    acl = "topic read public/#\nuser alice\ntopic write alice/#\n"
    assert acl_allows(acl, None, "c", "public/news", "read")
    assert not acl_allows(acl, "alice", "c", "public/news", "read")
    assert acl_allows(acl, "alice", "c", "alice/x", "write")
    assert not acl_allows(acl, None, "c", "alice/x", "write")


def test_access_defaults_to_readwrite_and_deny_wins() -> None:
    acl = "user bob\ntopic shared/#\ntopic deny shared/secret\n"
    assert acl_allows(acl, "bob", "c", "shared/a", "read") and acl_allows(acl, "bob", "c", "shared/a", "write")
    assert not acl_allows(acl, "bob", "c", "shared/secret", "read")
    assert not acl_allows(acl, "bob", "c", "shared/secret", "write")


def test_comments_blank_lines_and_other_keywords_are_ignored() -> None:
    acl = "# a comment\n\n  user carol  \nmax_inflight 3\n   topic read a/b\n"
    assert acl_allows(acl, "carol", "c", "a/b", "read")
    assert not acl_allows(acl, "carol", "c", "a/b", "write")


def test_patterns_substitute_the_client_id() -> None:
    acl = "pattern read clients/%c/inbox\n"
    assert acl_allows(acl, "dave", "dave-phone", "clients/dave-phone/inbox", "read")
    assert not acl_allows(acl, "dave", "dave-phone", "clients/other/inbox", "read")
    assert acl_allows(acl, None, "anon-1", "clients/anon-1/inbox", "read")  # %c needs no user name


@pytest.mark.parametrize(("topic_filter", "topic", "matches"), [
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/x/c", False),
    ("a/+", "a", False),  # '+' is exactly one level...
    ("a/+", "a/", True),  # ...which may be empty
    ("a/#", "a", True),  # '#' also matches the parent level
    ("a/#", "a/b/c", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("#", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
])
def test_topic_filters_match_as_in_mqtt(topic_filter: str, topic: str, matches: bool) -> None:
    assert acl_allows(f"user u\ntopic read {topic_filter}\n", "u", "c", topic, "read") is matches
