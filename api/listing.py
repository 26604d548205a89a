"""List answers of CONTRACT §4, one helper for every list route: `?limit=` and an opaque keyset `?cursor=` in,
`{"items", "next"}` out.

A route names its order once (`ListOrder`: the key columns, the last one unique, and their cursor types), takes
`PageQuery` as a dependency and hands its SELECT and filters to `fetch_page`, which adds the cursor's condition,
the ORDER BY and the LIMIT, and builds the answer."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Query
from psycopg.rows import dict_row

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def clamp_limit(limit: int | None) -> int:
    """The page size: default 100, capped at 1000 (a larger ask is served at the cap, not refused)."""
    if limit is None:
        return DEFAULT_LIMIT
    return max(1, min(limit, MAX_LIMIT))


LimitQuery = Annotated[int | None, Query(ge=1, description="page size, default 100, capped at 1000")]
CursorQuery = Annotated[str | None, Query(max_length=512, description="the `next` of the previous page")]


def encode_cursor(*key: Any) -> str:
    """An opaque cursor for the keyset `key` (strings, numbers, times)."""
    raw = json.dumps([k.isoformat() if isinstance(k, datetime) else k for k in key], ensure_ascii=False,
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: tuple[type, ...]) -> tuple[Any, ...]:
    """The keyset from a cursor made by `encode_cursor`; 422 naming the parameter if it was not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
        if not isinstance(parts, list) or len(parts) != len(kinds):
            raise ValueError("wrong length")
        out: list[Any] = []
        for value, kind in zip(parts, kinds, strict=True):
            if kind is datetime:
                dt = datetime.fromisoformat(value)
                if dt.tzinfo is None:
                    raise ValueError("time without offset")
                out.append(dt)
            elif kind is int:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError("not an integer")
                out.append(value)
            else:
                if not isinstance(value, str):
                    raise ValueError("not a string")
                out.append(value)
        return tuple(out)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise HTTPException(422,
                            "cursor: not a cursor from this list; pass the `next` value of the previous page") from exc


@dataclass(frozen=True)
class ListOrder:
    """How a list is ordered: its key columns as written in the SELECT (the last one unique), the type of each in
    a cursor (str, int or datetime), newest first (descending) or not; a row's key is read by the column names."""

    columns: tuple[str, ...]
    kinds: tuple[type, ...]
    descending: bool = True

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.rsplit(".", 1)[-1] for c in self.columns)

    def after(self, cursor: str) -> tuple[str, list[Any]]:
        """The condition for the rows after the cursor's key, with its parameters."""
        key = decode_cursor(cursor, self.kinds)
        op = "<" if self.descending else ">"
        if len(self.columns) == 1:
            return f"{self.columns[0]} {op} %s", list(key)
        return f"({', '.join(self.columns)}) {op} ({', '.join(['%s'] * len(key))})", list(key)

    def order_by(self) -> str:
        return ", ".join(f"{c} DESC" if self.descending else c for c in self.columns)


class PageQuery:
    """The `?limit=` and `?cursor=` of a list request (a FastAPI dependency: `page: PageDep`)."""

    def __init__(self, limit: LimitQuery = None, cursor: CursorQuery = None) -> None:
        self.limit = clamp_limit(limit)
        self.cursor = cursor


PageDep = Annotated[PageQuery, Depends()]


async def fetch_page(conn: psycopg.AsyncConnection[Any], select: str, where: list[str], args: list[Any],
                     order: ListOrder, page: PageQuery,
                     shape: Callable[[Mapping[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """One page of `select` (SELECT ... FROM ..., no WHERE) under the conditions `where` (joined by AND) with
    parameters `args`: `{"items": [shape(row), ...], "next": cursor | None}`; rows are read by name."""
    where, args = list(where), list(args)
    if page.cursor:
        cond, key = order.after(page.cursor)
        where.append(cond)
        args += key
    sql = (f"{select} {'WHERE ' + ' AND '.join(where) if where else ''}"
           f" ORDER BY {order.order_by()} LIMIT %s")
    async with conn.cursor(row_factory=dict_row) as cur:
        rows = await (await cur.execute(sql, [*args, page.limit + 1])).fetchall()
    more = len(rows) > page.limit
    rows = rows[:page.limit]
    items = [shape(r) for r in rows]
    last = rows[-1] if more and rows else None
    return {"items": items, "next": encode_cursor(*(last[k] for k in order.keys)) if last is not None else None}
