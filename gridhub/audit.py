"""The audit trail (issue 13, `audit_log`): one row per log-in (success, failure, throttled), command to a device,
task action, registry import, credentials write and revocation: who, what, when, from where.

`record` writes in the caller's transaction (so an action and its audit row commit together); `record_async` is
the same for the API's async connections. `detail` must never carry a password, token or key: `clean` drops such
keys and is applied to every detail."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["INSERT", "cli_actor", "clean", "record", "record_async"]

INSERT = "INSERT INTO audit_log (actor, action, target, address, detail) VALUES (%s, %s, %s, %s, %s)"
_SECRET_WORDS = ("password", "token", "secret", "key", "ticket", "authorization", "cookie")


def clean(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """`detail` without any field whose name says it holds a secret (nested mappings too)."""
    out: dict[str, Any] = {}
    for k, v in (detail or {}).items():
        if any(w in k.lower() for w in _SECRET_WORDS):
            continue
        out[k] = clean(v) if isinstance(v, Mapping) else v
    return out


def _params(actor: str | None, action: str, target: str | None, address: str | None,
            detail: Mapping[str, Any] | None) -> tuple[Any, ...]:
    return (actor, action, target, address, Jsonb(clean(detail)))


def record(conn: psycopg.Connection[Any], actor: str | None, action: str, *, target: str | None = None,
           address: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
    """One audit row in the caller's transaction (sync connection)."""
    conn.execute(INSERT, _params(actor, action, target, address, detail))


async def record_async(conn: psycopg.AsyncConnection[Any], actor: str | None, action: str, *,
                       target: str | None = None, address: str | None = None,
                       detail: Mapping[str, Any] | None = None) -> None:
    """One audit row in the caller's transaction (the API's async connection)."""
    await conn.execute(INSERT, _params(actor, action, target, address, detail))


def cli_actor() -> tuple[str, str]:
    """(actor, address) for a command run on the hub's machine: `cli:<os user>`, the host name."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in a container is not an error
        user = "unknown"
    return f"cli:{user}", socket.gethostname()
