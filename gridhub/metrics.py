"""Counters shared by every process, kept in the database and rendered in Prometheus text format."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

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


def render_counters(rows: Iterable[tuple[str, str, float]]) -> str:
    by_name: dict[str, dict[str, float]] = {}
    for name, labels, value in rows:
        by_name.setdefault(name, {})[labels] = value
    for name in KNOWN:
        by_name.setdefault(name, {})
    q = by_name["gridhub_quarantined_total"]
    for r in Reason:
        q.setdefault(f'reason="{r.value}"', 0.0)
    q.pop("", None)
    out: list[str] = []
    for name in sorted(by_name):
        kind, help_text = KNOWN.get(name, ("gauge" if not name.endswith("_total") else "counter", name))
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in sorted(by_name[name].items()):
            sample = f"{name}{{{labels}}}" if labels else name
            out.append(f"{sample} {int(value)}" if value == int(value) else f"{sample} {value!r}")
    return "\n".join(out) + "\n"
