"""A clock the test moves by hand: monotonic seconds and a wall time that advance together."""

from __future__ import annotations

import datetime as dt


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._epoch = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> dt.datetime:
        return self._epoch + dt.timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
