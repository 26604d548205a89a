"""The devices ingest accepts (kind, retired), cached in memory and reloaded on LISTEN `gridhub_registry`
(sent by `gridhub registry import`) and every minute."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gridhub.db import REGISTRY_CHANNEL, connect
from gridhub.ingest.validate import Device
from gridhub.protocol import DeviceKind
from gridhub.waiting import DATABASE_ERRORS, run_through_outages

log = logging.getLogger("gridhub.ingest.registry")

CHANNEL = REGISTRY_CHANNEL


def load_devices(conn: psycopg.Connection[Any], ids: Iterable[str] | None = None) -> dict[str, Device]:
    with conn.cursor(row_factory=dict_row) as cur:
        if ids is None:
            rows = cur.execute("SELECT id, kind, retired FROM devices").fetchall()
        else:
            rows = cur.execute("SELECT id, kind, retired FROM devices WHERE id = ANY(%s)", (list(ids),)).fetchall()
    return {r["id"]: Device(DeviceKind(r["kind"]), bool(r["retired"])) for r in rows}


class RegistryCache(Mapping[str, Device]):
    """A read-mostly map device id -> Device; `follow()` keeps it fresh from a thread of its own."""

    def __init__(self, database_url: str, refresh_s: float = 60.0) -> None:
        self.url = database_url
        self.refresh_s = refresh_s
        self._devices: dict[str, Device] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loads = 0
        self._loaded_at = 0.0

    def __getitem__(self, key: str) -> Device:
        return self._devices[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._devices.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def reload(self) -> None:
        with connect(self.url, autocommit=True, application_name="gridhub-ingest") as conn:
            self._devices = load_devices(conn)
        self.loads += 1
        self._loaded_at = time.monotonic()

    def add_missing(self, conn: psycopg.Connection[Any], ids: Iterable[str]) -> None:
        """Look up devices not in the cache (a registry import whose notice has not arrived yet)."""
        missing = [i for i in ids if i not in self._devices]
        if missing:
            found = load_devices(conn, missing)
            if found:
                self._devices = {**self._devices, **found}

    def start(self) -> None:
        self.reload()
        self._thread = threading.Thread(target=self._follow, name="ingest-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _follow(self) -> None:
        """LISTEN for registry imports and reload, through database outages (`gridhub.waiting.run_through_outages`:
        ingest says once that it waits for the database, and once that it is back)."""

        def follow(connected: Callable[[], None]) -> None:
            with connect(self.url, autocommit=True, application_name="gridhub-ingest") as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                self.reload()
                connected()
                while not self._stop.is_set():
                    changed = False
                    for _ in conn.notifies(timeout=min(self.refresh_s, 1.0)):
                        changed = True
                    if changed:
                        self.reload()
                        log.info("registry changed: %d devices known", len(self._devices))
                    elif time.monotonic() - self._loaded_at >= self.refresh_s:
                        self.reload()

        # any psycopg error, as before: the follower retries rather than dies (a stale cache is still looked up)
        run_through_outages(follow, waiter="ingest-registry", stopping=self._stop, url=self.url,
                            errors=(psycopg.Error, *DATABASE_ERRORS))
