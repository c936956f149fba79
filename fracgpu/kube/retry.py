"""Retries: exponential backoff, and client-go's RetryOnConflict for read-modify-write updates."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TypeVar

from fracgpu.kube import errors

__all__ = ["Backoff", "retry_on_conflict"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before retry ``attempt`` (0-based): ``initial_s * factor**attempt``, at most ``cap_s``."""

    initial_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return float(min(self.cap_s, self.initial_s * self.factor ** min(max(attempt, 0), 64)))


def retry_on_conflict(update: Callable[[], T], *, retries: int, what: str) -> T:
    """Run ``update`` (a fresh read, a change, a conditional write) again after each 409, at most ``retries``
    more times; the last ``Conflict`` is raised. No pause: a conflict means the object moved on, and the
    next read sees the newer version at once."""
    for attempt in range(retries + 1):
        try:
            return update()
        except errors.Conflict:
            if attempt == retries:
                raise
            log.info("update conflicted, retrying what=%s attempt=%d", what, attempt + 1)
    raise AssertionError("unreachable")
