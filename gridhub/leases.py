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
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import psycopg

from gridhub.settings import DEFAULT_TOPIC_PREFIX

__all__ = ["LEASE_S", "Lease", "PartitionLeases", "PartitionMismatch", "Round", "holder_name", "session_client_id"]

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
