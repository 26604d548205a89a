"""The cluster tests' shared fixture: PostgreSQL under Patroni (gridhub/services/patroni.py), a 3-member etcd and two
PostgreSQL nodes with TimescaleDB, synchronous replication on, on free loopback ports; one cluster per test module,
stopped (exactly the processes it started) and removed at the end. The tests fail, not skip, without etcd or
Patroni: `make cluster-test` installs them."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridhub.services.patroni import PatroniCluster, find_program, free_layout
from gridhub.services.process import make_service_tmpdir


@pytest.fixture(scope="module")
def cluster() -> Iterator[PatroniCluster]:
    for program in ("etcd", "patroni"):
        assert find_program(program) is not None, f"{program} is not installed: run make cluster-test"
    root = make_service_tmpdir("gridhub-patroni-")
    c = PatroniCluster(Path(root), free_layout())
    try:
        c.write_config()
        started = time.monotonic()
        c.start(timeout=180)
        print(f"\npatroni cluster ready in {time.monotonic() - started:.1f} s: {c.status()['postgresql']}")
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
