"""TenantQuota `status` writes: keep condition times that did not change, write only what changed, and
not more often than a minimum interval per object. Pure: the caller passes `now`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fracgpu.api.v1beta1.tenantquota import Condition, TenantQuotaStatus


def merge_conditions(old: Iterable[Condition], new: Iterable[Condition]) -> tuple[Condition, ...]:
    """`new`, but a condition whose status did not change keeps its old lastTransitionTime."""
    previous = {c.type: c for c in old}
    out: list[Condition] = []
    for c in new:
        p = previous.get(c.type)
        if p is not None and p.status == c.status:
            out.append(dataclasses.replace(c, last_transition_time=p.last_transition_time))
        else:
            out.append(c)
    return tuple(out)


def status_changed(old: TenantQuotaStatus | None, new: TenantQuotaStatus) -> bool:
    """Whether writing `new` over `old` changes anything (merge conditions first)."""
    return old is None or old.to_dict() != new.to_dict()


def status_write_delay(last_write: float | None, now: float, min_interval: float) -> float:
    """Seconds to wait before the next status write of one object (0: write now).

    `last_write` None: never written. A clock that went backwards counts as due.
    """
    if last_write is None or now < last_write:
        return 0.0
    return max(0.0, min_interval - (now - last_write))


def should_write_status(
    old: TenantQuotaStatus | None,
    new: TenantQuotaStatus,
    last_write: float | None,
    now: float,
    min_interval: float,
) -> bool:
    """Write only when something changed and the object was not written in the last min_interval."""
    return status_changed(old, new) and status_write_delay(last_write, now, min_interval) == 0.0
