"""The one backoff formula (reflectors, the controller's evictions) and retry-on-conflict."""

from __future__ import annotations

import pytest

from fracgpu.kube import errors
from fracgpu.kube.retry import Backoff, retry_on_conflict


@pytest.mark.parametrize(("backoff", "delays", "far"), [
    (Backoff(initial_s=0.5, factor=2.0, cap_s=30.0), [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], 30.0),
    (Backoff(initial_s=1.0, factor=3.0, cap_s=10.0), [1.0, 3.0, 9.0, 10.0, 10.0, 10.0, 10.0, 10.0], 10.0),
    (Backoff(initial_s=0.1, factor=1.0, cap_s=1.0), [0.1] * 8, 0.1),
], ids=["default", "factor-3", "constant"])
def test_backoff_delays(backoff: Backoff, delays: list[float], far: float) -> None:
    assert [backoff.delay(attempt) for attempt in range(8)] == pytest.approx(delays)
    assert backoff.delay(10_000) == pytest.approx(far)  # no overflow however long it has failed


class Racing:
    """An update whose write meets a newer version of the object ``conflicts`` times before it lands."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.attempts = 0

    def __call__(self) -> int:
        self.attempts += 1
        if self.attempts <= self.conflicts:
            raise errors.Conflict(409, "Conflict", "the object has been modified")
        return self.attempts


@pytest.mark.parametrize(("conflicts", "retries", "attempts", "lands"), [
    (0, 5, 1, True),
    (5, 5, 6, True),
    (6, 5, 6, False),
    (1, 0, 1, False),
], ids=["no conflict", "last try lands", "one too many", "no retries"])
def test_retry_on_conflict_rereads_until_the_budget_is_spent(conflicts: int, retries: int, attempts: int,
                                                             lands: bool) -> None:
    update = Racing(conflicts)
    if lands:
        assert retry_on_conflict(update, retries=retries, what="x") == attempts
    else:
        with pytest.raises(errors.Conflict):
            retry_on_conflict(update, retries=retries, what="x")
    assert update.attempts == attempts


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def update() -> None:
        calls.append(1)
        raise errors.NotFound(404, "NotFound", "gone")

    with pytest.raises(errors.NotFound):
        retry_on_conflict(update, retries=5, what="x")
    assert calls == [1]
