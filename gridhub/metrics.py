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
    "gridhub_notifications_total": ("counter", "Notification deliveries by channel and result"
                                    " (sent, failed, skipped, retry: an attempt to be retried)"),
}

# name -> (help, bucket upper bounds in seconds); kept as _bucket/_sum/_count counter rows, exposed as histograms
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "gridhub_notification_send_seconds": ("Time one notification request took, by channel",
                                          (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)),
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


def observe(conn: psycopg.Connection[Any], name: str, labels: str, value: float) -> None:
    """One observation of a histogram in HISTOGRAMS, in the caller's transaction (cumulative buckets)."""
    _, bounds = HISTOGRAMS[name]
    sep = "," if labels else ""
    values: dict[tuple[str, str], float] = {(f"{name}_count", labels): 1.0, (f"{name}_sum", labels): value or 1e-9}
    for b in (*bounds, float("inf")):
        if value <= b:
            values[(f"{name}_bucket", f'{labels}{sep}le="{"+Inf" if b == float("inf") else b}"')] = 1.0
    bump(conn, values)


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

    def _histograms(self) -> Iterator[Metric]:
        for base, (help_text, bounds) in HISTOGRAMS.items():
            family = Metric(base, help_text, "histogram")
            buckets = self._by_name.pop(f"{base}_bucket", {})
            sums = self._by_name.pop(f"{base}_sum", {})
            counts = self._by_name.pop(f"{base}_count", {})
            for labels, count in sorted(counts.items()):
                lab = _labels(labels)
                for b in (*bounds, float("inf")):
                    le = "+Inf" if b == float("inf") else str(b)
                    key = f'{labels}{"," if labels else ""}le="{le}"'
                    # buckets are cumulative: every bound at or above the value was bumped
                    family.add_sample(f"{base}_bucket", {**lab, "le": le}, float(buckets.get(key, 0.0)))
                family.add_sample(f"{base}_count", lab, float(count))
                family.add_sample(f"{base}_sum", lab, float(sums.get(labels, 0.0)))
            yield family

    def collect(self) -> Iterator[Metric]:
        yield from self._histograms()
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
