"""The change log reaches MQTT once per change, on the real database and broker: a change committed after a
later one is still published (the old cursor skipped it for good), two publishers racing never send a change
twice, one entity's changes go out in log order, and writing the log outside a transaction is refused."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from alerts_support import Listener, add_devices
from polling import wait_for
from psycopg.types.json import Jsonb

from gridhub.alerts import changes, publish, records
from gridhub.alerts.rules import load_rules
from gridhub.mqtt import BrokerAddress, make_client
from gridhub.settings import Settings

PREFIX = "gridhub/v1"


@pytest.fixture(scope="module")
def mqtt(broker: Any) -> Iterator[paho.Client]:
    addr = BrokerAddress.parse(broker.test_url)
    client = make_client(broker.test_url, f"publish-test-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p=None: connected.set()
    client.connect(addr.host, addr.port)
    client.loop_start()
    assert connected.wait(10), "test publisher could not connect to the broker"
    yield client
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def listener(broker: Any) -> Iterator[Listener]:
    lst = Listener(broker.test_url, [f"{PREFIX}/alerts"])
    yield lst
    lst.close()


def conn_to(db_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(db_url, autocommit=True)


def insert_change(conn: psycopg.Connection[Any], entity: str, n: int) -> int:
    """A change row as a writer makes it (the publisher does not care who wrote it)."""
    row = conn.execute("INSERT INTO changes (kind, entity_id, grid_id, payload) VALUES ('alert', %s, 'g-xg-01', %s)"
                       " RETURNING id", (entity, Jsonb({"id": entity, "n": n}))).fetchone()
    assert row is not None
    return int(row[0])


def drain(db_url: str, client: paho.Client) -> int:
    """Catch up until nothing is left (the session's database may hold other tests' rows)."""
    total = 0
    with publish.connect_publisher(db_url) as conn:
        while True:
            out = publish.catch_up(conn, client, PREFIX)
            total += out.published
            if out.published == 0 and out.deferred == 0:
                return total


def pushes(listener: Listener, entity: str) -> list[int]:
    return [p["n"] for p in listener.of("/alerts", id=entity)]


def unpublished(db_url: str, ids: list[int]) -> int:
    with conn_to(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM changes WHERE id = ANY(%s) AND published_at IS NULL", (ids,)).fetchone()
    return int(row[0]) if row else -1


def test_a_change_committed_after_a_later_one_is_still_published(db_url: str, mqtt: paho.Client,
                                                                 listener: Listener) -> None:
    early, late = f"al-early-{uuid.uuid4().hex[:6]}", f"al-late-{uuid.uuid4().hex[:6]}"
    with conn_to(db_url) as slow, conn_to(db_url) as fast:
        with slow.transaction():
            first = insert_change(slow, early, 1)  # the lower id, still uncommitted ...
            with fast.transaction():
                second = insert_change(fast, late, 1)  # ... while a later id commits
            assert second > first
            drain(db_url, mqtt)  # a publisher runs in between: it sees only the later row
            wait_for(lambda: pushes(listener, late) == [1], 10, "the later change")
        drain(db_url, mqtt)  # the earlier row commits last and must not be skipped
    wait_for(lambda: pushes(listener, early) == [1], 10, "the change that committed last")
    assert unpublished(db_url, [first, second]) == 0
    assert pushes(listener, late) == [1]


def test_two_publishers_racing_send_each_change_once(db_url: str, mqtt: paho.Client, listener: Listener) -> None:
    entities = [f"al-race-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    with conn_to(db_url) as conn:
        ids = [insert_change(conn, e, 1) for e in entities]
    errors: list[BaseException] = []

    def lane() -> None:  # the priority lane publishing its own rows, a few at a time
        try:
            with conn_to(db_url) as c:
                for k in range(0, len(ids), 4):
                    publish.publish_rows(c, mqtt, PREFIX, ids[k:k + 4])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def notifier() -> None:
        try:
            with conn_to(db_url) as c:
                for _ in range(20):
                    publish.catch_up(c, mqtt, PREFIX, limit=3)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=lane), threading.Thread(target=notifier), threading.Thread(target=notifier)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    drain(db_url, mqtt)
    assert unpublished(db_url, ids) == 0
    wait_for(lambda: all(pushes(listener, e) for e in entities), 10, "every change")
    drain(db_url, mqtt)  # nothing is sent again
    assert {e: pushes(listener, e) for e in entities} == {e: [1] for e in entities}


def test_a_change_waits_for_an_earlier_change_of_its_entity(db_url: str, mqtt: paho.Client,
                                                          listener: Listener) -> None:
    entity = f"al-order-{uuid.uuid4().hex[:6]}"
    with conn_to(db_url) as conn, conn_to(db_url) as other:
        first = insert_change(conn, entity, 1)
        second = insert_change(conn, entity, 2)
        with other.transaction():
            other.execute("SELECT 1 FROM changes WHERE id = %s FOR UPDATE", (first,))  # another publisher has it
            out = publish.publish_rows(conn, mqtt, PREFIX, [second])
            assert out == publish.Outcome(published=0, deferred=1)
        assert unpublished(db_url, [first, second]) == 2
        drain(db_url, mqtt)
    wait_for(lambda: len(pushes(listener, entity)) == 2, 10, "both changes")
    assert pushes(listener, entity) == [1, 2]


def test_writing_the_change_log_outside_a_transaction_is_refused(db_url: str, settings: Settings,
                                                                  broker: Any) -> None:
    add_devices(db_url, settings, broker, "pb-1", "g-xg-02", [("pb-sa-1", "smoke_alarm", None)])
    rules = load_rules()
    with psycopg.connect(db_url) as tx:
        place = records.place_of(tx, "pb-sa-1")
        assert place is not None
        now = datetime.now(UTC)
        with changes.UnitOfWork(tx) as uow:
            raised = records.raise_alert(uow, place, "tamper", now, now, rules)
        tx.commit()
    with conn_to(db_url) as auto:
        bare = changes.UnitOfWork(auto)  # not entered: the caller would have to run the transaction
        bare.stage_alert(raised.alert_id)
        with pytest.raises(RuntimeError, match="needs an open transaction"):
            bare.flush()
        with changes.UnitOfWork(auto) as uow:
            uow.stage_alert(raised.alert_id)
            assert len(uow.flush()) == 1
