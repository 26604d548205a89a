"""A COMMIT whose connection dropped has an unknown outcome; ingest retries the batch on a new connection and the
store's dedup makes the retry idempotent (issue 15 item 4, what a Patroni failover does to a commit in flight).

`gridhub ingest` runs with its database behind a relay that lets the store's COMMIT (a transaction that copied
readings) reach the real PostgreSQL, lets PostgreSQL commit it, and then closes the connection instead of passing
the answer on: the batch is committed and ingest cannot know it. The retry writes the same batch again on a new
connection (its own COMMIT dropped the same way, the next one answered). Published = stored, each reading once, the
retries counted as duplicates, and ingest kept running."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from faults import DbProxy, distinct, one, private_hub, rows, stop_ingest, wait_stored
from ingest_env import Hub, Publisher, counter, start_ingest_process, topic, wait_connected
from polling import wait_for

from gridhub.db import LazyConnection
from gridhub.ingest.store import Item, prepare, prepare_batch, write_prepared
from gridhub.ingest.validate import ReadingIn, Rejected
from gridhub.protocol import Reason

DEVICE, METRIC = "sa-0001", "battery_pct"
TOTAL = 3000
BAD_EVERY = 100  # every 100th message is not JSON: the batches retried carry quarantine entries too
BAD = TOTAL // (BAD_EVERY - 1)
DROPS = 2  # the first store COMMIT and its retry's both lose their answer; the third try is answered


class CommitAnswerDropper(DbProxy):
    """DbProxy that, `drops` times, passes a COMMIT of a transaction that ran a COPY (the store's) to PostgreSQL and
    closes the connection on its answer: the transaction is committed, and the client is told nothing."""

    def __init__(self, target: tuple[str, int], drops: int = DROPS) -> None:
        self.drops = drops
        self.dropped = 0
        self._count_lock = threading.Lock()
        super().__init__(target)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        drop_answer = threading.Event()
        threading.Thread(target=self._requests, args=(client, upstream, drop_answer), daemon=True).start()
        threading.Thread(target=self._answers, args=(upstream, client, drop_answer), daemon=True).start()

    def _take_drop(self) -> bool:
        with self._count_lock:
            if self.dropped >= self.drops:
                return False
            self.dropped += 1
            return True

    def _requests(self, src: socket.socket, dst: socket.socket, drop_answer: threading.Event) -> None:
        copied = False
        try:
            while data := src.recv(65536):
                copied = copied or b"COPY readings" in data or b"COPY ingest_readings" in data
                if b"COMMIT\x00" in data:
                    if copied and self._take_drop():
                        drop_answer.set()  # before the COMMIT goes out: its answer is the next thing back
                    copied = False
                dst.sendall(data)
        except OSError:
            pass
        _close(src, dst)

    @staticmethod
    def _answers(src: socket.socket, dst: socket.socket, drop_answer: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                if drop_answer.is_set():
                    break  # PostgreSQL committed; the client never hears it
                dst.sendall(data)
        except OSError:
            pass
        _close(src, dst)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def hub(make_database: Callable[[], str], tmp_path: Path) -> Iterator[Hub]:
    with private_hub(make_database, tmp_path) as h:
        yield h


def test_a_commit_whose_answer_was_lost_is_retried_idempotently(hub: Hub, tmp_path: Path) -> None:
    proxy = CommitAnswerDropper.of(hub.db_url)
    log = tmp_path / "ingest.log"
    proc = start_ingest_process(hub, "unknown-commit", log, GRIDHUB_DATABASE_URL=proxy.url(hub.db_url))
    try:
        wait_connected(log)
        pub = Publisher(hub, DEVICE)
        try:
            base_ms = 1_790_000_000_000
            pub.send((topic(DEVICE), b"{not json" if seq % BAD_EVERY == BAD_EVERY - 1 else
                      orjson.dumps({"ts": base_ms + seq, "seq": seq, "metrics": {METRIC: 50}}))
                     for seq in range(TOTAL + BAD))
        finally:
            pub.close()
        with psycopg.connect(hub.db_url, autocommit=True) as conn:
            stored = wait_stored(conn, TOTAL)
            assert proc.poll() is None, f"ingest exited:\n{log.read_text(errors='replace')[-3000:]}"
            assert proxy.dropped == DROPS, f"only {proxy.dropped} COMMIT answers dropped: the test proves nothing"
            wait_for(lambda: counter(conn, "gridhub_messages_received_total") >= TOTAL + BAD, 60,
                     "ingest's counters to catch up")
            received = counter(conn, "gridhub_messages_received_total")
            duplicates = counter(conn, "gridhub_duplicates_total")
            quarantined = one(conn, "SELECT count(*) FROM quarantine")
            already = log.read_text(errors="replace").count("was already stored")
            print(f"\npublished {TOTAL} readings and {BAD} bad messages, stored {stored} (rows {rows(conn)}), "
                  f"quarantined {quarantined}; {proxy.dropped} COMMIT answers dropped, {already} retries found their "
                  f"batch stored; counted received {received:.0f}, duplicates {duplicates:.0f}")
            assert stored == TOTAL, f"published {TOTAL}, stored {stored}"
            assert rows(conn) == TOTAL, "a reading was stored twice"
            # the dropped COMMITs went through: each retry found its batch stored and wrote nothing more
            assert already == DROPS, f"{already} retries found their batch already stored, not {DROPS}"
            assert quarantined == BAD, f"{quarantined} quarantine entries for {BAD} bad messages"
            assert (received, duplicates) == (TOTAL + BAD, 0), "a retried batch was counted twice"
            assert distinct(conn) == TOTAL
    finally:
        code = stop_ingest(proc)
        proxy.cut()
    assert code == 0, log.read_text(errors="replace")[-3000:]


def _batch(base_ms: int) -> list[Item]:
    t = f"gridhub/v1/devices/{DEVICE}/telemetry"
    return [*(Item(ReadingIn(DEVICE, base_ms + seq, seq, {METRIC: 60}, 0), time.time(), t, b"{}") for seq in range(5)),
            Item(Rejected(t, DEVICE, Reason.INVALID_JSON, "not JSON", "{x", "utf8", False), time.time(), t, b"{x")]


def _counted(conn: psycopg.Connection[Any]) -> tuple[int, int, float]:
    return (one(conn, "SELECT count(*) FROM readings WHERE device_id = %s", (DEVICE,)),
            one(conn, "SELECT count(*) FROM quarantine"), counter(conn, "gridhub_messages_received_total"))


def test_a_retry_writes_nothing_more_when_the_first_attempt_committed(
        make_registry_database: Callable[[], str]) -> None:
    """The store alone: the same PreparedBatch written again (its first COMMIT unanswered, as far as the caller knows)
    finds its readings stored and writes no second quarantine entry and no counter twice; a batch whose first attempt
    did not commit is written whole by its retry; one that brought nothing new is written again."""
    url = make_registry_database()
    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as look:
        prepare(conn)
        committed = prepare_batch(_batch(1_790_000_000_000))
        first = write_prepared(conn, committed, instance="t")
        assert not first.already_stored and first.readings == 5 and first.quarantined == {"invalid_json": 1}
        assert _counted(look) == (5, 1, 6)
        again = write_prepared(conn, committed, instance="t")  # the retry of a commit that went through
        assert again.already_stored and again.readings == 0 and again.quarantined == {}
        assert _counted(look) == (5, 1, 6)

        lost = prepare_batch(_batch(1_790_000_100_000))
        with pytest.raises(psycopg.errors.QueryCanceled), conn.transaction():
            write_prepared(conn, lost, instance="t")  # its transaction fails after the writes: nothing committed
            conn.execute("SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(1)")
        retried = write_prepared(conn, lost, instance="t")
        assert not retried.already_stored and retried.readings == 5 and retried.quarantined == {"invalid_json": 1}
        assert _counted(look) == (10, 2, 12)

        # a batch that brought nothing new (redelivered readings and a bad message) cannot tell whether its last
        # attempt committed: its retry writes it again (the quarantine entry twice, as documented)
        redelivered = prepare_batch(_batch(1_790_000_000_000))
        assert write_prepared(conn, redelivered, instance="t").readings == 0
        assert not write_prepared(conn, redelivered, instance="t").already_stored
        assert _counted(look) == (10, 4, 24)


def test_a_connection_closed_while_idle_is_replaced_before_use(db_url: str) -> None:
    """What a failover does to a kept connection (the fences', the store's): the server ends it while it is idle.
    LazyConnection notices before handing it out and opens a new one, so the next question (a lease confirmation
    before acknowledging) gets an answer instead of an error."""
    lazy = LazyConnection(db_url, application_name="gridhub-test-idle", autocommit=True)
    try:
        first = one(lazy.get(), "SELECT pg_backend_pid()")
        assert lazy.get().info.backend_pid == first  # alive and idle: kept
        with psycopg.connect(db_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone() == (True,)
            wait_for(lambda: one(admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,)) == 0, 10,
                     "the backend gone")
        second = one(lazy.get(), "SELECT pg_backend_pid()")  # no error: a new connection
        assert second != first
    finally:
        lazy.close()
