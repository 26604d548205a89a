"""Ingest through the real broker into the real database: duplicates, late data, every reason code,
liveness and retained status, unknown metrics, the broker's ACL, registry changes, a garbage flood, and
a database connection lost mid-stream."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from ingest_env import Hub, Publisher, counter, make_hub, topic, wait_received, wait_until

from gridhub.db import REGISTRY_CHANNEL
from gridhub.ingest.service import IngestService
from gridhub.mqtt_fastpath import BufferedSocket
from gridhub.settings import IngestSettings, Settings

NOW = lambda: int(time.time() * 1000)  # noqa: E731


@pytest.fixture(scope="module")
def hub(make_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    h = make_hub(make_database, tmp_path_factory.mktemp("ingest-hub"))
    yield h
    h.broker.stop()


@pytest.fixture(scope="module")
def ingest(hub: Hub) -> Iterator[IngestService]:
    svc = IngestService(hub.settings, IngestSettings(window=1000, batch=500, linger_ms=50))
    svc.start()
    wait_until(svc.connected.is_set, 30, "ingest connected")
    yield svc
    svc.stop(end_session=True)
    assert not svc.failed.is_set()


@pytest.fixture
def conn(hub: Hub) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(hub.db_url, autocommit=True) as c:
        yield c


def received(conn: psycopg.Connection[Any]) -> float:
    return counter(conn, "gridhub_messages_received_total")


def send_and_wait(hub: Hub, conn: psycopg.Connection[Any], device: str | None,
                  messages: list[tuple[str, bytes | str]], **kw: Any) -> None:
    before = received(conn)
    pub = Publisher(hub, device)
    try:
        n = pub.send(messages, **kw)
    finally:
        pub.close()
    wait_received(hub.db_url, before + n)


def reading(ts: int | str, seq: int | None, **metrics: Any) -> bytes:
    body: dict[str, Any] = {"ts": ts, "metrics": metrics}
    if seq is not None:
        body["seq"] = seq
    return orjson.dumps(body)


def test_a_plain_subscription_by_default_on_mosquitto(ingest: IngestService) -> None:
    # mosquitto forgets $share subscriptions at a restart (ingest/README.md): sharing is opt-in
    assert ingest.protocol == 4 and not ingest.shared


def test_consumer_reads_through_the_fast_receive_path(ingest: IngestService) -> None:
    assert ingest.direct_receive
    assert ingest._client is not None and isinstance(ingest._client.socket(), BufferedSocket)


def test_consumer_takes_its_batching_from_the_environment(hub: Hub, ingest: IngestService,
                                                          conn: psycopg.Connection[Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """GRIDHUB_INGEST_* reach the consumer through Settings: batches of at most 50 (paho's own decoding against
    the fast path is tests/unit/test_fastpath_paho.py)."""
    monkeypatch.setenv("GRIDHUB_INGEST_WINDOW", "100")
    monkeypatch.setenv("GRIDHUB_INGEST_BATCH", "50")
    monkeypatch.setenv("GRIDHUB_INGEST_LINGER_MS", "20")
    # a session of its own beside the module's consumer, which holds ingest's leased slot (ingest/slot.py)
    monkeypatch.setenv("GRIDHUB_INGEST_SHARED", "1")
    settings = Settings(**hub.with_instance("env-batching").model_dump(exclude={"ingest"}))
    assert (settings.ingest.window, settings.ingest.batch_max, settings.ingest.linger_s) == (100, 50, 0.02)
    svc = IngestService(settings)
    svc.start()
    try:
        assert svc.direct_receive and svc._client is not None and svc._preparer is not None
        ts = NOW() - 6000
        send_and_wait(hub, conn, "sa-0002", [(topic("sa-0002"), reading(ts + i, 300_000 + i, battery_pct=40))
                                             for i in range(300)])
        assert conn.execute("SELECT count(*) FROM readings WHERE device_id = 'sa-0002' AND seq BETWEEN 300000 AND 300299"
                            ).fetchone() == (300,)
    finally:
        svc.stop(end_session=True)
    assert not svc.failed.is_set()
    assert svc.batches * 50 >= svc.totals.messages  # no batch above GRIDHUB_INGEST_BATCH


def test_two_shared_consumers_split_the_stream(hub: Hub, ingest: IngestService, conn: psycopg.Connection[Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """GRIDHUB_INGEST_SHARED=1: instances on $share/ingest split the stream between them (the default instance
    beside them takes everything on its plain subscription; the store keeps each reading once)."""
    monkeypatch.setenv("GRIDHUB_INGEST_SHARED", "1")
    shared = [IngestService(Settings(**hub.with_instance(f"shared-{n}").model_dump(exclude={"ingest"})))
              for n in (1, 2)]
    for svc in shared:
        svc.start()
    try:
        assert all(svc.protocol == 4 and svc.shared for svc in shared)  # MQTT 3.1.1 with $share
        ts = NOW() - 4000
        send_and_wait(hub, conn, "sa-0001", [(topic("sa-0001"), reading(ts + i, 880_000 + i, battery_pct=50))
                                             for i in range(200)])
        assert conn.execute("SELECT count(*) FROM readings WHERE device_id = 'sa-0001' AND seq >= 880000"
                            ).fetchone() == (200,)
        wait_until(lambda: sum(svc.totals.messages for svc in shared) == 200, 30, "the shares to add up")
    finally:
        for svc in shared:
            svc.stop(end_session=True)
    assert not any(svc.failed.is_set() for svc in shared)
    assert all(0 < svc.totals.messages < 200 for svc in shared)  # the broker shared the stream between the two


def test_ingest_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WINDOW", "BATCH", "LINGER_MS", "READ_GATHER_MS", "MQTT5"):
        monkeypatch.delenv(f"GRIDHUB_INGEST_{name}", raising=False)
    default = IngestSettings()
    assert (default.window, default.batch_max, default.linger_s, default.read_gather_s, default.mqtt5) == (
        4000, 2000, 0.05, 0.002, True)
    monkeypatch.setenv("GRIDHUB_INGEST_WINDOW", "1000")
    monkeypatch.setenv("GRIDHUB_INGEST_LINGER_MS", "5")
    monkeypatch.setenv("GRIDHUB_INGEST_READ_GATHER_MS", "0")
    monkeypatch.setenv("GRIDHUB_INGEST_MQTT5", "0")
    s = Settings().ingest
    assert (s.window, s.batch_max, s.linger_s, s.read_gather_s, s.mqtt5) == (1000, 500, 0.005, 0.0, False)


@pytest.mark.parametrize(("env", "says"), [
    ({"GRIDHUB_INGEST_WINDOW": "0"}, "GRIDHUB_INGEST_WINDOW must be a positive"),
    ({"GRIDHUB_INGEST_BATCH": "-5"}, "GRIDHUB_INGEST_BATCH must be a positive"),
    ({"GRIDHUB_INGEST_WINDOW": "100", "GRIDHUB_INGEST_BATCH": "200"}, "cannot exceed GRIDHUB_INGEST_WINDOW"),
    ({"GRIDHUB_INGEST_LINGER_MS": "-1"}, "GRIDHUB_INGEST_LINGER_MS must be a number of milliseconds"),
    ({"GRIDHUB_INGEST_MQTT5": "maybe"}, "mqtt5"),
])
def test_ingest_settings_refuse_what_cannot_work(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                 says: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=says):
        Settings()


def test_duplicates_are_stored_once(hub: Hub, ingest: IngestService, conn: psycopg.Connection[Any]) -> None:
    ts = NOW() - 10_000
    dup_before = counter(conn, "gridhub_duplicates_total")
    msg = reading(ts, 7001, battery_pct=81, temperature_c=21.5)
    no_seq = reading(ts + 1, None, battery_pct=80)
    send_and_wait(hub, conn, "sa-0002", [(topic("sa-0002"), msg), (topic("sa-0002"), msg)])
    send_and_wait(hub, conn, "sa-0002", [(topic("sa-0002"), msg), (topic("sa-0002"), no_seq),
                                         (topic("sa-0002"), no_seq)])
    rows = conn.execute("SELECT metric, value, seq FROM readings WHERE device_id = 'sa-0002' AND ts = "
                        "to_timestamp(%s / 1000.0) ORDER BY metric", (ts,)).fetchall()
    assert rows == [("battery_pct", 81.0, 7001), ("temperature_c", 21.5, 7001)]
    rows = conn.execute("SELECT value, seq FROM readings WHERE device_id = 'sa-0002' AND ts = "
                        "to_timestamp(%s / 1000.0)", (ts + 1,)).fetchall()
    assert rows == [(80.0, -1)]
    assert counter(conn, "gridhub_duplicates_total") - dup_before == 3


def test_event_duplicates_stored_once(hub: Hub, ingest: IngestService, conn: psycopg.Connection[Any]) -> None:
    ts = NOW() - 5000
    ev = orjson.dumps({"ts": ts, "seq": 9001, "type": "alarm", "detail": {"zone": "厨房"}})
    send_and_wait(hub, conn, "sa-0201", [(topic("sa-0201", "event"), ev)] * 3)
    rows = conn.execute("SELECT type, detail FROM events WHERE device_id = 'sa-0201' AND seq = 9001").fetchall()
    assert rows == [("alarm", {"zone": "厨房"})]


def test_late_data_stored_at_its_own_time_and_latest_is_newest(hub: Hub, ingest: IngestService,
                                                               conn: psycopg.Connection[Any]) -> None:
    now = NOW()
    newest = now - 1000
    three_days = now - 3 * 86_400_000
    year_ago = now - 300 * 86_400_000
    rfc = "2026-01-02T03:04:05.678+08:00"
    send_and_wait(hub, conn, "sp-0001", [(topic("sp-0001"), reading(newest, 100, pressure_mpa=0.31))])
    send_and_wait(hub, conn, "sp-0001", [(topic("sp-0001"), reading(three_days, 50, pressure_mpa=0.20)),
                                         (topic("sp-0001"), reading(year_ago, 10, pressure_mpa=0.10)),
                                         (topic("sp-0001"), reading(rfc, None, pressure_mpa=0.15))])
    stored = dict(conn.execute("SELECT (extract(epoch FROM ts) * 1000)::int8, value FROM readings "
                               "WHERE device_id = 'sp-0001' AND metric = 'pressure_mpa'").fetchall())
    assert stored[three_days] == 0.20 and stored[year_ago] == 0.10 and stored[newest] == 0.31
    assert 0.15 in stored.values()
    latest = conn.execute("SELECT (extract(epoch FROM ts) * 1000)::int8, value FROM latest_readings "
                          "WHERE device_id = 'sp-0001' AND metric = 'pressure_mpa'").fetchone()
    assert latest == (newest, 0.31)


def test_every_reason_code_from_its_input(hub: Hub, ingest: IngestService, conn: psycopg.Connection[Any]) -> None:
    now = NOW()
    cases: list[tuple[str | None, str, bytes, str, str]] = [
        # (publisher, topic, payload, expected reason, a word the detail must name)
        (None, topic("bad.device"), reading(now, 1, battery_pct=50), "bad_topic", "bad.device"),
        ("sa-0001", topic("sa-0001"), b'{"ts": 1, "pad": "' + b"x" * 70_000 + b'"}', "oversize", "65536"),
        ("sa-0001", topic("sa-0001"), b'{"ts": 17900, "metrics": ', "invalid_json", "JSON"),
        ("sa-0001", topic("sa-0001"), b"\xff\xfe\x00binary", "invalid_json", "UTF-8"),
        ("sa-0001", topic("sa-0001"), orjson.dumps({"seq": 1, "metrics": {"battery_pct": 5}}), "schema", "ts"),
        ("sl-0001", topic("sl-0001"), reading(now, 1, lamp_on=1), "schema", "lamp_on"),
        ("sa-0001", topic("sa-0001", "status"), b"maybe", "schema", "online"),
        (None, topic("sa-9999"), reading(now, 1, battery_pct=50), "unregistered_device", "sa-9999"),
        (None, topic("sa-0099"), reading(now, 1, battery_pct=50), "unregistered_device", "retired"),
        ("sa-0001", topic("sa-0001", "event"), orjson.dumps({"ts": now, "type": "explode"}), "unknown_event",
         "explode"),
        ("sa-0001", topic("sa-0001"), reading(now, 2, battery_pct=140), "out_of_range", "battery_pct"),
        ("sa-0001", topic("sa-0001"), reading(now - 500 * 86_400_000, 3, battery_pct=40), "out_of_range",
         "retention"),
        ("sa-0001", topic("sa-0001"), reading(now + 3_600_000, 4, battery_pct=40), "clock_skew", "ahead"),
    ]
    before = {c[3]: counter(conn, "gridhub_quarantined_total", f'reason="{c[3]}"') for c in cases}
    first_id = conn.execute("SELECT coalesce(max(id), 0) FROM quarantine").fetchone()[0]  # type: ignore[index]
    for publisher, t, payload, _, _ in cases:
        send_and_wait(hub, conn, publisher, [(t, payload)])
    rows = conn.execute("SELECT topic, device_id, reason, detail, payload, payload_encoding, payload_truncated "
                        "FROM quarantine WHERE id > %s ORDER BY id", (first_id,)).fetchall()
    assert [r[2] for r in rows] == [c[3] for c in cases]
    for (_, t, payload, reason, word), row in zip(cases, rows, strict=True):
        assert row[0] == t
        assert word in row[3], f"{reason}: detail {row[3]!r} does not name {word!r}"
        if row[5] == "base64":
            assert base64.b64decode(row[4]) == payload[:65536]
        else:
            assert row[4].encode() == payload[:65536]
        assert row[6] == (len(payload) > 65536)
    assert rows[3][5] == "base64" and rows[1][6] is True and len(rows[1][4]) == 65536
    assert rows[0][1] is None and rows[7][1] == "sa-9999"
    counts: dict[str, int] = {}
    for c in cases:
        counts[c[3]] = counts.get(c[3], 0) + 1
    for reason, n in counts.items():
        assert counter(conn, "gridhub_quarantined_total", f'reason="{reason}"') - before[reason] == n


def test_precedence_through_the_broker(hub: Hub, ingest: IngestService, conn: psycopg.Connection[Any]) -> None:
    now = NOW()
    cases = [
        (topic("sa-9999"), b"not json", "invalid_json"),  # unregistered, but invalid JSON comes first
        (topic("sa-9999"), reading(now, 1, battery_pct=500), "unregistered_device"),  # before out_of_range
        (topic("sa-0001", "event"), orjson.dumps({"ts": now + 3_600_000, "type": "nope"}), "unknown_event"),
        (topic("sa-0001"), reading(now + 3_600_000, 1, battery_pct=500), "out_of_range"),  # before clock_skew
    ]
    first_id = conn.execute("SELECT coalesce(max(id), 0) FROM quarantine").fetchone()[0]  # type: ignore[index]
    send_and_wait(hub, conn, None, [(t, p) for t, p, _ in cases])
    reasons = [r[0] for r in conn.execute("SELECT reason FROM quarantine WHERE id > %s ORDER BY id",
                                          (first_id,)).fetchall()]
    assert sorted(reasons) == sorted(c[2] for c in cases)


def test_unknown_metrics_stored_and_counted_booleans_kept(hub: Hub, ingest: IngestService,
                                                          conn: psycopg.Connection[Any]) -> None:
    ts = NOW() - 2000
    before = counter(conn, "gridhub_unknown_metrics_total")
    send_and_wait(hub, conn, "sl-0001", [(topic("sl-0001"), reading(ts, 500, lamp_on=True, lux=12.5,
                                                                     firmware="2.1.0", co2_ppm=415))])
    rows = dict((r[0], (r[1], r[2])) for r in conn.execute(
        "SELECT metric, value, value_json FROM readings WHERE device_id = 'sl-0001' AND seq = 500").fetchall())
    assert rows == {"lamp_on": (None, True), "lux": (12.5, None), "firmware": (None, "2.1.0"),
                    "co2_ppm": (415.0, None)}
    assert counter(conn, "gridhub_unknown_metrics_total") - before == 2
    latest = dict(conn.execute("SELECT metric, value FROM latest_readings WHERE device_id = 'sl-0001'").fetchall())
    assert latest["lamp_on"] is True and latest["firmware"] == "2.1.0" and latest["co2_ppm"] == 415


def test_liveness_retained_status_and_seq_gaps(hub: Hub, ingest: IngestService,
                                               conn: psycopg.Connection[Any]) -> None:
    gaps_before = counter(conn, "gridhub_seq_gaps_total")
    # live, the retained publish is a sign of life to the running consumer
    send_and_wait(hub, conn, "sp-0201", [(topic("sp-0201", "status"), b"online")], retain=True)
    assert conn.execute("SELECT online, last_seen IS NOT NULL FROM device_state WHERE device_id = 'sp-0201'"
                        ).fetchone() == (True, True)
    conn.execute("UPDATE device_state SET last_seen = NULL, online = false, last_seq = NULL, status = NULL "
                 "WHERE device_id = 'sp-0201'")
    # an MQTT 3.1.1 consumer (plain subscriptions, as on the embedded broker) gets the retained copy replayed
    # with the retain flag set: it tells state, not life (a session of its own beside the module's consumer, which
    # holds the leased slot: GRIDHUB_INGEST_SHARED without MQTT 5 is a plain subscription of the process's own)
    svc = IngestService(hub.with_instance("plain-311"), IngestSettings(mqtt5=False, shared=True))
    svc.start()
    try:
        assert svc.protocol == 4 and not svc.shared
        wait_until(lambda: conn.execute("SELECT status FROM device_state WHERE device_id = 'sp-0201'"
                                        ).fetchone() == ("online",), 30, "the retained status stored")
    finally:
        svc.stop(end_session=True)
    online, last_seen = conn.execute(
        "SELECT online, last_seen FROM device_state WHERE device_id = 'sp-0201'").fetchone()  # type: ignore[misc]
    assert (online, last_seen) == (True, None)
    ts = NOW() - 60_000
    send_and_wait(hub, conn, "sp-0201", [(topic("sp-0201"), reading(ts + i, s, pressure_mpa=0.3))
                                         for i, s in enumerate([1, 2, 5, 6, 10])])
    online, last_seen, last_seq, gaps = conn.execute(
        "SELECT online, last_seen, last_seq, seq_gaps FROM device_state WHERE device_id = 'sp-0201'").fetchone()  # type: ignore[misc]
    assert online is True and last_seen is not None and last_seq == 10
    assert counter(conn, "gridhub_seq_gaps_total") - gaps_before == 5  # 3, 4, 7, 8, 9
    send_and_wait(hub, conn, "sp-0201", [(topic("sp-0201", "status"), b"offline")])
    online2, last_seen2, status2 = conn.execute(
        "SELECT online, last_seen, status FROM device_state WHERE device_id = 'sp-0201'").fetchone()  # type: ignore[misc]
    assert (online2, status2) == (False, "offline") and last_seen2 == last_seen
    send_and_wait(hub, conn, "sp-0201", [(topic("sp-0201", "status"), b"", )], retain=True)  # clear retained


def test_device_cannot_publish_as_another(hub: Hub, ingest: IngestService, conn: psycopg.Connection[Any]) -> None:
    ts = NOW() - 3000
    before = received(conn)
    spoof = Publisher(hub, "sa-0001")
    spoof.send([(topic("sa-0002"), reading(ts, 424242, battery_pct=1))])
    spoof.close()
    send_and_wait(hub, conn, "sa-0002", [(topic("sa-0002"), reading(ts, 424243, battery_pct=99))])
    assert received(conn) == before + 1
    seqs = [r[0] for r in conn.execute("SELECT seq FROM readings WHERE device_id = 'sa-0002' AND seq >= 424242")]
    assert seqs == [424243]
    assert not conn.execute("SELECT 1 FROM quarantine WHERE payload LIKE '%424242%'").fetchall()


def test_registry_import_is_picked_up(hub: Hub, ingest: IngestService, conn: psycopg.Connection[Any],
                                      tmp_path: Path) -> None:
    conn.execute("INSERT INTO devices (id, kind, building_id, floor) VALUES ('sa-0777', 'smoke_alarm', 'b-12', 4)")
    conn.execute("SELECT pg_notify(%s, 'changed')", (REGISTRY_CHANNEL,))
    ts = NOW() - 1000
    send_and_wait(hub, conn, None, [(topic("sa-0777"), reading(ts, 1, battery_pct=77))])
    assert conn.execute("SELECT value FROM readings WHERE device_id = 'sa-0777'").fetchall() == [(77.0,)]
    conn.execute("UPDATE devices SET retired = true WHERE id = 'sa-0777'")
    conn.execute("SELECT pg_notify(%s, 'changed')", (REGISTRY_CHANNEL,))
    wait_until(lambda: ingest.registry.get("sa-0777") is not None and ingest.registry["sa-0777"].retired, 30,
               "the retirement noticed")
    send_and_wait(hub, conn, None, [(topic("sa-0777"), reading(ts + 1, 2, battery_pct=77))])
    assert conn.execute("SELECT reason FROM quarantine WHERE device_id = 'sa-0777'").fetchall() == [
        ("unregistered_device",)]


_MARKER_SEQ = itertools.count(31_337_000)

GARBAGE = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"ts": st.one_of(st.integers(), st.text(max_size=30), st.none()),
                           "seq": st.one_of(st.integers(), st.none(), st.text(max_size=3)),
                           "metrics": st.dictionaries(st.sampled_from(["battery_pct", "lamp_on", "x\u0000",
                                                                       "pressure_mpa", "", "a" * 70]),
                                                      st.one_of(st.integers(), st.floats(), st.text(max_size=5),
                                                                st.booleans(), st.none()), max_size=3),
                           "type": st.text(max_size=10), "detail": st.one_of(st.dictionaries(
                               st.text(max_size=5), st.text(max_size=5), max_size=2), st.integers())}
                          ).map(lambda v: json.dumps(v).encode()),
)


@hsettings(max_examples=8, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sa-0001", "sl-0001", "sp-0001", "sa-9999", "bad.id", "cam-0001"]),
                          st.sampled_from(["telemetry", "event", "status"]), GARBAGE), min_size=50, max_size=250))
def test_garbage_flood_leaves_the_consumer_healthy(hub: Hub, ingest: IngestService, flood: list[Any]) -> None:
    with psycopg.connect(hub.db_url, autocommit=True) as conn:
        send_and_wait(hub, conn, None, [(topic(d, ch), p) for d, ch, p in flood])
        assert not ingest.failed.is_set()
        ts, seq = NOW() - 500, next(_MARKER_SEQ)
        send_and_wait(hub, conn, "sa-0001", [(topic("sa-0001"), reading(ts, seq, battery_pct=66))])
        assert conn.execute("SELECT value FROM readings WHERE device_id = 'sa-0001' AND seq = %s",
                            (seq,)).fetchall() == [(66.0,)]


def test_database_connection_lost_mid_stream_loses_nothing(hub: Hub, ingest: IngestService,
                                                           conn: psycopg.Connection[Any]) -> None:
    base = NOW() - 20_000
    pub = Publisher(hub, "sa-0201")
    msgs = [(topic("sa-0201"), reading(base + i, 600_000 + i, battery_pct=i % 100)) for i in range(6000)]
    before = received(conn)
    infos = [pub.client.publish(t, p, qos=1) for t, p in msgs[:3000]]
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND application_name = 'gridhub-ingest'")
    infos += [pub.client.publish(t, p, qos=1) for t, p in msgs[3000:]]
    for i in infos:
        i.wait_for_publish(60)
    pub.close()
    wait_received(hub.db_url, before + 6000, timeout=120)
    n = conn.execute("SELECT count(*) FROM readings WHERE device_id = 'sa-0201' AND seq >= 600000").fetchone()
    assert n == (6000,)
