"""The batch writer's encoders (ingest/store.py) without a database: a classified batch sorted into reading rows,
device changes and quarantine entries; the rows as PostgreSQL's binary COPY stream, read back here by an
independent decoder of the format; sequence gaps; a message the database refused turned into a quarantine entry."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from gridhub.ingest.store import Item, count_gaps, prepare_batch, readings_copy, reject_unstorable
from gridhub.ingest.validate import EventIn, ReadingIn, Rejected, StatusIn
from gridhub.protocol import Reason

T0 = 1_790_000_000_000
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def decode_copy(data: bytes) -> list[tuple[Any, ...]]:
    """A binary COPY stream for (ts timestamptz, device_id text, seq int8, metric text, value float8,
    value_json jsonb), as PostgreSQL reads it (https://www.postgresql.org/docs/current/sql-copy.html)."""
    assert data.startswith(SIGNATURE)
    flags, ext = struct.unpack_from("!ii", data, len(SIGNATURE))
    assert flags == 0
    pos = len(SIGNATURE) + 8 + ext
    rows = []
    while True:
        (nfields,) = struct.unpack_from("!h", data, pos)
        pos += 2
        if nfields == -1:
            assert pos == len(data), "bytes after the trailer"
            return rows
        assert nfields == 6
        fields: list[bytes | None] = []
        for _ in range(nfields):
            (n,) = struct.unpack_from("!i", data, pos)
            pos += 4
            if n == -1:
                fields.append(None)
            else:
                fields.append(data[pos:pos + n])
                pos += n
        ts, dev, seq, metric, value, value_json = fields
        assert ts is not None and dev is not None and seq is not None and metric is not None
        assert value_json is None or value_json[:1] == b"\x01"  # jsonb's version byte
        rows.append((PG_EPOCH + timedelta(microseconds=struct.unpack("!q", ts)[0]), dev.decode(),
                     struct.unpack("!q", seq)[0], metric.decode(),
                     None if value is None else struct.unpack("!d", value)[0],
                     None if value_json is None else json.loads(value_json[1:].decode())))


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def reading(dev: str, ts: int, metrics: dict[str, Any], seq: int = -1, received: float = 0.0) -> Item:
    return Item(ReadingIn(dev, ts, seq, metrics, 0), received or ts / 1000, f"gridhub/v1/devices/{dev}/telemetry",
                b"{}")


def test_readings_become_rows_with_number_and_raw_value() -> None:
    p = prepare_batch([reading("sa-0001", T0, {"battery_pct": 80, "fw": "2.1", "alarm": True, "temp": 21.5},
                               seq=4)])
    rows = decode_copy(p.copy_data)
    assert rows == [
        (at(T0), "sa-0001", 4, "battery_pct", 80.0, None),
        (at(T0), "sa-0001", 4, "fw", None, "2.1"),  # text: no number, the raw value in value_json
        (at(T0), "sa-0001", 4, "alarm", None, True),  # a boolean is no number
        (at(T0), "sa-0001", 4, "temp", 21.5, None),
    ]
    assert p.reading_msgs == 1 and len(p.rows) == 4


def test_a_reading_without_seq_is_stored_with_minus_one() -> None:
    [row] = decode_copy(prepare_batch([reading("sa-0001", T0, {"battery_pct": 1})]).copy_data)
    assert row[2] == -1


def test_integers_beyond_64_bits_keep_their_exact_value() -> None:
    huge = 10**400  # JSON allows it; a double cannot hold it, so the number column is null
    big = 2**70  # a double holds it approximately; value_json keeps it exactly
    rows = decode_copy(prepare_batch([reading("sa-0001", T0, {"huge": huge, "big": big, "max": 2**63 - 1})]).copy_data)
    assert rows == [
        (at(T0), "sa-0001", -1, "huge", None, huge),
        (at(T0), "sa-0001", -1, "big", float(big), big),
        (at(T0), "sa-0001", -1, "max", float(2**63 - 1), None),
    ]


def test_structured_values_are_kept_as_json() -> None:
    value = {"a": [1, None, "温度"], "b": {"c": False}}
    [row] = decode_copy(prepare_batch([reading("sa-0001", T0, {"config": value})]).copy_data)
    assert row[4:] == (None, value)


def test_times_keep_their_milliseconds_and_may_lie_before_2000() -> None:
    times = [T0 + 1, 946_684_799_999, 0]  # 1999-12-31T23:59:59.999Z and the epoch: negative microseconds
    rows = decode_copy(prepare_batch([reading("sa-0001", t, {"x": 1}) for t in times]).copy_data)
    assert [r[0] for r in rows] == [at(t) for t in times]
    assert rows[1][0] == datetime(1999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


def test_many_devices_and_metrics_in_one_stream() -> None:
    items = [reading(f"sp-{i:04d}", T0 + i, {"pressure_mpa": i / 100, f"m{i % 3}": i}, seq=i) for i in range(50)]
    rows = decode_copy(prepare_batch(items).copy_data)
    assert len(rows) == 100
    assert rows[0] == (at(T0), "sp-0000", 0, "pressure_mpa", 0.0, None)
    assert rows[-1] == (at(T0 + 49), "sp-0049", 49, "m1", 49.0, None)
    assert readings_copy([]) == SIGNATURE + b"\x00" * 8 + b"\xff\xff"


def test_the_latest_value_is_the_newest_by_device_time_not_by_arrival() -> None:
    p = prepare_batch([reading("sp-0001", T0 + 2000, {"pressure_mpa": 0.3}, seq=3),
                       reading("sp-0001", T0, {"pressure_mpa": 0.1, "fw": "1"}, seq=1),
                       reading("sp-0001", T0 + 1000, {"pressure_mpa": 0.2}, seq=2)])
    ch = p.changes["sp-0001"]
    assert ch.latest == {"pressure_mpa": 0.3, "fw": "1"}
    assert ch.latest_ts == {"pressure_mpa": T0 + 2000, "fw": T0}
    assert ch.seqs == [3, 1, 2] and ch.online is True
    assert len(decode_copy(p.copy_data)) == 4  # every reading is stored, late ones too


def test_events_statuses_and_refusals_are_sorted_out() -> None:
    bad = Rejected("gridhub/v1/devices/sa-0009/telemetry", "sa-0009", Reason.UNREGISTERED_DEVICE, "not registered",
                   "{}", "utf8", False)
    items = [
        Item(EventIn("sa-0001", T0, 5, "alarm", {}), 100.0, "t", b""),
        Item(bad, 101.0, bad.topic, b"{}"),
        Item(StatusIn("sa-0002", False, False), 102.0, "t", b"offline"),
        Item(StatusIn("sa-0003", True, True), 103.0, "t", b"online"),  # retained: state, not a sign of life
        Item(StatusIn("sa-0004", True, False), 104.0, "t", b"online"),
    ]
    p = prepare_batch(items)
    assert p.rows == [] and p.copy_data == b"" and p.reading_msgs == 0
    assert p.rejected == [bad] and p.event_msgs == 1
    assert sorted(p.changes) == ["sa-0001", "sa-0002", "sa-0003", "sa-0004"]
    assert (p.changes["sa-0001"].online, p.changes["sa-0001"].seen, p.changes["sa-0001"].seqs) == (True, 100.0, [5])
    assert (p.changes["sa-0002"].status, p.changes["sa-0002"].online, p.changes["sa-0002"].seen) == (
        "offline", False, None)
    assert (p.changes["sa-0003"].status, p.changes["sa-0003"].seen) == ("online", None)
    assert (p.changes["sa-0004"].status, p.changes["sa-0004"].seen, p.changes["sa-0004"].status_at) == (
        "online", 104.0, 104.0)
    assert p.state_json is not None
    assert all(d in p.state_json for d in ("sa-0001", "sa-0002", "sa-0003", "sa-0004"))
    assert "sa-0009" not in p.state_json


def test_a_batch_of_refusals_only_touches_no_device() -> None:
    bad = Rejected("x", None, Reason.BAD_TOPIC, "bad", "{}", "utf8", False)
    p = prepare_batch([Item(bad, 1.0, "x", b"{}")])
    assert p.changes == {} and p.state_json is None and p.rejected == [bad]


def test_sequence_gaps() -> None:
    assert count_gaps(None, []) == (None, 0)
    assert count_gaps(None, [1, 2, 3]) == (3, 0)
    assert count_gaps(3, [7]) == (7, 3)  # 4, 5 and 6 missing
    assert count_gaps(7, [5, 6, 8]) == (8, 0)  # late ones fill nothing and count nothing
    assert count_gaps(2000, [1000, 1001]) == (2000, 0)  # a step back of 1000: still the same counter, late
    assert count_gaps(2000, [999, 1001]) == (1001, 1)  # more than 1000 back: the device restarted its counter


def test_a_message_the_database_refuses_is_quarantined_with_its_reason() -> None:
    item = reading("sa-0001", T0, {"x": 1})
    item.payload = '{"ts": 1, "metrics": {"温度": 1e999}}'.encode()
    out = reject_unstorable(item, ValueError("value out of range for type double\nLINE 1: ..."))
    assert isinstance(out.outcome, Rejected)
    r = out.outcome
    assert (r.reason, r.device_id, r.topic) == (Reason.SCHEMA, "sa-0001", item.topic)
    assert r.detail == ("the database cannot store this message (value out of range for type double): "
                        "change the value it names")
    assert (r.payload, r.payload_encoding, r.payload_truncated) == (item.payload.decode(), "utf8", False)
    assert (out.received, out.topic, out.payload) == (item.received, item.topic, item.payload)
    assert "ValueError" in reject_unstorable(item, ValueError("")).outcome.detail  # type: ignore[union-attr]


def test_the_state_document_lists_devices_in_lock_order_with_the_batchs_own_gaps() -> None:
    """One JSON object per device, in device order (two ingest processes lock state rows in the same order and
    wait for each other instead of deadlocking); the gaps inside the batch are counted from its first number."""
    p = prepare_batch([
        reading("sp-0002", T0 + 2000, {"pressure_mpa": 0.3}, seq=5, received=10.0),
        reading("sp-0002", T0, {"pressure_mpa": 0.2, "huge": 10**400}, seq=6, received=11.0),
        reading("sp-0002", T0 + 1000, {"pressure_mpa": 0.25}, seq=9, received=12.0),
        Item(StatusIn("sa-0001", False, False), 13.0, "t", b"offline"),
    ])
    assert p.state_json is not None
    doc = json.loads(p.state_json)  # valid JSON even with an integer orjson cannot write
    assert [d["device_id"] for d in doc] == ["sa-0001", "sp-0002"]
    sa, sp = doc
    assert (sa["online"], sa["status"], sa["status_at_s"], sa["seen_s"], sa["first_seq"], sa["lv"]) == (
        False, "offline", 13.0, None, None, None)
    assert (sp["online"], sp["seen_s"], sp["first_seq"], sp["cont_last"], sp["cont_gaps"], sp["seqs"]) == (
        True, 12.0, 5, 9, 2, [5, 6, 9])
    assert sp["lv"] == {"pressure_mpa": 0.3, "huge": 10**400}
    assert (sp["min_ts"], sp["max_ts"]) == (T0, T0 + 2000)
