"""Ingest's slot: partition 0 of the device stream held by lease (gridhub/leases.py), so that whichever ingest
instance holds it consumes the one persistent session named by the partition (`gridhub-ingest-p0`), and a standby
resumes that session when the holder dies.

`SlotKeeper` joins the part's instances, renews the lease every third of a lease on a thread of its own and, after
every round, tells the consumer which lease it holds now (`reconcile(lease or None)`); the consumer connects under
a lease it gains and disconnects from one it lost. `confirm(lease)` asks the database, right before an
acknowledgement batch and before a reconnect, whether the lease is still this process's with its epoch; anything
short of a yes (another holder, an expired lease, a database that does not answer) is a no.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Literal

import psycopg

from gridhub.db import DatabaseUnavailable, LazyConnection
from gridhub.leases import Lease, PartitionLeases, holder_name
from gridhub.settings import Settings
from gridhub.waiting import DATABASE, DATABASE_ERRORS, WAITS, GaveUp, Stopping, keep_trying

__all__ = ["PART", "PARTITION", "SlotKeeper", "describe"]

log = logging.getLogger("gridhub.ingest")

PART = "ingest"
PARTITION = 0  # on mosquitto ingest has one partition: its wildcard subscription takes every device's messages
APPLICATION_NAME = "gridhub-ingest-lease"
WAITER = "ingest-lease"


class SlotKeeper:
    """Holds (or stands by for) ingest's partition 0; see the module docstring."""

    def __init__(self, settings: Settings, reconcile: Callable[[Lease | None], None],
                 on_failure: Callable[[], None]) -> None:
        assert settings.database_url
        if settings.partitions != 1:
            raise ValueError(f"GRIDHUB_PARTITIONS={settings.partitions}: ingest on mosquitto takes one partition (its "
                             "subscription receives every device's messages); set GRIDHUB_PARTITIONS=1")
        self.url = settings.database_url
        self.leases = PartitionLeases(PART, settings.partitions, holder_name(settings.instance_id), settings.lease_s)
        self._reconcile = reconcile
        self._on_failure = on_failure
        self._db = LazyConnection(settings.database_url, application_name=APPLICATION_NAME, autocommit=True)
        self._fence_db = LazyConnection(settings.database_url, application_name=APPLICATION_NAME, autocommit=True)
        self._fence_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> str:
        return self.leases.holder

    def first_round(self, stopping: Stopping) -> Lease | None | Literal[GaveUp.STOPPING]:
        """Join and take the partition if it is free, waiting through database outages; the lease held, None for a
        standby."""

        def attempt() -> Lease | None:
            conn = self._db.get()
            self.leases.join(conn)
            return self.leases.renew(conn).held.get(PARTITION)

        return keep_trying(attempt, waiter=WAITER, stopping=stopping, on_error=self._db.forget_if_broken,
                           grace_s=None, url=self.url)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ingest-lease", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Renew now rather than at the next round (a confirmation failed)."""
        self._wake.set()

    def confirm(self, lease: Lease) -> bool:
        """Whether `lease` is still this process's, with its epoch, by the database's clock (any thread)."""
        with self._fence_lock:
            try:
                return self.leases.holds(self._fence_db.get(), lease)
            except DATABASE_ERRORS:
                self._fence_db.forget_if_broken()
                return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(self.leases.renew_every_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    held = self.leases.renew(self._db.get()).held.get(PARTITION)
                except DATABASE_ERRORS as exc:  # the part waits (one log line for all its threads); the lease may
                    self._db.forget_if_broken()  # run out meanwhile: then nothing is acknowledged until it is renewed
                    WAITS.begin(DATABASE, WAITER, type(exc).__name__)
                    continue
                WAITS.end(DATABASE, WAITER)
                self._reconcile(held)
        except Exception:  # a bug: the lease runs out and nothing more is acknowledged; let the supervisor restart us
            log.exception("ingest's lease keeper failed")
            self._on_failure()
        finally:
            WAITS.end(DATABASE, WAITER)

    def stop(self) -> None:
        """Stop renewing (once the consumer has acknowledged what it stored and before it disconnects)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def release(self) -> None:
        """Release the lease (once disconnected), so that a standby takes over at its next round rather than a lease
        later."""
        try:
            self.leases.release(self._db.get())
        except (psycopg.Error, DatabaseUnavailable) as exc:
            log.warning("could not release ingest's lease (%s): a standby takes over when it expires in %g s", exc,
                        self.leases.lease_s)
        self._db.close()
        with self._fence_lock:
            self._fence_db.close()


def describe(lease: Lease) -> str:
    return f"partition {lease.partition} (epoch {lease.epoch})"
