"""Write one batch of classified messages in one transaction: readings and events (binary COPY into temporary
tables, then INSERT ... ON CONFLICT DO NOTHING), the latest state, device liveness and sequence gaps, the
quarantine, and the counters that describe them.

Every multi-row write takes its rows in a fixed order (device, then metric or time) so that two ingest
processes writing the same devices wait for each other instead of deadlocking.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg

from gridhub.ingest.validate import EventIn, Outcome, ReadingIn, Rejected, StatusIn, quarantine_payload
from gridhub.metrics import bump
from gridhub.protocol import Reason

log = logging.getLogger("gridhub.ingest.store")

TEMP_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS ingest_readings (ts_ms int8, device_id text, seq int8, metric text,"
    " value float8, value_json text) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS ingest_events (ts_ms int8, device_id text, seq int8, type text,"
    " detail text) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS ingest_latest (device_id text, metric text, ts_ms int8, value text)"
    " ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS ingest_state (device_id text, online bool, seen_s float8, status text,"
    " status_at_s float8, last_seq int8, gaps int8) ON COMMIT DELETE ROWS",
)
LATEST_TYPES = ["text", "text", "int8", "text"]
STATE_TYPES = ["text", "bool", "float8", "text", "float8", "int8", "int8"]
READING_TYPES = ["int8", "text", "int8", "text", "float8", "text"]
DIRECT_READING_TYPES = ["timestamptz", "text", "int8", "text", "float8", "jsonb"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_INT8 = 2**63
EVENT_TYPES = ["int8", "text", "int8", "text", "text"]
QUARANTINE_TYPES = ["text", "text", "text", "text", "text", "text", "bool"]

EPOCH_SQL = "timestamptz 'epoch' + {col} * interval '1 millisecond'"

INSERT_READINGS = f"""
WITH ins AS (
    INSERT INTO readings (ts, device_id, seq, metric, value, value_json)
    SELECT {EPOCH_SQL.format(col='ts_ms')}, device_id, seq, metric, value, value_json::jsonb
    FROM ingest_readings ORDER BY device_id, metric, ts_ms, seq
    ON CONFLICT DO NOTHING
    RETURNING device_id, ts, seq)
SELECT count(*), count(DISTINCT (device_id, ts, seq)) FROM ins
"""

INSERT_EVENTS = f"""
WITH ins AS (
    INSERT INTO events (ts, device_id, seq, type, detail)
    SELECT {EPOCH_SQL.format(col='ts_ms')}, device_id, seq, type, detail::jsonb
    FROM ingest_events ORDER BY device_id, ts_ms, seq
    ON CONFLICT DO NOTHING
    RETURNING 1)
SELECT count(*) FROM ins
"""

UPSERT_LATEST = f"""
INSERT INTO latest_readings AS l (device_id, metric, ts, value)
SELECT device_id, metric, {EPOCH_SQL.format(col='ts_ms')}, value::jsonb
FROM ingest_latest
ORDER BY device_id, metric
ON CONFLICT (device_id, metric) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value
WHERE l.ts < EXCLUDED.ts
"""

LOCK_STATE = "SELECT device_id, last_seq FROM device_state WHERE device_id = ANY(%s) ORDER BY device_id FOR UPDATE"

ENSURE_STATE = """
INSERT INTO device_state (device_id)
SELECT u.d FROM unnest(%s::text[]) AS u(d) JOIN devices ON devices.id = u.d ORDER BY u.d
ON CONFLICT DO NOTHING
"""

UPDATE_STATE = """
UPDATE device_state AS s SET
    online = coalesce(u.online, s.online),
    last_seen = greatest(s.last_seen, to_timestamp(u.seen_s)),
    status = coalesce(u.status, s.status),
    status_at = CASE WHEN u.status IS NULL THEN s.status_at ELSE to_timestamp(u.status_at_s) END,
    last_seq = coalesce(u.last_seq, s.last_seq),
    seq_gaps = s.seq_gaps + u.gaps
FROM ingest_state AS u
WHERE s.device_id = u.device_id
"""

GAUGE = ("INSERT INTO counters (name, labels, value) VALUES (%s, %s, %s)"
         " ON CONFLICT (name, labels) DO UPDATE SET value = EXCLUDED.value")

# a device that restarts its counter: a step back larger than this starts a new sequence
SEQ_RESET = 1000


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=False)


def _number(value: Any) -> float | None:
    """The double column: numbers only; booleans and everything else live in value_json alone."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return None
    return None


