"""gridhub/leases.py on the real PostgreSQL: fair shares among 1 to 3 instances, a clean stop handing over at once,
a dead holder's partitions taken over once its lease expired, the epoch as fencing token, a holder that stalled
past its lease refused, and instances with another number of partitions refused."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from faults import DbProxy
from polling import wait_for

from gridhub.db import migrate
from gridhub.leases import Change, Lease, LeaseKeeper, PartitionLeases, PartitionMismatch, Round, holder_name
from gridhub.waiting import DATABASE, WAITS


@pytest.fixture(scope="module")
def url(make_database: Callable[[], str]) -> str:
    u = make_database()
    migrate(u)
    return u


@pytest.fixture
def conns(url: str) -> Iterator[list[psycopg.Connection[Any]]]:
    """One autocommit connection per instance (each instance has its own)."""
    cs = [psycopg.connect(url, autocommit=True) for _ in range(4)]
    yield cs
    for c in cs:
        c.close()


def _instances(part: str, n: int, conns: list[psycopg.Connection[Any]], partitions: int = 4,
               lease_s: float = 30.0) -> list[PartitionLeases]:
    leases = [PartitionLeases(part, partitions, holder_name(f"i{k}"), lease_s) for k in range(n)]
    for le, c in zip(leases, conns, strict=False):
        le.join(c)
    return leases


def _settle(leases: list[PartitionLeases], conns: list[psycopg.Connection[Any]], rounds: int = 6) -> list[int]:
    """Renew every instance in turn for a few rounds, giving back each surplus as a caller would; the shares."""
    for _ in range(rounds):
        for le, c in zip(leases, conns, strict=False):
            r = le.renew(c)
            if r.surplus:
                le.release(c, r.surplus)
    held = [set(le.held) for le in leases]
    everything = [p for h in held for p in h]
    assert len(everything) == len(set(everything)), f"a partition held twice: {held}"
    return sorted((len(h) for h in held), reverse=True)


def _holders(conn: psycopg.Connection[Any], part: str) -> dict[int, tuple[str | None, int]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT partition, holder, epoch FROM part_leases WHERE part = %s AND expires_at > now()"
        " UNION ALL SELECT partition, NULL, epoch FROM part_leases WHERE part = %s AND"
        " (expires_at IS NULL OR expires_at <= now())", (part, part))}


def test_fair_share_among_one_two_and_three_instances(conns: list[psycopg.Connection[Any]]) -> None:
    (a,) = _instances("fair", 1, conns, partitions=4)
    assert _settle([a], conns) == [4]  # alone, an instance takes every partition
    b = PartitionLeases("fair", 4, holder_name("i1"), 30.0)
    b.join(conns[1])
    assert _settle([a, b], conns) == [2, 2]  # the first gives back its surplus, the second takes it
    c = PartitionLeases("fair", 4, holder_name("i2"), 30.0)
    c.join(conns[2])
    assert _settle([a, b, c], conns) == [2, 1, 1]  # ceil(4 / 3) at most, floor(4 / 3) at least
    # a clean stop hands its partitions over at the others' next round, no lease later
    shares = {le.holder: len(le.held) for le in (a, b, c)}
    leaving = next(le for le in (a, b, c) if shares[le.holder] == 2)
    leaving.release(conns[[a, b, c].index(leaving)])
    staying = [le for le in (a, b, c) if le is not leaving]
    assert _settle(staying, [conns[[a, b, c].index(le)] for le in staying]) == [2, 2]
    assert all(holder is not None for holder, _ in _holders(conns[3], "fair").values())


def test_one_partition_one_holder_and_standbys(conns: list[psycopg.Connection[Any]]) -> None:
    first, *standbys = _instances("single", 3, conns, partitions=1)
    assert set(first.renew(conns[0]).held) == {0}
    for le, c in zip(standbys, conns[1:], strict=False):
        r = le.renew(c)
        assert not r.held and not r.surplus and r.live == 3
    # a standby arriving never takes the partition from a live holder, however often it asks
    assert _settle([first, *standbys], conns) == [1, 0, 0] and set(first.held) == {0}


def test_a_dead_holders_partition_is_taken_over_with_a_new_epoch(conns: list[psycopg.Connection[Any]]) -> None:
    dead, standby = _instances("takeover", 2, conns, partitions=1, lease_s=1.0)
    lease = dead.renew(conns[0]).held[0]
    assert standby.renew(conns[1]).held == {}
    # the holder dies (renews no more): once its lease has expired by the database's clock, the standby takes over
    rounds: list[Round] = []

    def taken() -> bool:
        rounds.append(standby.renew(conns[1]))
        return 0 in rounds[-1].held

    wait_for(taken, 30, "the standby to take over the expired lease")
    new = rounds[-1].held[0]
    assert rounds[-1].gained == {0} and new.epoch == lease.epoch + 1  # the fencing token rose
    assert standby.holds(conns[1], new)
    assert not dead.holds(conns[0], lease)  # the old holder, waking up, finds it no longer holds the partition
    r = dead.renew(conns[0])  # nor does renewing give it back: it is the standby's now
    assert r.lost == {0} and not r.held and not r.gained


def test_a_stalled_holder_loses_its_lease_even_when_nobody_took_it(conns: list[psycopg.Connection[Any]]) -> None:
    (holder,) = _instances("stall", 1, conns, partitions=1, lease_s=1.0)
    lease = holder.renew(conns[0]).held[0]
    assert holder.holds(conns[0], lease)
    wait_for(lambda: not holder.holds(conns[0], lease), 30, "the lease to expire")  # the database's clock says so
    r = holder.renew(conns[0])  # taken again, but as a new lease: whatever it was doing on the old one ends
    assert r.lost == {0} and r.gained == {0} and r.held[0].epoch == lease.epoch + 1
    assert not holder.holds(conns[0], lease) and holder.holds(conns[0], r.held[0])


def test_the_database_clock_decides(conns: list[psycopg.Connection[Any]]) -> None:
    (holder,) = _instances("clock", 1, conns, partitions=1, lease_s=600.0)
    lease = holder.renew(conns[0]).held[0]
    conns[1].execute("UPDATE part_leases SET expires_at = now() - interval '1 ms' WHERE part = 'clock'")
    assert not holder.holds(conns[0], lease)  # however long the process thinks its lease has to run


def test_epoch_rises_on_every_change_of_holder(conns: list[psycopg.Connection[Any]]) -> None:
    a, b = _instances("epochs", 2, conns, partitions=1)
    epochs = [a.renew(conns[0]).held[0].epoch]
    for _ in range(3):  # a hands over to b, b back to a, ...: each new holder has a higher epoch
        a.release(conns[0])
        b.join(conns[1])
        epochs.append(b.renew(conns[1]).held[0].epoch)
        a, b, conns[0], conns[1] = b, a, conns[1], conns[0]
    assert epochs == sorted(set(epochs)) and len(epochs) == 4
    r = a.renew(conns[0])  # renewing by the same holder keeps the epoch
    assert r.held[0].epoch == epochs[-1] and not r.gained and not r.lost


def test_another_number_of_partitions_is_refused_while_an_instance_lives(conns: list[psycopg.Connection[Any]]) -> None:
    (four,) = _instances("mismatch", 1, conns, partitions=4)
    four.renew(conns[0])
    other = PartitionLeases("mismatch", 1, holder_name("other"), 30.0)
    with pytest.raises(PartitionMismatch, match="GRIDHUB_PARTITIONS"):
        other.join(conns[1])
    four.release(conns[0])
    other.join(conns[1])  # once none lives, the part is reshaped to the new number
    assert set(other.renew(conns[1]).held) == {0}
    assert conns[2].execute("SELECT count(*) FROM part_leases WHERE part = 'mismatch'").fetchone() == (1,)


# --- LeaseKeeper: the leases kept by a thread of their own -------------------------------------------------------


class Owner:
    """What a part does with a keeper's changes: records them, and gives a surplus back at once (as a part does once
    it has stopped consuming it)."""

    def __init__(self, give_back: bool = True) -> None:
        self.changes: list[Change] = []
        self.held: dict[int, Lease] = {}
        self.lock = threading.Lock()
        self.keeper: LeaseKeeper | None = None
        self.give_back = give_back

    def __call__(self, change: Change) -> None:
        with self.lock:
            self.changes.append(change)
            for p, lease in change.lost.items():
                assert self.held.pop(p) == lease, f"lost {lease}, which was never gained"
            for p, lease in change.gained.items():
                assert p not in self.held, f"gained {lease} while holding {self.held[p]}"
                self.held[p] = lease
            for p in change.surplus:
                self.held.pop(p)
        if change.surplus and self.give_back:
            assert self.keeper is not None
            self.keeper.give_back(change.surplus)

    def partitions(self) -> set[int]:
        with self.lock:
            return set(self.held)


def _keeper(part: str, url: str, name: str, partitions: int = 4, lease_s: float = 3.0,
            give_back: bool = True) -> tuple[LeaseKeeper, Owner]:
    owner = Owner(give_back)
    keeper = LeaseKeeper(part, partitions, url, name, lease_s, on_change=owner)
    owner.keeper = keeper
    return keeper, owner


def _holder_table(url: str, part: str) -> dict[int, tuple[str | None, int]]:
    with psycopg.connect(url, autocommit=True) as c:
        return _holders(c, part)


def test_keeper_shares_fairly_and_hands_over_on_release(url: str) -> None:
    """Two keepers of P = 4 settle on 2 + 2 without a partition reported held by both; when one releases, the other
    is told it gained the two, under new epochs."""
    stopping = threading.Event()
    a, oa = _keeper("k-fair", url, "a")
    b, ob = _keeper("k-fair", url, "b")
    try:
        first = a.start(stopping)
        assert isinstance(first, Change) and set(first.gained) == {0, 1, 2, 3} and not first.lost
        assert oa.partitions() == {0, 1, 2, 3}
        b.start(stopping)
        wait_for(lambda: len(oa.partitions()) == 2 and len(ob.partitions()) == 2, 30, "a 2 + 2 share")
        assert oa.partitions().isdisjoint(ob.partitions())
        assert all(a.confirm(le) for le in a.held().values()) and all(b.confirm(le) for le in b.held().values())
        assert a.confirm_all(a.held().values()) == oa.partitions()  # one query for a batch's sessions
        assert not a.confirm_all(b.held().values())  # b's leases are not a's
        given = {p for c in oa.changes for p in c.surplus}
        assert given == ob.partitions()  # what a gave back is what b took
        before = {p: le.epoch for p, le in a.held().items()}
        a.stop()
        a.release()
        wait_for(lambda: ob.partitions() == {0, 1, 2, 3}, 30, "b to take a's partitions")
        assert all(b.held()[p].epoch > e for p, e in before.items())  # the fencing token rose
        assert not any(a.confirm(le) for le in (oa.held.values()))
        assert not a.confirm_all(oa.held.values())
    finally:
        for k in (a, b):
            k.stop()
            k.release()


def test_keeper_reports_a_lease_lost_to_another_holder(url: str) -> None:
    """A lease that ran out (here: expired by the database's clock, as for a holder that stalled) is taken by another
    keeper under a new epoch; the old holder's confirmations say no at once, and its next round reports it lost."""
    stopping = threading.Event()
    a, oa = _keeper("k-lost", url, "a", partitions=1, lease_s=60.0)  # renews every 20 s: b moves first
    b, ob = _keeper("k-lost", url, "b", partitions=1, lease_s=3.0)
    try:
        a.start(stopping)
        b.start(stopping)
        old = a.held()[0]
        assert a.confirm(old) and not b.held()
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("UPDATE part_leases SET expires_at = now() - interval '1 ms' WHERE part = 'k-lost'")
        assert not a.confirm(old)  # at once, whatever the process thinks
        wait_for(lambda: ob.partitions() == {0}, 30, "b to take the expired lease")
        new = b.held()[0]
        assert new.epoch > old.epoch and b.confirm(new) and not a.confirm(old)
        a.wake()
        wait_for(lambda: not oa.partitions(), 30, "a to be told it lost partition 0")
        assert [c.lost for c in oa.changes if c.lost] == [{0: old}]
        assert b.confirm(new) and ob.partitions() == {0}  # a takes nothing back
    finally:
        for k in (a, b):
            k.stop()
            k.release()


class _Proxy(DbProxy):
    """tests/faults.py's DbProxy, whose cut() also shuts the listening socket down: closing it alone leaves the
    accept() blocked in the proxy's thread listening, and the next connection (the keeper's reconnect) relayed."""

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
        super().cut()


def test_keeper_waits_through_a_database_outage_and_reports_its_leases_lost(url: str) -> None:
    """With the database away for more than a lease, the keeper says it waits for the database, reports its leases
    lost (they have expired by then), confirms nothing, and takes its share again once the database is back."""
    proxy = _Proxy.of(url)
    stopping = threading.Event()
    a, oa = _keeper("k-outage", url=proxy.url(url), name="a", partitions=2, lease_s=2.0)
    try:
        a.start(stopping)
        leases = a.held()
        assert set(leases) == {0, 1}
        proxy.cut()
        wait_for(lambda: DATABASE in WAITS.waiting(), 30, "the keeper to wait for the database")
        wait_for(lambda: not oa.partitions(), 30, "the leases reported lost")
        assert not any(a.confirm(le) for le in leases.values())
        proxy.restore()
        wait_for(lambda: oa.partitions() == {0, 1}, 60, "the partitions taken again")
        assert all(a.held()[p].epoch > leases[p].epoch for p in (0, 1))
        wait_for(lambda: DATABASE not in WAITS.waiting(), 30, "the wait to end")
    finally:
        a.stop()
        a.release()
        proxy.cut()


def test_keeper_refuses_another_number_of_partitions(url: str) -> None:
    stopping = threading.Event()
    a, _ = _keeper("k-mismatch", url, "a", partitions=4)
    b, _ = _keeper("k-mismatch", url, "b", partitions=2)
    try:
        a.start(stopping)
        with pytest.raises(PartitionMismatch, match="GRIDHUB_PARTITIONS"):
            b.start(stopping)
    finally:
        a.stop()
        a.release()
        b.release()
