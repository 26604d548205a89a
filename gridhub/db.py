"""Database access: connections, migrations under an advisory lock, TimescaleDB feature detection, retention.

Every connection of the hub is made from GRIDHUB_DATABASE_URL as given, handed to libpq (psycopg) unchanged: a
multi-host URL such as `postgresql://u:p@h1:5432,h2:5432/gridhub?target_session_attrs=read-write` (PostgreSQL under
Patroni, docs/scaling.md) makes every new connection find the node that takes writes, so a part that lost its
connection in a failover reconnects to the new primary with the same URL. Nothing here parses or rebuilds the URL,
except `redact()` for messages and `connect_kwargs()`, which only reads whether the URL sets its own
`connect_timeout` and TCP keepalive settings (defaults are added otherwise). A COMMIT whose connection dropped has
an unknown outcome (it may have been committed on the old primary and replicated, or not): the writers retry it on
a new connection, and their writes are idempotent (the store's dedup on (device, ts, seq), `rule_events`' key, the
unique indexes of alerts and tasks).
"""

from __future__ import annotations

import functools
import logging
import re
import select
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

log = logging.getLogger("gridhub.db")

# Every NOTIFY channel and advisory-lock key of the hub, named once here; LISTEN, pg_notify and the locks use these.
CHANGES_CHANNEL = "gridhub_changes"  # a change-log row committed (payload: its id)
TIMERS_CHANNEL = "gridhub_timers"  # a timer set or moved (payload: its due time, epoch seconds)
PUBLISH_WAKE_CHANNEL = "gridhub_publish"  # change rows were left for the notifiers to publish
REGISTRY_CHANNEL = "gridhub_registry"  # the registry was imported (payload: 'changed')

MIGRATION_LOCK = 0x67726964  # "grid": one advisory lock key for schema changes
RETENTION_LOCK = 0x67726964_0001  # one retention run at a time
CHANGES_LOCK = 0x6368616E  # "chan": serialises change-log writers from the insert to the commit
BUILDING_LOCK = 0x66697265  # "fire": with a building's key, serialises its fire incident (transaction lock)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message says where and what to do."""


def connect(url: str, *, autocommit: bool = False, **kw: Any) -> psycopg.Connection[Any]:
    """A connection to `url` as given (connect_timeout and TCP keepalives added unless the URL sets them)."""
    try:
        return psycopg.connect(url, autocommit=autocommit, **connect_kwargs(url, **kw))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {redact(url)}: {exc}. "
            "Set GRIDHUB_DATABASE_URL, or unset it to let gridhub run its own local services."
        ) from exc


CONNECT_TIMEOUT_S = 10  # a connection attempt, per host of a multi-host URL, unless the URL sets its own
# TCP keepalives and a bound on unacknowledged sent data: a primary whose machine died (no FIN, no RST: its packets
# just stop) is noticed in about a minute instead of the kernel's retransmission timeout (~15 min), so a part that
# was waiting on it reconnects to the new primary. Each only unless the URL sets it.
TCP_DEFAULTS: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                                "keepalives_count": 3, "tcp_user_timeout": 60_000}


def connect_kwargs(url: str, **kw: Any) -> dict[str, Any]:
    """`kw` with connect_timeout and TCP_DEFAULTS added where neither the URL nor `kw` sets them (an operator's
    settings in GRIDHUB_DATABASE_URL win: with several hosts, `connect_timeout` bounds each attempt, so that a dead
    node is passed over quickly)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:  # not a valid conninfo: let the connection attempt say so
        params = {}
    given = set(params)
    if "," in str(params.get("host", "")) and str(params.get("target_session_attrs", "any")) not in WRITABLE:
        _warn_any_host(redact(url))
    defaults = {"connect_timeout": CONNECT_TIMEOUT_S, **TCP_DEFAULTS}
    return {**{k: v for k, v in defaults.items() if k not in given}, **kw}


WRITABLE = ("read-write", "primary")  # the target_session_attrs that keep a multi-host URL off the standbys


@functools.lru_cache(maxsize=8)
def _warn_any_host(shown: str) -> None:
    """Once per URL: several hosts without target_session_attrs=read-write connect to whichever answers first, a
    standby too (every write then fails with 'read-only transaction')."""
    log.warning("the database URL %s names several hosts without target_session_attrs=read-write: connections may go "
                "to a standby; add ?target_session_attrs=read-write", shown)


def closed_by_server(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection was closed from the other side since its last use (a failover, a restart, an
    idle-session timeout): its socket is readable while no query runs, and reading it finds the end of the stream
    (or the server's last FATAL message before it). Something else that arrived (a notice) is read into libpq and
    the connection kept. A connection inside a transaction is not looked at."""
    if conn.closed or conn.broken:
        return True
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return False
    for _ in range(4):  # a FATAL message and the end of the stream may take a read each
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        try:
            conn.pgconn.consume_input()
        except psycopg.OperationalError:
            return True
        if conn.pgconn.status == pq.ConnStatus.BAD:
            return True
    return False