@dataclass(slots=True)
class Item:
    """A classified message with its topic, raw payload and the hub time it arrived (epoch seconds)."""

    outcome: Outcome
    received: float
    topic: str
    payload: bytes


@dataclass
class BatchCounts:
    messages: int = 0
    readings: int = 0
    events: int = 0
    duplicates: int = 0
    seq_gaps: int = 0
    unknown_metrics: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)


@dataclass
class _DeviceChange:
    online: bool | None = None
    seen: float | None = None
    status: str | None = None
    status_at: float | None = None
    seqs: list[int] = field(default_factory=list)


def count_gaps(last_seq: int | None, seqs: Sequence[int]) -> tuple[int | None, int]:
    """The new last sequence number and the gaps counted, for sequence numbers in arrival order."""
    gaps = 0
    last = last_seq
    for s in seqs:
        if last is None or s < last - SEQ_RESET:
            last = s
        elif s > last:
            gaps += s - last - 1
            last = s
    return last, gaps


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Create this connection's temporary tables."""
    with conn.transaction():
        for sql in TEMP_TABLES:
            conn.execute(sql)


def write_batch(conn: psycopg.Connection[Any], items: Sequence[Item], *, instance: str,
                gauges: dict[str, float] | None = None) -> BatchCounts:
    """Store a batch in one transaction; raises on any database error with nothing written."""
    t0 = time.perf_counter()
    counts = BatchCounts(messages=len(items))
    changes: dict[str, _DeviceChange] = {}
    latest: dict[tuple[str, str], tuple[int, Any]] = {}
    reading_msgs = 0
    rejected: list[Rejected] = []
    others: list[Item] = []
    with conn.transaction(), conn.cursor() as cur:
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        for item in items:
            o = item.outcome
            if type(o) is ReadingIn:
                reading_msgs += 1
                counts.unknown_metrics += o.unknown_metrics
                dev, ts_ms, seq = o.device_id, o.ts_ms, o.seq
                when = EPOCH + timedelta(milliseconds=ts_ms)
                for name, value in o.metrics.items():
                    if type(value) is float or (type(value) is int and -MAX_INT8 <= value < MAX_INT8):
                        append((when, dev, seq, name, value, None, ts_ms))
                    else:
                        append((when, dev, seq, name, _number(value), value, ts_ms))
                    key = (dev, name)
                    prev = latest.get(key)
                    if prev is None or ts_ms > prev[0]:
                        latest[key] = (ts_ms, value)
                _life(changes, dev, item.received, seq)
            elif type(o) is Rejected:
                rejected.append(o)
            else:
                others.append(item)
        if rows:
            stored_rows, stored_msgs = _insert_readings(cur, rows, reading_msgs)
            counts.readings = stored_rows
            counts.duplicates += reading_msgs - stored_msgs
        event_msgs = 0
        for item in others:  # events and status in arrival order, after the readings as before
            o = item.outcome
            if type(o) is EventIn:
                event_msgs += 1
                _life(changes, o.device_id, item.received, o.seq)
            elif type(o) is StatusIn:
                ch = changes.setdefault(o.device_id, _DeviceChange())
                ch.online = o.online
                ch.status = "online" if o.online else "offline"
                ch.status_at = item.received
                if o.online and not o.retained:
                    ch.seen = item.received if ch.seen is None else max(ch.seen, item.received)
        if event_msgs:
            with cur.copy("COPY ingest_events FROM STDIN (FORMAT BINARY)") as ecopy:
                ecopy.set_types(EVENT_TYPES)
                for item in others:
                    o = item.outcome
                    if type(o) is EventIn:
                        ecopy.write_row((o.ts_ms, o.device_id, o.seq, o.type, _dumps(o.detail)))
            row = cur.execute(INSERT_EVENTS).fetchone()
            assert row is not None
            counts.events = int(row[0])
            counts.duplicates += event_msgs - counts.events
        if latest:
            with cur.copy("COPY ingest_latest FROM STDIN (FORMAT BINARY)") as lcopy:
                lcopy.set_types(LATEST_TYPES)
                for (dev, name), (ts_ms, value) in latest.items():
                    lcopy.write_row((dev, name, ts_ms, _dumps(value)))
            cur.execute(UPSERT_LATEST)
        if changes:
            counts.seq_gaps = _write_state(cur, changes)
        if rejected:
            with cur.copy("COPY quarantine (topic, device_id, reason, detail, payload, payload_encoding,"
                          " payload_truncated) FROM STDIN (FORMAT BINARY)") as qcopy:
                qcopy.set_types(QUARANTINE_TYPES)
                for r in rejected:
                    qcopy.write_row((r.topic.replace("\x00", "\\x00"), r.device_id, r.reason.value,
                                     r.detail.replace("\x00", "\\x00"), r.payload, r.payload_encoding,
                                     r.payload_truncated))
                    counts.quarantined[r.reason.value] = counts.quarantined.get(r.reason.value, 0) + 1
        elapsed = time.perf_counter() - t0
        values: dict[tuple[str, str], float] = {
            ("gridhub_messages_received_total", ""): counts.messages,
            ("gridhub_readings_stored_total", ""): counts.readings,
            ("gridhub_events_stored_total", ""): counts.events,
            ("gridhub_duplicates_total", ""): counts.duplicates,
            ("gridhub_seq_gaps_total", ""): counts.seq_gaps,
            ("gridhub_unknown_metrics_total", ""): counts.unknown_metrics,
            ("gridhub_ingest_batches_total", ""): 1,
            ("gridhub_ingest_batch_messages_total", ""): counts.messages,
            ("gridhub_ingest_write_seconds_total", ""): elapsed,
        }
        for reason, n in counts.quarantined.items():
            values[("gridhub_quarantined_total", f'reason="{reason}"')] = n
        bump(conn, values)
        if gauges:
            cur.executemany(GAUGE, [(name, f'instance="{instance}"', v) for name, v in sorted(gauges.items())])
    return counts


