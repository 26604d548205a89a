"""The one list helper and the one time format of the API (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from fastapi import HTTPException

from gridhub.api.listing import ListOrder, decode_cursor, encode_cursor
from gridhub.protocol import rfc3339

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_rfc3339_keeps_each_shapes_precision() -> None:
    t = datetime(2026, 12, 4, 1, 2, 3, 456000, tzinfo=UTC)
    assert rfc3339(t, SHANGHAI) == "2026-12-04T09:02:03.456000+08:00"
    assert rfc3339(t, SHANGHAI, timespec="milliseconds") == "2026-12-04T09:02:03.456+08:00"
    assert rfc3339(t.replace(microsecond=0), SHANGHAI) == "2026-12-04T09:02:03+08:00"
    assert rfc3339(None, SHANGHAI) is None


def test_rfc3339_gives_utc_where_the_offset_is_not_whole_minutes() -> None:
    old = datetime(1900, 1, 1, tzinfo=UTC)  # Shanghai's local mean time, +08:05:43, is not RFC 3339
    assert rfc3339(old, SHANGHAI) == "1900-01-01T00:00:00+00:00"
    assert rfc3339(old, SHANGHAI, timespec="milliseconds") == "1900-01-01T00:00:00.000+00:00"


def test_list_order_builds_the_keyset_condition() -> None:
    newest_first = ListOrder(("t.opened_at", "t.id"), (datetime, str))
    at = datetime(2026, 12, 4, 9, 0, tzinfo=SHANGHAI)
    cond, args = newest_first.after(encode_cursor(at, "t-1"))
    assert cond == "(t.opened_at, t.id) < (%s, %s)" and args == [at, "t-1"]
    assert newest_first.order_by() == "t.opened_at DESC, t.id DESC" and newest_first.keys == ("opened_at", "id")
    by_id = ListOrder(("d.id",), (str,), descending=False)
    assert by_id.after(encode_cursor("sa-0001")) == ("d.id > %s", ["sa-0001"]) and by_id.order_by() == "d.id"


def test_a_cursor_of_another_list_is_refused_with_422() -> None:
    with pytest.raises(HTTPException) as err:
        decode_cursor(encode_cursor("sa-0001"), (datetime, str))
    assert err.value.status_code == 422 and "cursor" in str(err.value.detail)
