"""Deliveries planned in the transaction of the task change that needs them (CONTRACT §6)."""

from __future__ import annotations

from typing import Any

import psycopg

from gridhub.alerts.changes import Notice


def deliveries(conn: psycopg.Connection[Any], change_id: int, task: dict[str, Any], notices: list[Notice]) -> None:
    """Write the delivery rows for one task change (filled in by the planner; nothing is configured yet)."""
    return
