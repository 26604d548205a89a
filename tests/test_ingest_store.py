"""The batch writer alone, against the real database: sequence gaps and the latest state across batches, whatever
order the numbers arrive in (the database's own gap counting agrees with the Python rule), and every row of a
batch written once."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridhub.ingest.store import Item, count_gaps, prepare, write_batch
from gridhub.ingest.validate import ReadingIn, StatusIn

DEVICES = ("sa-0001", "sa-0002", "sp-0001")
BASE_MS = int(time.time() * 1000) - 3_600_000


@pytest.fixture(scope="module")
def store_url(make_registry_database: Callable[[], str]) -> str:
    """A database of this module's own: the properties below rewrite device_state freely."""
    return make_registry_database()


@pytest.fixture(scope="module")
def store_conn(store_url: str) -> Any:
    with psycopg.connect(store_url, autocommit=True) as conn:
        prepare(conn)
        yield conn


def reading(device: str, seq: int, ts_ms: int, **metrics: Any) -> Item:
    return Item(ReadingIn(device, ts_ms, seq, metrics or {"battery_pct": 90}, 0), time.time(),
                f"gridhub/v1/devices/{device}/telemetry", b"{}")


def reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE device_state SET last_seq = NULL, seq_gaps = 0, online = false, last_seen = NULL")
    conn.execute("DELETE FROM readings")
    conn.execute("UPDATE device_state SET latest = DEFAULT, latest_ts = DEFAULT, latest_until = NULL")


seq_lists = st.lists(st.one_of(st.integers(0, 40), st.integers(2000, 2040)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first_last=st.one_of(st.none(), st.integers(0, 2040)), batches=st.lists(seq_lists, min_size=1, max_size=4))
def test_gaps_counted_in_the_database_agree_with_the_rule(store_conn: psycopg.Connection[Any],
                                                          first_last: int | None, batches: list[list[int]]) -> None:
    """Redeliveries, reordering, a counter restarting and plain gaps, split over batches any way: the stored
    last_seq and seq_gaps are what count_gaps gives for the whole stream in arrival order."""
    conn = store_conn
    reset(conn)
    conn.execute("UPDATE device_state SET last_seq = %s WHERE device_id = 'sa-0001'", (first_last,))
    gaps = 0
    ts = BASE_MS
    for seqs in batches:
        items = []
        for s in seqs:
            ts += 1
            items.append(reading("sa-0001", s, ts))
        gaps += write_batch(conn, items, instance="t").seq_gaps
    expected_last, expected_gaps = count_gaps(first_last, [s for b in batches for s in b])
    row = conn.execute("SELECT last_seq, seq_gaps FROM device_state WHERE device_id = 'sa-0001'").fetchone()
    assert row == (expected_last, expected_gaps)
    assert gaps == expected_gaps


def test_batch_of_many_devices_updates_each_once(store_conn: psycopg.Connection[Any]) -> None:
    conn = store_conn
    reset(conn)
    items = [reading(d, s, BASE_MS + 10 * s + i, battery_pct=50 + s) for s in range(1, 6)
             for i, d in enumerate(DEVICES)]
    items.insert(4, Item(StatusIn("sp-0001", False, False), time.time(), "gridhub/v1/devices/sp-0001/status", b"offline"))
    counts = write_batch(conn, items, instance="t")
    assert counts.readings == 15 and counts.seq_gaps == 0
    rows = conn.execute("SELECT device_id, online, last_seq, seq_gaps, last_seen IS NOT NULL FROM device_state "
                        "WHERE device_id = ANY(%s) ORDER BY device_id", (list(DEVICES),)).fetchall()
    # sp-0001 said offline after its readings in the same batch: the status wins, its readings still count as seen
    assert rows == [("sa-0001", True, 5, 0, True), ("sa-0002", True, 5, 0, True), ("sp-0001", False, 5, 0, True)]
    latest = dict(conn.execute("SELECT device_id, value FROM latest_readings WHERE metric = 'battery_pct'").fetchall())
    assert latest == {"sa-0001": 55, "sa-0002": 55, "sp-0001": 55}


def test_latest_state_only_moves_forward_across_batches(store_conn: psycopg.Connection[Any]) -> None:
    conn = store_conn
    reset(conn)
    write_batch(conn, [reading("sa-0002", 10, BASE_MS + 10_000, battery_pct=70, temperature_c=20.0)], instance="t")
    # a late message (older ts) with one metric newer elsewhere: neither moves the latest state back
    write_batch(conn, [reading("sa-0002", 9, BASE_MS + 5_000, battery_pct=99, temperature_c=30.0),
                       reading("sa-0002", 11, BASE_MS + 20_000, temperature_c=21.0)], instance="t")
    latest = dict(conn.execute("SELECT metric, value FROM latest_readings WHERE device_id = 'sa-0002'").fetchall())
    assert latest == {"battery_pct": 70, "temperature_c": 21.0}
    assert conn.execute("SELECT count(*) FROM readings WHERE device_id = 'sa-0002'").fetchone() == (5,)


def test_every_kind_of_value_survives_the_binary_copy(store_conn: psycopg.Connection[Any]) -> None:
    """The readings stream is encoded by hand: numbers, booleans, text, objects, integers beyond 64 bits, a time
    before 2000 and one with milliseconds all come back as sent."""
    conn = store_conn
    reset(conn)
    metrics = {"n_int": 42, "n_float": -2.5, "flag": True, "text": "二楼 \"east\"", "obj": {"a": [1, None]},
               "huge": 2**70, "neg": -(2**63)}
    write_batch(conn, [reading("sa-0001", 7, 946_684_799_999, **metrics),
                       reading("sa-0002", -1, 1_793_523_600_123, lux=0.125)], instance="t")
    rows = {m: (v, j) for m, v, j in conn.execute(
        "SELECT metric, value, value_json FROM readings WHERE device_id = 'sa-0001' AND seq = 7").fetchall()}
    assert rows == {"n_int": (42.0, None), "n_float": (-2.5, None), "flag": (None, True),
                    "text": (None, "二楼 \"east\""), "obj": (None, {"a": [1, None]}), "huge": (float(2**70), 2**70),
                    "neg": (float(-(2**63)), None)}
    times = conn.execute("SELECT DISTINCT device_id, seq, (extract(epoch FROM ts) * 1000)::int8 FROM readings"
                         " ORDER BY 1").fetchall()
    assert times == [("sa-0001", 7, 946_684_799_999), ("sa-0002", -1, 1_793_523_600_123)]
