"""Counters shared by every process, kept in the database and exposed through prometheus-client."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gridhub.protocol import Reason

# name -> (type, help); every one is printed even at zero so that dashboards and alerts have a series.
KNOWN: dict[str, tuple[str, str]] = {
    "gridhub_messages_received_total": ("counter", "Device messages received by ingest"),
    "gridhub_readings_stored_total": ("counter", "Metric readings stored"),
    "gridhub_events_stored_total": ("counter", "Device events stored"),
    "gridhub_quarantined_total": ("counter", "Messages quarantined, by reason"),
    "gridhub_seq_gaps_total": ("counter", "Gaps counted in device sequence numbers"),
    "gridhub_duplicates_total": ("counter", "Redelivered or re-sent messages stored once"),
    "gridhub_unknown_metrics_total": ("counter", "Readings of metric names the kind does not define, stored"),
    "gridhub_ingest_batches_total": ("counter", "Batches committed by ingest"),
    "gridhub_ingest_batch_messages_total": ("counter", "Messages in the batches committed by ingest"),
    "gridhub_ingest_write_seconds_total": ("counter", "Time ingest spent writing batches (before COMMIT)"),
    "gridhub_ingest_lag_seconds": ("gauge", "Receive-to-commit delay of the newest batch, per ingest instance"),
    "gridhub_ingest_queue_messages": ("gauge", "Messages received and not yet committed, per ingest instance"),
}


def bump(conn: psycopg.Connection[Any], values: Mapping[tuple[str, str], float]) -> None:
    """Add to counters inside the caller's transaction; rows are taken in a fixed order (no deadlocks)."""
    items = sorted((k, v) for k, v in values.items() if v)
    if not items:
        return
    conn.execute(
        "INSERT INTO counters (name, labels, value)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[]) AS u(name, labels, value) ORDER BY name, labels"
        " ON CONFLICT (name, labels) DO UPDATE SET value = counters.value + EXCLUDED.value",
        ([k[0] for k, _ in items], [k[1] for k, _ in items], [float(v) for _, v in items]),
    )


_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE_RE = re.compile(r"\\(.)")


def _labels(text: str) -> dict[str, str]:
    """``reason="schema",instance="i-1"`` (as the counters table keeps them) as a dict."""
    out: dict[str, str] = {}
    for m in _LABEL_RE.finditer(text):
        out[m.group(1)] = _UNESCAPE_RE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
    return out


class CounterRows(Collector):
    """A prometheus-client collector over rows of the ``counters`` table: every known series is
    collected even at zero (and every quarantine reason), names in order, samples in label order."""

    def __init__(self, rows: Iterable[tuple[str, str, float]]) -> None:
        by_name: dict[str, dict[str, float]] = {}
        for name, labels, value in rows:
            by_name.setdefault(name, {})[labels] = value
        for name in KNOWN:
            by_name.setdefault(name, {})
        q = by_name["gridhub_quarantined_total"]
        for r in Reason:
            q.setdefault(f'reason="{r.value}"', 0.0)
        q.pop("", None)
        self._by_name = by_name

    def collect(self) -> Iterator[Metric]:
        for name in sorted(self._by_name):
            kind, help_text = KNOWN.get(name, ("gauge" if not name.endswith("_total") else "counter", name))
            # prometheus-client names a counter's family without its _total (and adds it back on output)
            family = Metric(name.removesuffix("_total") if kind == "counter" else name, help_text, kind)
            for labels, value in sorted(self._by_name[name].items()):
                family.add_sample(name, _labels(labels), float(value))
            yield family


def render_counters(rows: Iterable[tuple[str, str, float]]) -> str:
    """The Prometheus text exposition of the counters table's rows (``prometheus_client.generate_latest``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CounterRows(rows))
    return generate_latest(registry).decode("utf-8")
