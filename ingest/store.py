"""Write one batch of classified messages in one transaction: readings (binary COPY straight into the hypertable;
through a temporary table and INSERT ... ON CONFLICT DO NOTHING when the batch holds a duplicate), events
(the same, always through the temporary table), then one row per device for its liveness, sequence gaps and
latest values, the quarantine, and the counters that describe them.

Every multi-row write takes its rows in a fixed order (device, then metric or time) so that two ingest
processes writing the same devices wait for each other instead of deadlocking.

A COMMIT whose connection dropped (a Patroni failover, a network cut) has an unknown outcome: the caller writes the
same PreparedBatch again on a new connection and acknowledges its messages only once that returned. The retry is
idempotent: readings and events are deduplicated on (device, ts, seq) and the device state tolerates a batch seen
twice. When the last attempt sent its COMMIT with readings or events that were new then, and the retry finds none of
the batch's new, that attempt committed (a transaction is whole or nothing): the retry writes nothing more, no
second quarantine entry, no counter counted twice (`BatchCounts.already_stored`). A batch that brought nothing new
(quarantine entries alone, or only redelivered readings) cannot tell, and is written again.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
)
READING_TYPES = ["int8", "text", "int8", "text", "float8", "text"]
DIRECT_READING_TYPES = ["timestamptz", "text", "int8", "text", "float8", "jsonb"]
MAX_INT8 = 2**63
EVENT_TYPES = ["int8", "text", "int8", "text", "text"]
QUARANTINE_TYPES = ["text", "text", "text", "text", "text", "text", "bool"]

# a device that restarts its counter: a step back larger than this starts a new sequence
SEQ_RESET = 1000

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

# One statement for everything kept per device from a batch, given as a JSON array of objects (`_state_json`)
# with the keys device_id, online, seen_s, status, status_at_s, first_seq, cont_last (last seq), cont_gaps,
# seqs ([seq]), lv ({metric: value}), lt ({metric: ts}), min_ts and max_ts (oldest and newest ts):
# lock the state rows in device order (two ingest processes wait for each other instead of deadlocking);
# count gaps against the locked last_seq (the batch's own numbers are counted in Python from its first one on;
# the database adds the step from last_seq to the first, or runs gridhub_seq_gaps over the whole list when the
# first is a redelivery or out of order); merge the latest values (a plain concatenation when the batch's
# oldest is newer than every stored one, else metric by metric); update; return how many devices had a state
# row and the gaps counted.
UPDATE_STATE = f"""
WITH u AS MATERIALIZED (
    SELECT e->>'device_id' AS device_id, (e->>'online')::bool AS online, (e->>'seen_s')::float8 AS seen_s,
           e->>'status' AS status, (e->>'status_at_s')::float8 AS status_at_s, (e->>'first_seq')::int8 AS first_seq,
           (e->>'cont_last')::int8 AS cont_last, (e->>'cont_gaps')::int8 AS cont_gaps, e->'seqs' AS seqs,
           nullif(e->'lv', 'null') AS lv, nullif(e->'lt', 'null') AS lt, (e->>'min_ts')::int8 AS min_ts,
           (e->>'max_ts')::int8 AS max_ts
    FROM jsonb_array_elements(%s::jsonb) AS e),
locked AS MATERIALIZED (
    SELECT s.device_id, s.last_seq, s.latest, s.latest_ts, s.latest_until
    FROM device_state AS s JOIN u ON u.device_id = s.device_id
    ORDER BY s.device_id FOR UPDATE OF s),
calc AS (
    SELECT u.device_id, u.online, u.seen_s, u.status, u.status_at_s, u.max_ts, CASE
        WHEN u.first_seq IS NULL THEN ARRAY[l.last_seq, 0]
        WHEN l.last_seq IS NULL OR u.first_seq < l.last_seq - {SEQ_RESET} THEN ARRAY[u.cont_last, u.cont_gaps]
        WHEN u.first_seq > l.last_seq THEN ARRAY[u.cont_last, u.cont_gaps + u.first_seq - l.last_seq - 1]
        ELSE gridhub_seq_gaps(l.last_seq, ARRAY(SELECT jsonb_array_elements_text(u.seqs)::int8), {SEQ_RESET})
        END AS seq, CASE
        WHEN u.lv IS NULL THEN ARRAY[l.latest, l.latest_ts]
        WHEN l.latest_until IS NULL OR u.min_ts > l.latest_until THEN ARRAY[l.latest || u.lv, l.latest_ts || u.lt]
        ELSE gridhub_merge_latest(l.latest, l.latest_ts, u.lv, u.lt)
        END AS latest
    FROM u JOIN locked AS l ON l.device_id = u.device_id),
