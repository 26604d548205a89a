"""Partitions held by lease in PostgreSQL: which instance of a part (ingest, alerts, detect) works on which of the
part's P partitions (CONTRACT §8, HOUSE.md "Scale by partitions").

Invariant: at any time at most one holder's lease on a partition is unexpired, by the database's clock (`now()`,
never the process's), and every change of holder raises the partition's `epoch` (a fencing token). A holder
acknowledges nothing of a partition unless `holds()` has just confirmed its lease with the epoch it took it with;
a lease that expired is lost even to its own holder (it is taken again, by anyone, with a new epoch). So a holder
that stalled past its lease (SIGSTOP, a long GC, a frozen VM) and woke up finds `holds()` false, stops, and must
not reconnect under the partition's name: the new holder has that.

Each instance registers with a heartbeat (`part_instances`); the instances seen within one lease are the live
ones. Every `renew()` round (every third of a lease) renews the holder's unexpired leases, takes free or expired
partitions up to its fair share, ceil(P / live), and names a surplus to give back when it holds more than that
(or more than floor(P / live) while another live instance holds fewer): the caller stops working on the surplus,
then `release()`s it. A clean stop releases everything at once, so a standby takes over at its next round instead
of a lease later. Every instance of a part must use the same P: `join()` refuses another P while an instance with
it is live, and reshapes the partitions once none is.

Parts use `LeaseKeeper` (below): it runs the rounds on a thread of its own, waits through database outages, tells
its owner what it gained, lost and must give back (`Change`), confirms a lease on a connection of its own and
releases what it is given back; `PartitionLeases` is the one round it runs.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

from gridhub.db import DatabaseUnavailable, LazyConnection
from gridhub.settings import DEFAULT_TOPIC_PREFIX
from gridhub.waiting import DATABASE, DATABASE_ERRORS, WAITS, GaveUp, Stopping, keep_trying

__all__ = ["LEASE_S", "Change", "Lease", "LeaseKeeper", "PartitionLeases", "PartitionMismatch", "Round", "holder_name",
           "session_client_id"]

log = logging.getLogger("gridhub.leases")

LEASE_S = 15.0  # how long a lease lasts unless renewed; `GRIDHUB_LEASE_S` (Settings.lease_s)


class PartitionMismatch(RuntimeError):
    """Another live instance of the part uses another number of partitions."""


@dataclass(frozen=True)
class Lease:
    """One partition held: `epoch` is the fencing token it was taken with."""

    part: str
    partition: int
    holder: str
    epoch: int


@dataclass(frozen=True)
class Round:
    """What one `renew()` round changed. A partition in both `lost` and `gained` was lost and taken again under a
    new epoch: the caller ends its old work on it first."""

    held: dict[int, Lease]
    gained: frozenset[int] = frozenset()
    lost: frozenset[int] = frozenset()
    surplus: frozenset[int] = frozenset()
    live: int = 1


def holder_name(instance_id: str) -> str:
    """A holder name for one process: the instance id (which names it in logs) and a random tag, so that a process
    restarted under the same instance id is a new holder and waits for the old lease to expire rather than take it
    from a stalled twin."""
    return f"{instance_id}/{secrets.token_hex(4)}"


def session_client_id(part: str, partition: int, topic_prefix: str = DEFAULT_TOPIC_PREFIX) -> str:
    """The MQTT client id of one partition's persistent session, named by the part and the partition and never by
    the process, so that whichever instance holds the partition resumes the same session: `gridhub-ingest-p0`.
    It starts with `gridhub-` like every hub client id (on the embedded broker only the hub's account may use
    those; on mosquitto's device listener a client id is the user name); a hub on another topic prefix adds it,
    so that two hubs sharing a broker do not share sessions."""
    name = f"gridhub-{part}-p{partition}"
    if topic_prefix.strip("/") != DEFAULT_TOPIC_PREFIX:
        name += "-" + re.sub(r"[^A-Za-z0-9]+", "-", topic_prefix).strip("-")
    return name[:128]


@dataclass
class PartitionLeases:
    """One instance's leases on the partitions of one part. Not thread-safe: one thread renews, others may call
    `holds()` on their own connections."""

    part: str
    partitions: int
    holder: str
    lease_s: float = LEASE_S
    held: dict[int, Lease] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"{self.part}: the number of partitions must be 1 or more, not {self.partitions}")
        if self.lease_s <= 0:
            raise ValueError(f"{self.part}: a lease must last more than 0 s, not {self.lease_s}")

    @property
    def renew_every_s(self) -> float:
        """How often the holder renews: three rounds a lease, so that one slow round does not lose it."""
        return self.lease_s / 3

    def join(self, conn: psycopg.Connection[Any]) -> None:
        """Register this instance and make sure the part has exactly P partition rows; `PartitionMismatch` when a
        live instance of the part uses another P."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('part_leases:' || %s))", (self.part,))
            others = conn.execute(
                "SELECT holder, partitions FROM part_instances WHERE part = %s AND holder <> %s AND partitions <> %s"
                " AND seen_at > now() - make_interval(secs => %s) ORDER BY holder LIMIT 1",
                (self.part, self.holder, self.partitions, self.lease_s)).fetchone()
            if others is not None:
                raise PartitionMismatch(
                    f"{self.part}: instance {others[0]} runs with {others[1]} partitions, this one with "
                    f"{self.partitions} (GRIDHUB_PARTITIONS): every instance of a part must use the same number; "
                    "to change it, stop every instance of the part and start them again with the new one "
                    "(docs/upgrading.md)")
            conn.execute("DELETE FROM part_leases WHERE part = %s AND partition >= %s", (self.part, self.partitions))
            conn.execute("INSERT INTO part_leases (part, partition) SELECT %s, g FROM generate_series(0, %s) g"
                         " ON CONFLICT DO NOTHING", (self.part, self.partitions - 1))
            self._heartbeat(conn)

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "INSERT INTO part_instances (part, holder, partitions) VALUES (%s, %s, %s)"
            " ON CONFLICT (part, holder) DO UPDATE SET seen_at = now(), partitions = EXCLUDED.partitions",
            (self.part, self.holder, self.partitions))

    def renew(self, conn: psycopg.Connection[Any]) -> Round:
        """One round: heartbeat, renew the unexpired leases held, take free or expired partitions up to the fair
        share, and name the surplus to give back. Runs in one transaction on `conn`."""
        with conn.transaction():
            self._heartbeat(conn)
            renewed = {r[0]: int(r[1]) for r in conn.execute(
                "UPDATE part_leases SET expires_at = now() + make_interval(secs => %s)"
                " WHERE part = %s AND holder = %s AND expires_at > now() RETURNING partition, epoch",
                (self.lease_s, self.part, self.holder))}
            live = [r[0] for r in conn.execute(
                "SELECT holder FROM part_instances WHERE part = %s AND seen_at > now() - make_interval(secs => %s)",
                (self.part, self.lease_s))]
            counts = dict.fromkeys(live, 0)
            for holder, n in conn.execute(
                    "SELECT holder, count(*) FROM part_leases WHERE part = %s AND holder IS NOT NULL"
                    " AND expires_at > now() GROUP BY holder", (self.part,)):
                counts[holder] = int(n)
            counts[self.holder] = len(renewed)
            n_live = max(1, len(live))
            ceil_share, floor_share = math.ceil(self.partitions / n_live), self.partitions // n_live
            surplus = self._surplus(renewed, counts, live, ceil_share, floor_share)
            taken: dict[int, int] = {}
            want = ceil_share - len(renewed)
            if len(renewed) >= floor_share and any(counts.get(h, 0) < floor_share for h in live if h != self.holder):
                want = 0  # a partition given back is for the instance below its share, not for us to take again
            if want > 0 and not surplus:
                taken = {r[0]: int(r[1]) for r in conn.execute(
                    "UPDATE part_leases SET holder = %s, expires_at = now() + make_interval(secs => %s),"
                    " epoch = epoch + 1 WHERE part = %s AND partition IN ("
                    "  SELECT partition FROM part_leases WHERE part = %s AND (holder IS NULL OR expires_at <= now())"
                    "  ORDER BY partition LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING partition, epoch",
                    (self.holder, self.lease_s, self.part, self.part, want))}
            # expired instances are forgotten after a while (their leases are long free)
            conn.execute("DELETE FROM part_instances WHERE part = %s AND seen_at < now() - make_interval(secs => %s)",
                         (self.part, self.lease_s * 20))
        before = self.held
        now_held = {p: Lease(self.part, p, self.holder, e) for p, e in (renewed | taken).items()}
        lost = frozenset(p for p, lease in before.items() if p not in renewed or renewed[p] != lease.epoch)
        self.held = now_held
        return Round(dict(now_held), frozenset(taken), lost, surplus, n_live)

    def _surplus(self, renewed: dict[int, int], counts: dict[str, int], live: list[str], ceil_share: int,
                 floor_share: int) -> frozenset[int]:
        """Partitions to give back: those above ceil(P / live); or one, when this instance holds the most (ties:
        the smallest name) and more than floor(P / live) while a live instance holds fewer than that."""
        mine = sorted(renewed)
        if len(mine) > ceil_share:
            return frozenset(mine[ceil_share:])
        starved = any(counts.get(h, 0) < floor_share for h in live)
        if starved and len(mine) > floor_share:
            top = min(counts, key=lambda h: (-counts[h], h))
            if top == self.holder:
                return frozenset(mine[-1:])
        return frozenset()

    def holds(self, conn: psycopg.Connection[Any], lease: Lease) -> bool:
        """Whether `lease` is still this holder's, with its epoch, unexpired by the database's clock: ask right
        before acknowledging anything of its partition and before reconnecting under its name. Use a connection
        that is not inside a long transaction (`now()` is the transaction's start)."""
        row = conn.execute(
            "SELECT 1 FROM part_leases WHERE part = %s AND partition = %s AND holder = %s AND epoch = %s"
            " AND expires_at > now()", (lease.part, lease.partition, lease.holder, lease.epoch)).fetchone()
        return row is not None

    def holds_all(self, conn: psycopg.Connection[Any], leases: Iterable[Lease]) -> frozenset[int]:
        """`holds()` for several leases of this part in one query: the partitions whose lease is still this
        holder's with its epoch, unexpired by the database's clock."""
        wanted = [(le.partition, le.epoch) for le in leases if le.part == self.part and le.holder == self.holder]
        if not wanted:
            return frozenset()
        rows = conn.execute(
            "SELECT partition FROM part_leases WHERE part = %s AND holder = %s AND expires_at > now()"
            " AND (partition, epoch) IN (SELECT * FROM unnest(%s::int[], %s::bigint[]))",
            (self.part, self.holder, [w[0] for w in wanted], [w[1] for w in wanted])).fetchall()
        return frozenset(int(r[0]) for r in rows)

    def release(self, conn: psycopg.Connection[Any], partitions: frozenset[int] | None = None) -> None:
        """Give back `partitions` (all, and leave the live instances, when None), once nothing works on them any
        more: a standby takes them at its next round."""
        with conn.transaction():
            if partitions is None:
                conn.execute("UPDATE part_leases SET holder = NULL, expires_at = NULL WHERE part = %s AND holder = %s",
                             (self.part, self.holder))
                conn.execute("DELETE FROM part_instances WHERE part = %s AND holder = %s", (self.part, self.holder))
            else:
                conn.execute("UPDATE part_leases SET holder = NULL, expires_at = NULL WHERE part = %s AND holder = %s"
                             " AND partition = ANY(%s)", (self.part, self.holder, sorted(partitions)))
        self.held = {} if partitions is None else {p: le for p, le in self.held.items() if p not in partitions}


