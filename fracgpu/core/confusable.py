"""The confusable-`allocating` rule (docs/architecture.md, "Flow of one pod", step 5).

The kubelet asks the device plugin for a container's preferred devices without saying which pod
it admits; it gives only the container's vgpu-core count. So the extender never leaves two pods on
one node in phase `allocating` whose containers could be confused: a container of each with the
same vgpu-core count while the pods hold a different GPU set or VRAM limit. Identical reservations
(same GPUs, same VRAM per GPU) are interchangeable and may be allocating together. A pod stuck in
`allocating` past a timeout no longer blocks others (its share stays charged until the pod ends).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fracgpu.api import rfc3339
from fracgpu.api.v1beta1.assignment import Assignment

DEFAULT_STUCK_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class AllocatingPod:
    """A pod in phase `allocating` on a node: what the kubelet's questions could reveal about its reservation."""

    pod: str  # namespace/name
    gpus: tuple[tuple[str, int], ...]  # (uuid, VRAM bytes) per GPU, sorted by uuid
    counts: frozenset[int]  # vgpu-core counts of its GPU containers (what GetPreferredAllocation sees)
    # when it started allocating, on the caller's clock (the extender: its monotonic clock, see
    # extender.store.Store._allocating_from); `of` without `assigned_at` reads the assign time (epoch seconds)
    assigned_at: float = 0.0

    @staticmethod
    def of(pod: str, a: Assignment, assigned_at: float | None = None) -> AllocatingPod:
        counts = frozenset(len(c.device_ids) for c in a.containers if c.device_ids)
        if not counts:  # an assignment without a container split: the pod's cores per GPU
            counts = frozenset({a.gpus[0].cores}) if a.gpus else frozenset()
        # an unreadable assign time reads 0.0: long stuck
        at = rfc3339.parse_or_zero(a.assigned_at) if assigned_at is None else assigned_at
        return AllocatingPod(pod, tuple(sorted((g.uuid, g.memory) for g in a.gpus)), counts, at)


def confusable(a: AllocatingPod, b: AllocatingPod) -> bool:
    """True when a container of one could be taken for a container of the other."""
    return a.pod != b.pod and a.gpus != b.gpus and not a.counts.isdisjoint(b.counts)


def is_stuck(r: AllocatingPod, now: float, timeout_s: float) -> bool:
    return now - r.assigned_at > timeout_s


def blocker(
    new: AllocatingPod, allocating: Iterable[AllocatingPod], now: float, timeout_s: float = DEFAULT_STUCK_TIMEOUT_S
) -> AllocatingPod | None:
    """The first pod still allocating on the node that `new` could be confused with, or None."""
    for r in allocating:
        if confusable(new, r) and not is_stuck(r, now, timeout_s):
            return r
    return None


def reason_confusable(counts: Iterable[int]) -> str:
    """Identical for every node: carries only the pod's own numbers."""
    shown = ", ".join(str(c) for c in sorted(counts))
    return (
        f"a pod with containers of the same vgpu-core count ({shown}) is still allocating here "
        "with another GPU or VRAM limit; retry once it is allocated"
    )