class LazyConnection:
    """One connection of a long-running part, opened on first use and again after it broke (`forget_if_broken()`
    after an error); with `gridhub.waiting.keep_trying` this is how a part rides out a database outage, and, on a
    multi-host URL, a failover: the new connection goes to the new primary. Not for LISTEN: `get()` reads what arrived
    on an idle connection into libpq, where a notification would wait for the next read."""

    def __init__(self, url: str, *, application_name: str, autocommit: bool = False,
                 on_open: Callable[[psycopg.Connection[Any]], None] | None = None) -> None:
        self.url = url
        self._kw: dict[str, Any] = connect_kwargs(url, application_name=application_name, autocommit=autocommit)
        self._on_open = on_open
        self._conn: psycopg.Connection[Any] | None = None

    def get(self) -> psycopg.Connection[Any]:
        """The connection: the one kept, unless the server closed it while it was idle (then a new one, at once,
        rather than an error on first use: the first query after a failover goes to the new primary)."""
        if self._conn is not None and closed_by_server(self._conn):
            log.info("%s: the connection was closed by the server while idle; opening a new one",
                     self._kw.get("application_name", "gridhub"))
            self._conn.close()
            self._conn = None
        if self._conn is None:
            conn = psycopg.connect(self.url, **self._kw)
            if self._on_open is not None:
                try:
                    self._on_open(conn)
                except BaseException:  # not kept half set up: the next get() opens and sets up a new one
                    conn.close()
                    raise
            self._conn = conn
        return self._conn

    def forget_if_broken(self, exc: BaseException | None = None) -> None:
        """Drop the connection if it broke (the next `get()` opens a new one); a mere failed statement keeps it."""
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)")


def redact(url: str) -> str:
    """A URL (or a key=value conninfo) with its password hidden, for messages and logs: the user's password of a URL
    (every host of a multi-host URL keeps its port) and any `password=` parameter."""
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    head, mark, query = rest.partition("?")
    if "@" not in head:
        return url
    creds, host = head.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    hidden = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    return f"{scheme}://{hidden}{mark}{query}"


@dataclass(frozen=True)
class Features:
    """What the connected server offers."""

    timescaledb: bool
    license: str | None  # 'apache' or 'timescale' when timescaledb is there
    server_version: int

    @property
    def continuous_aggregates(self) -> bool:
        return self.timescaledb and self.license == "timescale"

    @property
    def compression(self) -> bool:
        return self.timescaledb and self.license == "timescale"


def features(conn: psycopg.Connection[Any]) -> Features:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    lic: str | None = None
    if row:
        try:
            lic_row = conn.execute("SHOW timescaledb.license").fetchone()
            lic = lic_row[0] if lic_row else None
        except psycopg.Error:
            lic = None
    return Features(timescaledb=row is not None, license=lic, server_version=conn.info.server_version)


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) of every migration shipped with the package, in order."""
    out = []
    for entry in resources.files("gridhub.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql"):
            out.append((name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return sorted(out)


def migrate(url: str) -> list[str]:
    """Apply pending migrations; safe to call from several processes at once. Returns what was applied."""
    applied: list[str] = []
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            _ensure_timescaledb(conn)
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql.encode())
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("applied migration %s", version)
                applied.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied


def _ensure_timescaledb(conn: psycopg.Connection[Any]) -> None:
    avail = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    if not avail:
        log.info("TimescaleDB is not available on this server: using plain PostgreSQL tables")
        return
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        log.warning(
            "TimescaleDB is installed but could not be enabled (%s); is it in shared_preload_libraries? "
            "Using plain PostgreSQL tables.",
            exc.diag.message_primary or exc,
        )


def apply_retention(url: str, readings_days: int, quarantine_days: int) -> dict[str, int]:
    """Drop readings and events older than their retention (by chunk on TimescaleDB), and old quarantine."""
    out: dict[str, int] = {}
    with connect(url, autocommit=True) as conn:
        feats = features(conn)
        keep = timedelta(days=readings_days)
        for table in ("readings", "events"):
            if feats.timescaledb:
                rows = conn.execute("SELECT drop_chunks(%s::regclass, older_than => %s::interval)", (table, keep)).fetchall()
                out[table] = len(rows)
            else:
                cur = conn.execute(f"DELETE FROM {table} WHERE ts < now() - %s::interval", (keep,))
                out[table] = cur.rowcount
        cur = conn.execute(
            "DELETE FROM quarantine WHERE received_at < now() - %s::interval", (timedelta(days=quarantine_days),)
        )
        out["quarantine"] = cur.rowcount
    return out


def dict_connect(url: str, **kw: Any) -> psycopg.Connection[dict[str, Any]]:
    try:
        return psycopg.connect(url, row_factory=dict_row, **connect_kwargs(url, **kw))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {redact(url)}: {exc}") from exc
