"""List answers of CONTRACT §4: `?limit=` and opaque keyset `?cursor=`, `{"items", "next"}`, and RFC 3339 times out."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import HTTPException, Query

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


def page(items: list[dict[str, Any]], limit: int, key: Any) -> dict[str, Any]:
    """`{"items", "next"}` from rows fetched with LIMIT limit + 1; `key(row)` gives the keyset of a row."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next": encode_cursor(*key(items[-1])) if more and items else None}


def rfc3339(value: datetime | None, tz: ZoneInfo) -> str | None:
    """A time as RFC 3339 with the district's offset (UTC where that offset is not whole minutes, as in local
    mean time before time zones existed), or None."""
    if value is None:
        return None
    local = value.astimezone(tz)
    offset = local.utcoffset()
    if offset is not None and offset.seconds % 60:
        local = value.astimezone(UTC)
    return local.isoformat()
