"""Publishing the change log to MQTT once per change: a publisher claims unpublished `changes` rows with row
locks (FOR UPDATE SKIP LOCKED), publishes them at QoS 1, and marks them published once the broker has
acknowledged, all in one short transaction.

Two publishers share the work without double-publishing: the priority lane publishes the rows its own
transaction wrote right after commit (`publish_rows`), and the notifier catches up on every row still
unpublished (`catch_up`), whoever claims a row first publishes it. A row whose entity has an earlier row still
unpublished (claimed elsewhere, or written by a transaction the other publisher is handling) waits, so one
alert's or task's changes reach MQTT in log order. Nothing depends on rows becoming visible in id order: a row
committed late is still unpublished and is picked up by the next catch-up.

A crash between the broker's acknowledgement and the commit of the mark publishes that row again after restart
(MQTT QoS 1 is at least once); in normal running each change is published once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import psycopg

from gridhub.db import PUBLISH_WAKE_CHANNEL, connect
from gridhub.protocol import alerts_topic, worker_tasks_topic

log = logging.getLogger("gridhub.alerts.publish")

BATCH = 500
PUBACK_TIMEOUT_S = 10.0
WAKE_CHANNEL = PUBLISH_WAKE_CHANNEL  # wakes the notifiers: rows were left for them (besides changes.CHANNEL)



class PublishFailed(RuntimeError):
    """The broker did not acknowledge a notification in time; its rows stay unpublished and are sent again."""


@dataclass(frozen=True)
class Outcome:
    published: int  # rows published and marked
    deferred: int  # rows left for later: an earlier change of the same entity is not published yet


def topics(prefix: str, kind: str, recipients: list[str]) -> list[str]:
    """Where one change goes: alert changes to the alerts topic, task changes to each recipient's task topic."""
    if kind == "alert":
        return [alerts_topic(prefix)]
    return [worker_tasks_topic(prefix, w) for w in recipients]


def connect_publisher(url: str) -> psycopg.Connection[Any]:
    """A connection for publishing: marks commit without waiting for the disk (a mark lost in a database crash
    means that row is published again, never that it is lost)."""
    conn = connect(url, autocommit=True)
    conn.execute("SET synchronous_commit = off")
    return conn


def publish_rows(conn: psycopg.Connection[Any], client: paho.Client, prefix: str, ids: list[int]) -> Outcome:
    """Publish the given change rows now unless another publisher has them or they must wait for an earlier
    change of the same entity (then a NOTIFY on WAKE_CHANNEL wakes the notifiers, which publish them in order)."""
    if not ids:
        return Outcome(0, 0)
    return _publish(conn, client, prefix, "id = ANY(%s) AND published_at IS NULL ORDER BY id", (ids,), wake=True)


def catch_up(conn: psycopg.Connection[Any], client: paho.Client, prefix: str, limit: int = BATCH) -> Outcome:
    """Publish the oldest unpublished change rows that nobody else is publishing."""
    return _publish(conn, client, prefix, "published_at IS NULL ORDER BY id LIMIT %s", (limit,), wake=False)


def _publish(conn: psycopg.Connection[Any], client: paho.Client, prefix: str, which: str,
             params: tuple[Any, ...], *, wake: bool) -> Outcome:
    with conn.transaction():
        # claim rows; `blocker`: an earlier unpublished change of the same entity that this claim does not have
        rows = conn.execute(
            f"WITH mine AS MATERIALIZED (SELECT id, kind, entity_id, payload, recipients FROM changes WHERE {which}"
            " FOR UPDATE SKIP LOCKED)"
            " SELECT m.id, m.kind, m.entity_id, m.payload::text, m.recipients,"
            " (SELECT min(o.id) FROM changes o WHERE o.entity_id = m.entity_id AND o.published_at IS NULL"
            " AND o.id < m.id AND o.id NOT IN (SELECT id FROM mine)) FROM mine m ORDER BY m.id", params).fetchall()
        if not rows:
            return Outcome(0, 0)
        ready = [r for r in rows if r[5] is None]
        waiting = len(rows) - len(ready)
        if waiting and wake:
            conn.execute("SELECT pg_notify(%s, '')", (WAKE_CHANNEL,))
        if not ready:
            return Outcome(0, waiting)
        sent: list[paho.MQTTMessageInfo] = []
        for _id, kind, _entity, payload, recipients, _ in ready:
            body = payload.encode()
            sent += [client.publish(t, body, qos=1) for t in topics(prefix, kind, list(recipients))]
        for info in sent:
            info.wait_for_publish(timeout=PUBACK_TIMEOUT_S)
            if not info.is_published():
                raise PublishFailed(f"the broker did not acknowledge a notification within {PUBACK_TIMEOUT_S:g} s;"
                                    " the changes stay unpublished and are sent again")
        conn.execute("UPDATE changes SET published_at = now() WHERE id = ANY(%s)", ([r[0] for r in ready],))
    return Outcome(len(ready), waiting)
