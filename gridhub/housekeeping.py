"""Retention run periodically: one process at a time (an advisory lock), the rest skip."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import psycopg

from gridhub.db import RETENTION_LOCK, apply_retention, connect
from gridhub.settings import Settings

log = logging.getLogger("gridhub.retention")

__all__ = ["RETENTION_LOCK", "RetentionLoop", "retention_once"]  # RETENTION_LOCK is gridhub.db's


# How long the API keeps an Idempotency-Key's answer (gridhub/api/idempotency.py: an offline action older than
# this is refused, so that no replay can outlive its key).
IDEMPOTENCY_KEEP = timedelta(days=7)


def forget_idempotency_keys(conn: psycopg.Connection[Any], keep: timedelta = IDEMPOTENCY_KEEP) -> int:
    """Delete the stored answers of idempotency keys older than `keep`; returns how many."""
    return conn.execute("DELETE FROM idempotency_keys WHERE created_at < now() - %s::interval", (keep,)).rowcount


def retention_once(settings: Settings) -> dict[str, int] | None:
    """Apply retention unless another process is doing it right now (then None)."""
    assert settings.database_url
    with connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,)).fetchone()
        if not row or not row[0]:
            return None
        try:
            out = apply_retention(settings.database_url, settings.readings_days, settings.quarantine_days)
            out["idempotency_keys"] = forget_idempotency_keys(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))
    if any(out.values()):
        log.info("retention: %s", ", ".join(f"{k} {v} removed" for k, v in out.items()))
    return out


class RetentionLoop:
    """Runs retention at start and then every `interval_s` in a daemon thread."""

    def __init__(self, settings: Settings, interval_s: float = 3600.0) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gridhub-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                retention_once(self.settings)
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.exception("retention pass failed; retrying in %.0f s", self.interval_s)
            self._stop.wait(self.interval_s)