def _insert_readings(cur: psycopg.Cursor[Any], rows: list[tuple[Any, ...]], messages: int) -> tuple[int, int]:
    """(rows stored, messages stored). Duplicates are rare (redelivery after a crash or reconnect), so the
    batch goes straight into readings by binary COPY; when a row is already there, the copy is rolled back
    to its savepoint and the batch goes through a temporary table and INSERT ... ON CONFLICT DO NOTHING."""
    try:
        with cur.connection.transaction():
            with cur.copy("COPY readings (ts, device_id, seq, metric, value, value_json) FROM STDIN (FORMAT BINARY)"
                          ) as copy:
                copy.set_types(DIRECT_READING_TYPES)
                for r in rows:
                    copy.write_row(r[:6])
        return len(rows), messages
    except psycopg.errors.UniqueViolation:
        pass
    with cur.copy("COPY ingest_readings FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(READING_TYPES)
        for _when, dev, seq, name, value, raw, ts_ms in rows:
            copy.write_row((ts_ms, dev, seq, name, value, None if raw is None else _dumps(raw)))
    row = cur.execute(INSERT_READINGS).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _life(changes: dict[str, _DeviceChange], device_id: str, received: float, seq: int) -> None:
    ch = changes.get(device_id)
    if ch is None:
        ch = changes[device_id] = _DeviceChange()
    ch.online = True
    if ch.seen is None or received > ch.seen:
        ch.seen = received
    if seq >= 0:
        ch.seqs.append(seq)


def _write_state(cur: psycopg.Cursor[Any], changes: dict[str, _DeviceChange]) -> int:
    ids = sorted(changes)
    last = {r[0]: r[1] for r in cur.execute(LOCK_STATE, (ids,)).fetchall()}
    missing = [d for d in ids if d not in last]
    if missing:  # devices imported without a state row
        cur.execute(ENSURE_STATE, (missing,))
        last.update({r[0]: r[1] for r in cur.execute(LOCK_STATE, (missing,)).fetchall()})
    total_gaps = 0
    with cur.copy("COPY ingest_state FROM STDIN (FORMAT BINARY)") as scopy:
        scopy.set_types(STATE_TYPES)
        for d in ids:
            ch = changes[d]
            new_last, gaps = count_gaps(last.get(d), ch.seqs) if ch.seqs else (None, 0)
            total_gaps += gaps
            scopy.write_row((d, ch.online, ch.seen, ch.status, ch.status_at, new_last, gaps))
    cur.execute(UPDATE_STATE)
    return total_gaps


def reject_unstorable(item: Item, error: Exception) -> Item:
    """A message the database refused on its own (a value it cannot hold), as a quarantine entry."""
    o = item.outcome
    text, enc, trunc = quarantine_payload(item.payload)
    message = str(error).strip().splitlines()[0][:300] if str(error).strip() else error.__class__.__name__
    detail = f"the database cannot store this message ({message}): change the value it names"
    return Item(Rejected(item.topic, getattr(o, "device_id", None), Reason.SCHEMA, detail, text, enc, trunc),
                item.received, item.topic, item.payload)