@dataclass(frozen=True)
class Change:
    """What one round of a `LeaseKeeper` changed, as told to its `on_change` callback.

    `held`: every lease held after the round (including `surplus`). `gained`: leases taken (a partition retaken
    under a new epoch is in `lost` with its old lease and in `gained` with its new one: end the old work first).
    `lost`: leases this process must stop using at once (another holder has them, or they ran out: acknowledge
    nothing more, disconnect, never reconnect under their names). `surplus`: leases to give back for a fair
    share: stop consuming them, acknowledge what was stored, disconnect, then `LeaseKeeper.give_back()` them; each
    is named once (until it is given back or lost)."""

    held: dict[int, Lease]
    gained: dict[int, Lease] = field(default_factory=dict)
    lost: dict[int, Lease] = field(default_factory=dict)
    surplus: dict[int, Lease] = field(default_factory=dict)
    live: int = 1

    def __bool__(self) -> bool:
        return bool(self.gained or self.lost or self.surplus)


class LeaseKeeper:
    """One process's leases on the partitions of one part, kept by a thread of its own (CONTRACT §8).

    Use: `keeper = LeaseKeeper(part, partitions, url, instance_id, lease_s, on_change=...)`; `keeper.start(stopping)`
    joins the part's instances (`PartitionMismatch` when a live instance uses another P), takes its first share
    (waiting through database outages: `gridhub.waiting`, health `waiting_for: database`) and calls
    `on_change(Change)` on the caller's thread, then renews every third of a lease on the keeper's thread and calls
    `on_change` there after every round that changed something. `confirm(lease)`, from any thread and on a connection
    of its own, asks the database whether the lease is still this process's with its epoch, unexpired by the
    database's clock: call it right before acknowledging anything of the partition and before reconnecting under its
    name; no answer (the database is away) is a no (`confirm_all` asks for several leases in one query). With
    `every_round`, `on_change` is called after every successful round, changed or not (a part that held a
    connection back while its lease could not be confirmed resumes it then). `give_back(partitions)` once the work on a `surplus` is stopped.
    `stop()` ends the renewals (the leases stay until they expire or are released); `release()` gives back every
    lease at once, so that another instance takes over at its next round: call it once nothing works on them.

    Guarantees: `on_change` is called on one thread at a time, in round order; a lease is reported `lost` as soon as
    a round finds it gone, or when no round succeeded for a whole lease (the database away: the lease has certainly
    expired by then), before any new lease on the same partition is reported `gained`. An exception from
    `on_change` on the keeper's thread is a bug: the keeper logs it, stops renewing and calls `on_failure` (the
    leases run out, nothing more is acknowledged; the supervisor restarts the process).
    """

    def __init__(self, part: str, partitions: int, url: str, instance_id: str, lease_s: float = LEASE_S, *,
                 on_change: Callable[[Change], None], on_failure: Callable[[], None] = lambda: None,
                 application_name: str | None = None, every_round: bool = False) -> None:
        self.leases = PartitionLeases(part, partitions, holder_name(instance_id), lease_s)
        self.url = url
        self.waiter = f"{part}-lease"
        self._on_change = on_change
        self._on_failure = on_failure
        self._every_round = every_round
        name = application_name or f"gridhub-{part}-lease"
        self._db = LazyConnection(url, application_name=name, autocommit=True)
        self._fence_db = LazyConnection(url, application_name=name, autocommit=True)
        self._fence_lock = threading.Lock()
        self._lock = threading.Lock()  # _reported, _giving_back, _to_release
        self._reported: dict[int, Lease] = {}  # what on_change has been told is held
        self._giving_back: set[int] = set()  # surplus named, not yet given back
        self._to_release: set[int] = set()  # given back by the owner, to release at the next step
        self._last_renewed = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed = threading.Event()

    @property
    def part(self) -> str:
        return self.leases.part

    @property
    def partitions(self) -> int:
        return self.leases.partitions

    @property
    def holder(self) -> str:
        """This process's holder name (instance id and a random tag)."""
        return self.leases.holder

    @property
    def lease_s(self) -> float:
        return self.leases.lease_s

    def held(self) -> dict[int, Lease]:
        """The leases `on_change` has been told are held (a copy)."""
        with self._lock:
            return dict(self._reported)

    # ------------------------------------------------------------------ life cycle

    def start(self, stopping: Stopping) -> Change | Literal[GaveUp.STOPPING]:
        """Join, take the first share (waiting through database outages until `stopping` is set), call
        `on_change` with it here, on the caller's thread (an exception goes to the caller), and start renewing on
        the keeper's thread. `PartitionMismatch` when a live instance of the part uses another P."""

        def attempt() -> Round:
            conn = self._db.get()
            started = time.monotonic()
            self.leases.join(conn)
            rnd = self.leases.renew(conn)
            self._last_renewed = started
            return rnd

        rnd = keep_trying(attempt, waiter=self.waiter, stopping=stopping, on_error=self._db.forget_if_broken,
                          grace_s=None, url=self.url)
        if rnd is GaveUp.STOPPING:
            return GaveUp.STOPPING
        change = self._diff(rnd)
        self._on_change(change)
        self._thread = threading.Thread(target=self._run, name=self.waiter, daemon=True)
        self._thread.start()
        return change

    def wake(self) -> None:
        """Renew now rather than at the next round (say, a confirmation failed)."""
        self._wake.set()

    def give_back(self, partitions: Iterable[int]) -> None:
        """Release these partitions (from any thread), once nothing works on them any more: at once, on the
        keeper's thread."""
        with self._lock:
            self._to_release.update(partitions)
        self._wake.set()

    def confirm(self, lease: Lease | None) -> bool:
        """Whether `lease` is still this process's, with its epoch, unexpired by the database's clock (any thread;
        a database that does not answer is a no)."""
        if lease is None:
            return False
        with self._fence_lock:
            try:
                return self.leases.holds(self._fence_db.get(), lease)
            except DATABASE_ERRORS:
                self._fence_db.forget_if_broken()
                return False

    def confirm_all(self, leases: Iterable[Lease]) -> frozenset[int]:
        """`confirm()` for several leases in one query: the partitions whose lease is still this process's with its
        epoch (any thread; a database that does not answer confirms none)."""
        with self._fence_lock:
            try:
                return self.leases.holds_all(self._fence_db.get(), leases)
            except DATABASE_ERRORS:
                self._fence_db.forget_if_broken()
                return frozenset()

    def stop(self) -> None:
        """Stop renewing (once the owner has stopped working and acknowledged what it stored); `release()` next."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(10.0, self.leases.renew_every_s))

    def release(self) -> None:
        """Give back every lease and leave the part's live instances (after `stop()`, once disconnected), so that
        another instance takes over at its next round rather than a lease later; then close the connections."""
        try:
            self.leases.release(self._db.get())
        except (psycopg.Error, DatabaseUnavailable) as exc:
            log.warning("%s: could not release the leases of %s (%s): another instance takes them over when they "
                        "expire in %g s", self.part, self.holder, type(exc).__name__, self.lease_s)
        with self._lock:
            self._reported = {}
            self._giving_back.clear()
        self._db.close()
        with self._fence_lock:
            self._fence_db.close()

    # ------------------------------------------------------------------ the keeper's thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(self.leases.renew_every_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
                self._step()
        except Exception:  # a bug: the leases run out, nothing more is acknowledged; the supervisor restarts us
            log.exception("%s: the lease keeper failed; nothing more is acknowledged under its leases", self.part)
            self.failed.set()
            self._on_failure()
        finally:
            WAITS.end(DATABASE, self.waiter)

    def _step(self) -> None:
        """One round: release what was given back, renew, report the change; through a database outage, report
        every lease lost once no round succeeded for a whole lease."""
        started = time.monotonic()
        try:
            conn = self._db.get()
            with self._lock:
                giving = frozenset(self._to_release)
            if giving:
                self.leases.release(conn, giving)
                with self._lock:
                    self._to_release -= giving
                    self._giving_back -= giving
                    for p in giving:
                        self._reported.pop(p, None)
            rnd = self.leases.renew(conn)
        except DATABASE_ERRORS as exc:  # the part waits (one log line for all its threads)
            self._db.forget_if_broken()
            WAITS.begin(DATABASE, self.waiter, type(exc).__name__)
            if time.monotonic() - self._last_renewed >= self.leases.lease_s:
                self._expire_locally()
            return
        WAITS.end(DATABASE, self.waiter)
        self._last_renewed = started
        change = self._diff(rnd)
        if change or self._every_round:
            self._on_change(change)

    def _expire_locally(self) -> None:
        """No round for a whole lease: every lease has expired by the database's clock too (it was renewed, at the
        latest, when the last successful round started); report them lost."""
        with self._lock:
            lost, self._reported = self._reported, {}
            self._giving_back.clear()
            self._to_release.clear()
        self.leases.held = {}
        if lost:
            log.warning("%s: no lease round for %g s (the database is away): partitions %s are lost", self.part,
                        self.lease_s, sorted(lost))
            self._on_change(Change(held={}, lost=lost))

    def _diff(self, rnd: Round) -> Change:
        with self._lock:
            now = dict(rnd.held)
            lost = {p: le for p, le in self._reported.items() if now.get(p) != le}
            gained = {p: le for p, le in now.items() if self._reported.get(p) != le}
            self._giving_back &= {p for p in now if p not in lost}
            surplus = {p: now[p] for p in sorted(rnd.surplus) if p not in self._giving_back and p not in gained}
            self._giving_back.update(surplus)
            self._reported = now
            return Change(held=dict(now), gained=gained, lost=lost, surplus=surplus, live=rnd.live)
