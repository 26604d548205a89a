"""Devices are cut into 64 shards by a stable hash of their id; alerts instances lease shards in the database
(expiring leases, renewed), so that all of one device's messages are evaluated in one place.

Each instance has its own persistent MQTT session and receives every device's messages. It evaluates those of
the shards it holds. A message of a shard it does not hold is acknowledged and skipped only when another live
instance holds that shard (that instance received the same message on its own session); a shard that nobody
holds, or whose lease expired, is taken on the spot. One instance alone therefore takes all 64 shards.
Instances take free shards up to their fair share (64 / live instances) and never give shards away while
alive: a later instance takes over the shards of one that stops (released at shutdown, or expired after a
crash). What a crashed instance had received but not evaluated is lost to the rules unless it comes back,
because the survivor had acknowledged-and-skipped those messages on its own session.
"""

from __future__ import annotations

import math
import zlib
from datetime import datetime
from typing import Any

import psycopg

SHARDS = 64
LEASE_S = 20


def shard_of(device_id: str) -> int:
    return zlib.crc32(device_id.encode()) % SHARDS


def heartbeat(conn: psycopg.Connection[Any], instance: str) -> None:
    conn.execute("INSERT INTO alert_instances (id, started_at, seen_at) VALUES (%s, now(), now())"
                 " ON CONFLICT (id) DO UPDATE SET seen_at = now()", (instance,))


def renew_and_take(conn: psycopg.Connection[Any], instance: str) -> set[int]:
    """Renew this instance's leases and take free or expired shards up to its fair share; returns the shards held."""
    with conn.transaction():
        heartbeat(conn, instance)
        held = {r[0] for r in conn.execute(
            "UPDATE alert_shards SET expires_at = now() + make_interval(secs => %s) WHERE holder = %s RETURNING shard",
            (LEASE_S, instance))}
        live_row = conn.execute("SELECT count(*) FROM alert_instances WHERE seen_at > now() - make_interval(secs => %s)",
                                (LEASE_S,)).fetchone()
        live = max(1, int(live_row[0]) if live_row else 1)
        want = math.ceil(SHARDS / live) - len(held)
        if want > 0:
            held |= {r[0] for r in conn.execute(
                "UPDATE alert_shards SET holder = %s, expires_at = now() + make_interval(secs => %s)"
                " WHERE shard IN (SELECT shard FROM alert_shards WHERE holder IS NULL OR expires_at < now()"
                " ORDER BY shard LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING shard", (instance, LEASE_S, want))}
    return held


def take(conn: psycopg.Connection[Any], instance: str, shard: int) -> bool:
    """Take one shard now if nobody live holds it."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE alert_shards SET holder = %s, expires_at = now() + make_interval(secs => %s)"
            " WHERE shard = %s AND (holder IS NULL OR holder = %s OR expires_at < now()) RETURNING shard",
            (instance, LEASE_S, shard, instance)).fetchone()
    return row is not None


def holders(conn: psycopg.Connection[Any]) -> dict[int, tuple[str | None, datetime | None]]:
    return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT shard, holder, expires_at FROM alert_shards")}


def held_elsewhere(conn: psycopg.Connection[Any], instance: str, shard: int) -> bool:
    row = conn.execute("SELECT holder IS NOT NULL AND holder <> %s AND expires_at > now() FROM alert_shards"
                       " WHERE shard = %s", (instance, shard)).fetchone()
    return bool(row and row[0])


def release(conn: psycopg.Connection[Any], instance: str) -> None:
    with conn.transaction():
        conn.execute("UPDATE alert_shards SET holder = NULL, expires_at = NULL WHERE holder = %s", (instance,))
        conn.execute("DELETE FROM alert_instances WHERE id = %s", (instance,))