upd AS (
    UPDATE device_state AS s SET
        online = coalesce(c.online, s.online),
        last_seen = greatest(s.last_seen, to_timestamp(c.seen_s)),
        status = coalesce(c.status, s.status),
        status_at = CASE WHEN c.status IS NULL THEN s.status_at ELSE to_timestamp(c.status_at_s) END,
        last_seq = c.seq[1],
        seq_gaps = s.seq_gaps + c.seq[2],
        latest = c.latest[1],
        latest_ts = c.latest[2],
        latest_until = greatest(s.latest_until, c.max_ts)
    FROM calc AS c
    WHERE s.device_id = c.device_id
    RETURNING c.seq[2] AS gaps)
SELECT count(*), coalesce(sum(gaps), 0) FROM upd
"""

ENSURE_STATE = """
INSERT INTO device_state (device_id)
SELECT u.d FROM unnest(%s::text[]) AS u(d) JOIN devices ON devices.id = u.d ORDER BY u.d
ON CONFLICT DO NOTHING
"""

MISSING_STATE = "SELECT u.d FROM unnest(%s::text[]) AS u(d) WHERE NOT EXISTS (SELECT 1 FROM device_state WHERE device_id = u.d)"

GAUGES = ("INSERT INTO counters (name, labels, value)"
          " SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[]) AS u(name, labels, value) ORDER BY name"
          " ON CONFLICT (name, labels) DO UPDATE SET value = EXCLUDED.value")



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
    already_stored: bool = False  # a retry found the batch committed by an attempt whose COMMIT went unanswered


@dataclass
class _DeviceChange:
    online: bool | None = None
    seen: float | None = None
    status: str | None = None
    status_at: float | None = None
    seqs: list[int] = field(default_factory=list)
    latest: dict[str, Any] | None = None  # metric -> the batch's newest value
    latest_ts: dict[str, int] | None = None  # metric -> its time (epoch ms)


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


@dataclass
class PreparedBatch:
    """A batch with everything the database needs worked out beforehand (in plain Python, so that it can be done
    while the previous batch is being committed): readings as one binary COPY stream, one JSON document for the
    state of its devices, the events, status changes and quarantine entries."""

    items: Sequence[Item]
    reading_msgs: int = 0
    unknown_metrics: int = 0
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    copy_data: bytes = b""
    changes: dict[str, _DeviceChange] = field(default_factory=dict)
    state_json: str | None = None
    rejected: list[Rejected] = field(default_factory=list)
    others: list[Item] = field(default_factory=list)
    event_msgs: int = 0
    attempts: int = 0  # write_prepared calls: more than one is a retry (the previous attempt failed, or was unknown)
    committing: bool = False  # the last attempt wrote everything and sent its COMMIT
    new_before: int = 0  # the readings and events the last attempt found new (not yet stored)


def prepare_batch(items: Sequence[Item]) -> PreparedBatch:
    """Sort a classified batch into what write_prepared stores; touches no database."""
    p = PreparedBatch(items)
    changes = p.changes
    rows = p.rows
    append = rows.append
    rejected = p.rejected
    others = p.others
    for item in items:
        o = item.outcome
        if type(o) is ReadingIn:
            p.reading_msgs += 1
            p.unknown_metrics += o.unknown_metrics
            dev, ts_ms, seq = o.device_id, o.ts_ms, o.seq
            ch = _life(changes, dev, item.received, seq)
            if ch.latest is None:
                ch.latest, ch.latest_ts = {}, {}
            latest, latest_ts = ch.latest, ch.latest_ts
            assert latest_ts is not None
            for name, value in o.metrics.items():
                if type(value) is float or (type(value) is int and -MAX_INT8 <= value < MAX_INT8):
                    append((dev, seq, name, value, None, ts_ms))
                else:
                    append((dev, seq, name, _number(value), value, ts_ms))
                prev = latest_ts.get(name)
                if prev is None or ts_ms > prev:
                    latest[name] = value
                    latest_ts[name] = ts_ms
        elif type(o) is Rejected:
            rejected.append(o)
        else:
            others.append(item)
    for item in others:  # events and status in arrival order, after the readings
        o = item.outcome
        if type(o) is EventIn:
            p.event_msgs += 1
            _life(changes, o.device_id, item.received, o.seq)
        elif type(o) is StatusIn:
            ch = changes.setdefault(o.device_id, _DeviceChange())
            ch.online = o.online
            ch.status = "online" if o.online else "offline"
            ch.status_at = item.received
            if o.online and not o.retained:
                ch.seen = item.received if ch.seen is None else max(ch.seen, item.received)
    if rows:
        p.copy_data = readings_copy(rows)
    if changes:
        p.state_json = _state_json(sorted(changes), changes)
    return p


def write_batch(conn: psycopg.Connection[Any], items: Sequence[Item], *, instance: str,
                gauges: dict[str, float] | None = None) -> BatchCounts:
    """Store a batch in one transaction; raises on any database error with nothing written."""
    return write_prepared(conn, prepare_batch(items), instance=instance, gauges=gauges)


def write_prepared(conn: psycopg.Connection[Any], p: PreparedBatch, *, instance: str,
                   gauges: dict[str, float] | None = None) -> BatchCounts:
    """Store a prepared batch in one transaction; raises on any database error with nothing written."""
    t0 = time.perf_counter()
    p.attempts += 1
    unknown = p.committing and p.new_before > 0  # the last attempt's COMMIT, of new rows, went unanswered
    p.committing = False
    counts = BatchCounts(messages=len(p.items), unknown_metrics=p.unknown_metrics)
    with conn.transaction(), conn.cursor() as cur:
        stored_msgs = 0
        if p.rows:
            stored_rows, stored_msgs = _insert_readings(cur, p, p.reading_msgs)
            counts.readings = stored_rows
            counts.duplicates += p.reading_msgs - stored_msgs
        if p.event_msgs:
            with cur.copy("COPY ingest_events FROM STDIN (FORMAT BINARY)") as ecopy:
                ecopy.set_types(EVENT_TYPES)
                for item in p.others:
                    o = item.outcome
                    if type(o) is EventIn:
                        ecopy.write_row((o.ts_ms, o.device_id, o.seq, o.type, _dumps(o.detail)))
            row = cur.execute(INSERT_EVENTS).fetchone()
            assert row is not None
            counts.events = int(row[0])
            counts.duplicates += p.event_msgs - counts.events
        new = stored_msgs + counts.events
        if unknown and new == 0:
            # what the last attempt found new is stored now: that attempt committed, everything else with it
            log.info("a batch of %d retried after its COMMIT went unanswered was already stored", len(p.items))
            p.committing = True  # should this (empty) COMMIT go unanswered too, the next retry finds the same
            return BatchCounts(messages=len(p.items), already_stored=True)
        if p.changes:
            counts.seq_gaps = _write_state(cur, p.changes, p.state_json)
        if p.rejected:
            with cur.copy("COPY quarantine (topic, device_id, reason, detail, payload, payload_encoding,"
                          " payload_truncated) FROM STDIN (FORMAT BINARY)") as qcopy:
                qcopy.set_types(QUARANTINE_TYPES)
                for r in p.rejected:
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
            names = sorted(gauges)
            cur.execute(GAUGES, (names, [f'instance="{instance}"'] * len(names), [gauges[n] for n in names]))
        p.new_before, p.committing = new, True  # the COMMIT follows, as the block ends
    return counts


_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01, where PostgreSQL's binary timestamps count from
_ROW_HEAD = struct.Struct("!hiqi")  # 6 fields; ts (8 bytes); its microseconds; the device id's length
_ROW_SEQ = struct.Struct("!iqi")  # seq (8 bytes); seq; the metric name's length
_FLOAT = struct.Struct("!id")
_LENGTH = struct.Struct("!i")
_NULL = b"\xff\xff\xff\xff"
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"


def readings_copy(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """Reading rows (device, seq, metric, number, raw value, ts_ms) as a binary COPY stream for the columns
    (ts, device_id, seq, metric, value, value_json), encoded in plain Python so that it can be done off the
    database connection's thread. A row with a number and no raw value (nearly all) is one struct call."""
    out = [COPY_HEADER]
    add = out.append
    encoded: dict[str, bytes] = {}
    plain: dict[tuple[int, int], struct.Struct] = {}
    for dev, seq, name, value, raw, ts_ms in rows:
        devb = encoded.get(dev)
        if devb is None:
            devb = encoded[dev] = dev.encode()
        nameb = encoded.get(name)
        if nameb is None:
            nameb = encoded[name] = name.encode()
        us = (ts_ms - _PG_EPOCH_MS) * 1000
        if raw is None and value is not None:
            shape = (len(devb), len(nameb))
            row = plain.get(shape)
            if row is None:  # 6 fields; ts; device; seq; metric; value; no value_json
                row = plain[shape] = struct.Struct(f"!hiqi{shape[0]}siqi{shape[1]}sidi")
            add(row.pack(6, 8, us, shape[0], devb, 8, seq, shape[1], nameb, 8, float(value), -1))
            continue
        add(_ROW_HEAD.pack(6, 8, us, len(devb)))
        add(devb)
        add(_ROW_SEQ.pack(8, seq, len(nameb)))
        add(nameb)
        add(_NULL if value is None else _FLOAT.pack(8, float(value)))
        if raw is None:
            add(_NULL)
        else:
            body = b"\x01" + _dumps(raw).encode()
            add(_LENGTH.pack(len(body)))
            add(body)
    add(COPY_TRAILER)
    return b"".join(out)


