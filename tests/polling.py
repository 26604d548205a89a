"""The tests' one way to wait for something to happen: poll a check until it is done or a liveness bound runs out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], done: Callable[[T], object] = bool, *, timeout: float, interval: float = 0.05,
         ignore: tuple[type[BaseException], ...] = ()) -> tuple[bool, T | BaseException | None]:
    """Call `check()` every `interval` s until `done(value)` or `timeout` s have passed: (done, last value).

    Exceptions of the `ignore` types count as "not yet" and are returned as the last value. The check runs at
    least once, and once more after the bound, so a slow check is not cut short by its own duration.
    """
    end = time.monotonic() + timeout
    last: T | BaseException | None = None
    while True:
        try:
            value = check()
        except ignore as exc:
            last = exc
        else:
            last = value
            if done(value):
                return True, value
        if time.monotonic() > end:
            return False, last
        time.sleep(interval)


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.05,
             ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll until `check()` is truthy and return its value; fail naming `what` (a liveness bound, not a timing
    assertion)."""
    ok, last = poll(check, timeout=timeout, interval=interval, ignore=ignore)
    if not ok:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last value {last!r}")
    return last
