"""PostgreSQL under Patroni (gridhub/services/patroni.py): a 3-member etcd and two PostgreSQL nodes with TimescaleDB,
synchronous replication on. A writer commits rows through the hub's multi-host URL while the primary's postgres is
killed with SIGKILL; Patroni promotes the other node (checked through the REST API), the writer reconnects with the
same URL and retries what it could not confirm (idempotently, as the store does), and every row whose COMMIT
returned is on the new primary. The cluster is tests/cluster/conftest.py's fixture.

Not part of `make test` (pyproject's addopts ignore tests/cluster): `make cluster-test` runs it. No timing
assertions: every wait has a deadline for a state, and the failover times are only printed."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from gridhub.services.patroni import PatroniCluster, PgNode
from gridhub.services.process import wait_until

DATABASE = "gridhub_failover"


class Writer:
    """Commits one row a transaction through the multi-host URL. A COMMIT that returned is `acked`; one whose
    connection dropped is unknown and retried with the same id (ON CONFLICT DO NOTHING) on a new connection."""

    def __init__(self, url: str, first_id: int) -> None:
        self.url = url
        self.first_id = first_id
        self.acked: list[int] = []
        self.retried: list[int] = []
        self.ack_times: list[float] = []
        self.errors: list[str] = []
        self.error_times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        next_id = self.first_id
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.url)
                with conn.transaction():
                    conn.execute("INSERT INTO readings (id, ts, value) VALUES (%s, now(), %s) ON CONFLICT DO NOTHING",
                                 (next_id, next_id * 0.5))
                self.acked.append(next_id)
                self.ack_times.append(time.monotonic())
                next_id += 1
                time.sleep(0.01)
            except psycopg.OperationalError as exc:
                # the outcome of next_id is unknown: keep it and retry on a new connection
                self.errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self.retried.append(next_id)
                self.error_times.append(time.monotonic())
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    def longest_gap(self, after: float) -> float:
        times = [t for t in self.ack_times if t >= after - 5]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def kill_primary_under_writes(cluster: PatroniCluster, url: str, first_id: int, what: str,
                              kill: Callable[[PgNode], None]) -> PgNode:
    """Commit rows through `url` while `kill` ends the primary; check that another node leads (REST), that the writer
    gets going through the same URL and that every acknowledged row is on the new primary; print the times. The
    old primary."""
    writer = Writer(url, first_id)
    writer.thread.start()
    try:
        assert wait_until(lambda: len(writer.acked) >= 200, 60, 0.05), f"the writer committed {len(writer.acked)} rows"
        old = cluster.primary()
        assert old is not None, f"no node answers /primary: {cluster.members()}"
        assert cluster.leader() == old.name
        acked_before = len(writer.acked)
        killed = time.monotonic()
        kill(old)

        def leader_changed() -> bool:
            leader = cluster.leader()
            return leader is not None and leader != old.name

        assert wait_until(leader_changed, 120, 0.1), f"no new leader after 120 s: {cluster.members()}"
        promoted = time.monotonic() - killed
        new = cluster.node(str(cluster.leader()))
        assert cluster.primary() == new
        assert wait_until(lambda: len(writer.acked) >= acked_before + 200, 120, 0.1), (
            f"the writer did not get going again through the multi-host URL: {writer.errors[-3:]}")
        # backends outlive a SIGKILLed postmaster for a moment and may still commit: count from the first error
        first_error = next((t for t in writer.error_times if t > killed), killed)
        first_after = next(t for t in writer.ack_times[acked_before:] if t > first_error)
    finally:
        writer.stop.set()
        writer.thread.join(30)

    # every committed row is on the new primary, none twice (the primary key: a retried id is there at most once)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.info.port == new.pg_port
        stored = {int(r[0]) for r in conn.execute("SELECT id FROM readings").fetchall()}
        missing = set(writer.acked) - stored
        assert not missing, f"{len(missing)} committed rows lost in the failover: {sorted(missing)[:10]}"
        assert conn.execute("SELECT count(*) FROM samples").fetchone() == (1000,)
        # and the new primary takes writes
        with conn.transaction():
            conn.execute("INSERT INTO readings (id, ts, value) VALUES (%s, now(), 0)", (-first_id - 1,))
    print(f"\n{what}: {old.name} -> {new.name}; leader changed (REST) {promoted:.1f} s after SIGKILL, writes back "
          f"through the same URL {first_after - killed:.1f} s after it; no commit for "
          f"{writer.longest_gap(killed):.1f} s; {len(writer.acked)} rows committed, all found; "
          f"{len(writer.retried)} retried with an unknown outcome; errors seen: {sorted(set(writer.errors))[:2]}")
    return old


def rejoined(cluster: PatroniCluster, url: str, old: PgNode) -> None:
    """The old primary is the synchronous standby again and has every row."""
    started = time.monotonic()
    cluster.wait_ready(180)
    print(f"{old.name} back as a standby in {time.monotonic() - started:.1f} s; "
          f"members: {[(m['name'], m['role'], m['state']) for m in cluster.members()]}")
    with psycopg.connect(url, autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM readings").fetchone()
    with psycopg.connect(cluster.node_url(old, DATABASE), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert wait_until(lambda: conn.execute("SELECT count(*) FROM readings").fetchone() == total, 30, 0.2)


@pytest.fixture(scope="module")
def url(cluster: PatroniCluster) -> str:
    """A database with a plain table (one row a committed transaction, keyed by the writer's id, so that its retry
    is idempotent) and a hypertable, so that TimescaleDB's catalog goes through the failovers too."""
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    url = cluster.url(DATABASE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        conn.execute("CREATE TABLE readings (id bigint PRIMARY KEY, ts timestamptz NOT NULL, value double precision)")
        conn.execute("CREATE TABLE samples (ts timestamptz NOT NULL, value double precision)")
        conn.execute("SELECT create_hypertable('samples', 'ts')")
        conn.execute("INSERT INTO samples SELECT now() - i * interval '1 minute', i FROM generate_series(1, 1000) i")
    return url


def test_synchronous_replication_and_timescaledb_on_every_node(cluster: PatroniCluster, url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        sync_names = conn.execute("SHOW synchronous_standby_names").fetchone()
        assert sync_names is not None and sync_names[0], "synchronous mode named no standby"
    for n in cluster.layout.nodes:
        with psycopg.connect(cluster.node_url(n, DATABASE), autocommit=True) as conn:
            assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("timescaledb",)
            # synchronous_commit=on waits for the standby's flush, not its replay (remote_apply): poll
            assert wait_until(lambda c=conn: c.execute(  # type: ignore[misc]
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None, 30, 0.1)


def test_sigkill_of_the_primarys_postgres(cluster: PatroniCluster, url: str) -> None:
    """Patroni on the old primary sees its postgres gone and, with primary_start_timeout 0, lets the synchronous
    standby take over instead of restarting it in place; the old primary comes back as the standby (pg_rewind)."""

    def kill_postgres(node: PgNode) -> None:
        pid = cluster.postmaster_pid(node)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    old = kill_primary_under_writes(cluster, url, 0, "postgres SIGKILLed", kill_postgres)
    rejoined(cluster, url, old)


def test_sigkill_of_the_whole_primary_node(cluster: PatroniCluster, url: str) -> None:
    """Patroni and postgres both killed (the machine died): nobody releases the leader key, so the standby takes
    over once it expires (ttl); the node restarted later rejoins as the standby."""
    cluster.wait_ready(180)

    def kill_node(node: PgNode) -> None:
        patroni, postgres = cluster.patroni_pid(node), cluster.postmaster_pid(node)
        assert patroni is not None and postgres is not None
        os.kill(patroni, signal.SIGKILL)
        os.kill(postgres, signal.SIGKILL)

    old = kill_primary_under_writes(cluster, url, 1_000_000, "node SIGKILLed (Patroni and postgres)", kill_node)
    cluster.start_patroni(old)
    rejoined(cluster, url, old)