def _insert_readings(cur: psycopg.Cursor[Any], p: PreparedBatch, messages: int) -> tuple[int, int]:
    """(rows stored, messages stored). Duplicates are rare (redelivery after a crash or reconnect), so the
    batch goes straight into readings by binary COPY; when a row is already there, the copy is rolled back
    to its savepoint and the batch goes through a temporary table and INSERT ... ON CONFLICT DO NOTHING."""
    try:
        with cur.connection.transaction(), cur.copy(
                "COPY readings (ts, device_id, seq, metric, value, value_json) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(p.copy_data)
        return len(p.rows), messages
    except psycopg.errors.UniqueViolation:
        pass
    with cur.copy("COPY ingest_readings FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(READING_TYPES)
        for dev, seq, name, value, raw, ts_ms in p.rows:
            copy.write_row((ts_ms, dev, seq, name, value, None if raw is None else _dumps(raw)))
    row = cur.execute(INSERT_READINGS).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _life(changes: dict[str, _DeviceChange], device_id: str, received: float, seq: int) -> _DeviceChange:
    ch = changes.get(device_id)
    if ch is None:
        ch = changes[device_id] = _DeviceChange()
    ch.online = True
    if ch.seen is None or received > ch.seen:
        ch.seen = received
    if seq >= 0:
        ch.seqs.append(seq)
    return ch


def _write_state(cur: psycopg.Cursor[Any], changes: dict[str, _DeviceChange], state_json: str | None) -> int:
    """Update device_state for the batch's devices; the sequence gaps counted."""
    ids = sorted(changes)
    counted, gaps = _update_state(cur, state_json or _state_json(ids, changes))
    if counted < len(ids):  # devices imported without a state row
        missing = [r[0] for r in cur.execute(MISSING_STATE, (ids,)).fetchall()]
        if missing:
            cur.execute(ENSURE_STATE, (missing,))
            gaps += _update_state(cur, _state_json(sorted(missing), changes))[1]
    return gaps


def _state_json(ids: list[str], changes: dict[str, _DeviceChange]) -> str:
    """The devices' changes as UPDATE_STATE's JSON array, one object per device with the keys it reads."""
    rows: list[dict[str, Any]] = []
    for d in ids:
        ch = changes[d]
        seqs = ch.seqs
        lt = ch.latest_ts
        oldest, newest = (min(lt.values()), max(lt.values())) if lt else (None, None)
        first = cont_last = cont_gaps = None
        if seqs:
            first = seqs[0]
            cont_last, cont_gaps = count_gaps(first, seqs[1:]) if len(seqs) > 1 else (first, 0)
        rows.append({"device_id": d, "online": ch.online, "seen_s": ch.seen, "status": ch.status,
                     "status_at_s": ch.status_at, "first_seq": first, "cont_last": cont_last,
                     "cont_gaps": cont_gaps, "seqs": seqs or None, "lv": ch.latest, "lt": lt, "min_ts": oldest,
                     "max_ts": newest})
    return _json(rows)


def _update_state(cur: psycopg.Cursor[Any], state_json: str) -> tuple[int, int]:
    row = cur.execute(UPDATE_STATE, (state_json,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _json(rows: list[dict[str, Any]]) -> str:
    """Rows as one JSON array (the cheapest way found to hand a batch to one statement); a value orjson cannot
    write (an integer beyond 64 bits) goes through the standard library."""
    try:
        return orjson.dumps(rows).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(rows, ensure_ascii=False)


def reject_unstorable(item: Item, error: Exception) -> Item:
    """A message the database refused on its own (a value it cannot hold), as a quarantine entry."""
    o = item.outcome
    text, enc, trunc = quarantine_payload(item.payload)
    message = str(error).strip().splitlines()[0][:300] if str(error).strip() else error.__class__.__name__
    detail = f"the database cannot store this message ({message}): change the value it names"
    return Item(Rejected(item.topic, getattr(o, "device_id", None), Reason.SCHEMA, detail, text, enc, trunc),
                item.received, item.topic, item.payload)
