"""alerts/partitions.py: where a partition's sessions subscribe on each broker, their client ids and the login of
the NATS sessions, and a received topic back to its device: what decides which alerts process sees which device."""

from __future__ import annotations

from gridhub.alerts.partitions import (
    device_and_channel,
    partition_of,
    session_name,
    session_subscriptions,
    session_url,
)
from gridhub.services.nats import NatsUser, device_partition, status_reader
from gridhub.settings import Settings

HUB_URL = "mqtt://gridhub-hub:s3cret@10.0.0.1:1883,10.0.0.2:1883,10.0.0.3:1883"


def _settings(broker: str, partitions: int) -> Settings:
    return Settings(mqtt_url=HUB_URL, broker=broker, partitions=partitions)  # type: ignore[arg-type]


def test_on_mosquitto_one_partition_takes_every_devices_topics() -> None:
    s = _settings("mosquitto", 1)
    assert session_subscriptions(s, 0, "events") == [("gridhub/v1/devices/+/event", 1), ("gridhub/v1/devices/+/status", 1)]
    assert session_subscriptions(s, 0, "telemetry") == [("gridhub/v1/devices/+/telemetry", 1)]
    assert session_name(s, 0, "events") == "gridhub-alerts-p0-events"
    assert session_url(s) == HUB_URL
    assert device_and_channel(s, "gridhub/v1/devices/sa-0001/event") == ("sa-0001", "event")
    assert partition_of("sa-0001", 1) == 0


def test_on_nats_a_partition_takes_its_subjects_and_the_unmapped_ones_as_the_subscribe_only_user() -> None:
    s = _settings("nats", 4)
    assert session_subscriptions(s, 2, "events") == [
        ("gridhub/v1/part/2/devices/+/event", 1), ("gridhub/v1/part/2/devices/+/status", 1),
        ("gridhub/v1/devices/+/event", 1), ("gridhub/v1/devices/+/status", 1)]
    assert session_subscriptions(s, 2, "telemetry") == [
        ("gridhub/v1/part/2/devices/+/telemetry", 1), ("gridhub/v1/devices/+/telemetry", 1)]
    # the same name in every instance (a new holder resumes the session), with a tag no device can guess
    events = session_name(s, 2, "events")
    assert events.startswith("gridhub-alerts-p2-events-") and events == session_name(s, 2, "events")
    assert events != session_name(s, 2, "telemetry") and events != session_name(s, 3, "events")
    other_hub = Settings(mqtt_url=HUB_URL.replace("s3cret", "other"), broker="nats", partitions=4)
    assert session_name(other_hub, 2, "events") != events
    # the hub's subscribe-only user in DEVICES, same password and nodes
    reader = status_reader(NatsUser("gridhub-hub", "s3cret")).user
    assert session_url(s) == f"mqtt://{reader}:s3cret@10.0.0.1:1883,10.0.0.2:1883,10.0.0.3:1883"
    # a partitioned topic and an unmapped one both name the device
    k = device_partition("sa-0001", 4)
    assert partition_of("sa-0001", 4) == k
    assert device_and_channel(s, f"gridhub/v1/part/{k}/devices/sa-0001/telemetry") == ("sa-0001", "telemetry")
    assert device_and_channel(s, "gridhub/v1/devices/sa-0001/status") == ("sa-0001", "status")
    assert device_and_channel(s, "gridhub/v1/hub/x/drained") == ("", "")
