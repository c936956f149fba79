"""Waiting for another thread's work in a test: a poll with a generous bound, never an assertion on time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(cond: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.005) -> bool:
    """Poll `cond` until it holds (True) or `timeout_s` pass (its last answer)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() >= deadline:
            return cond()
        time.sleep(interval_s)
    return True


def eventually(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """`wait_until`, failing the test (AssertionError naming `what`) if `cond` never holds."""
    if not wait_until(cond, timeout_s):
        raise AssertionError(f"{what} not reached within {timeout_s:g} s")
