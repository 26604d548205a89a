"""List answers of CONTRACT §4, one helper for every list route: `?limit=` and an opaque keyset `?cursor=` in,
`{"items", "next"}` out.

A route names its order once (`ListOrder`: the key columns, the last one unique, and their cursor types), takes
`PageQuery` as a dependency and hands its SELECT and filters to `fetch_page`, which adds the cursor's condition,
the ORDER BY and the LIMIT, and builds the answer. Filters shared by lists: `TimeRange` (`?start=&end=`, RFC 3339
with offset) and `choices` (one value or a comma list of known ones)."""

from __future__ import annotations

import base64
import json
import re
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


def choices(value: str | None, allowed: tuple[str, ...], name: str) -> list[str] | None:
    """`?name=` as one value or a comma list, each one of `allowed`; None when absent; 422 naming the known ones."""
    if value is None:
        return None
    out = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise HTTPException(422, f"{name}: {', '.join(bad) or 'empty'} is not one of {', '.join(allowed)}")
    return out


# RFC 3339 date-time (section 5.6); the offset is checked apart so that its absence gets its own answer
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?")
_OFFSET_LOST = re.compile(r".*\d{2}:\d{2}:\d{2}(?:\.\d+)? \d{2}:\d{2}")


def parse_time(name: str, value: str) -> datetime:
    """A time parameter: RFC 3339 with an offset (CONTRACT §4); 422 saying what is wrong otherwise."""
    example = "e.g. 2026-12-04T09:00:00+08:00 or 2026-12-04T01:00:00Z"
    m = _RFC3339.fullmatch(value)
    if m is None:
        if _OFFSET_LOST.fullmatch(value):  # `+08:00` sent unencoded reaches us as ` 08:00`
            raise HTTPException(422, f"{name}: {value!r} lost its offset's '+' (a '+' in a URL means a space:"
                                     " send it as %2B)")
        raise HTTPException(422, f"{name}: {value!r} is not an RFC 3339 time with offset, {example}")
    if m["offset"] is None:
        raise HTTPException(422, f"{name}: {value!r} has no offset; times are RFC 3339 with offset, {example}")
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError as exc:  # 2026-02-30, 24:00, a leap second
        raise HTTPException(422, f"{name}: {value!r} is not a valid time ({exc})") from exc


_TIME_DOC = {"format": "date-time"}
StartQuery = Annotated[str | None, Query(max_length=64, json_schema_extra=_TIME_DOC,
                                         description="RFC 3339 with offset, inclusive")]
EndQuery = Annotated[str | None, Query(max_length=64, json_schema_extra=_TIME_DOC,
                                       description="RFC 3339 with offset, exclusive")]


class TimeRange:
    """`?start=` (inclusive) and `?end=` (exclusive), either may be absent; 422 for a time without offset or for
    `start` not before `end` (a FastAPI dependency: `period: TimeRangeDep`)."""

    def __init__(self, start: StartQuery = None, end: EndQuery = None) -> None:
        self.start = parse_time("start", start) if start is not None else None
        self.end = parse_time("end", end) if end is not None else None
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise HTTPException(422, f"start ({start}) must be before end ({end})")

    def conditions(self, column: str) -> tuple[list[str], list[Any]]:
        """The WHERE conditions on `column` (a timestamptz) for this range, with their parameters."""
        where: list[str] = []
        args: list[Any] = []
        if self.start is not None:
            where.append(f"{column} >= %s")
            args.append(self.start)
        if self.end is not None:
            where.append(f"{column} < %s")
            args.append(self.end)
        return where, args


TimeRangeDep = Annotated[TimeRange, Depends()]


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
