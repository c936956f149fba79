"""What a node still takes, read the way kube-scheduler reads it: through filter answers.

Tests assert the extender's books with this, not with its internals: a fresh probe pod asks for
`c` vgpu-core on one node, and the largest `c` that filter keeps is the node's room. Probe pods
live in their own namespace (their own tenant, no quota), are never bound and never cached, so
asking changes nothing but what any filter changes. A node refused only because a confusable
pod is still allocating there has the room (the refusal says it fits, once that pod is allocated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fracgpu.api.v1beta1.extender import ExtenderArgs
from fracgpu.core import confusable
from fracgpu.extender.decide import RETRY_ALLOCATING
from fracgpu.extender.scheduler import Scheduler
from tests.extender.builders import filter_args, pod_obj

# a pod and the candidate node names -> the filter's answer as kube-scheduler receives it
Filter = Callable[[dict[str, Any], list[str]], Mapping[str, Any]]

PROBE_NAMESPACE = "fracgpu-test-probe"


def scheduler_filter(scheduler: Scheduler) -> Filter:
    """The Scheduler's public filter, answering in the wire shape."""

    def ask(pod: dict[str, Any], names: list[str]) -> Mapping[str, Any]:
        args = ExtenderArgs.from_obj(filter_args(pod, names))
        return scheduler.filter(args).to_obj(args)

    return ask


def takes(filter_: Filter, node: str, cores: int) -> bool:
    """Would filter keep `node` for a new pod asking `cores` vgpu-core (and 1Mi of VRAM per GPU)?"""
    out = filter_(pod_obj(f"probe-{cores}", cores, "1Mi", namespace=PROBE_NAMESPACE), [node])
    if node in (out.get("NodeNames") or ()):
        return True
    if str(out.get("Error") or "").startswith(RETRY_ALLOCATING):
        return True  # the one candidate fits, a confusable pod allocating there makes it wait
    return bool(out["FailedAndUnresolvableNodes"].get(node) == confusable.reason_confusable([cores]))


def room(filter_: Filter, node: str) -> int:
    """The largest share of one GPU (vgpu-core, 0-100) a new pod gets on `node`; on a one-GPU node,
    exactly that GPU's free vgpu-core."""
    lo, hi = 0, 100  # takes(lo) holds (0 = nothing asked), the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if takes(filter_, node, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def whole_gpus(filter_: Filter, node: str, most: int = 8) -> int:
    """How many whole free GPUs a new pod gets on `node` (at most `most`)."""
    free = 0
    while free < most and takes(filter_, node, 100 * (free + 1)):
        free += 1
    return free
