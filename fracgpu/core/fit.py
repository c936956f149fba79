"""Which nodes, and which GPUs on them, can take a pod: vectorised over every candidate node.

Each refusal names the pod's numbers, never the node's, so that kube-scheduler's grouping of
identical strings reads well ("480 no single GPU with 40 free vgpu-core and 8Gi free vgpu-memory").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from fracgpu.api.v1beta1.names import TOPOLOGY_REQUIRED
from fracgpu.core.cluster import BoolArray, ClusterState, IntArray
from fracgpu.core.quantity import format_bytes_human
from fracgpu.core.request import GpuRequest

NO_GPUS = "node has no fracgpu GPUs"
NO_HEALTHY = "no healthy GPU of an allowed model"


def reason_model(req: GpuRequest) -> str:
    return f"no GPU of a model allowed by {req.model_rule.text!r}"


def reason_capacity(req: GpuRequest) -> str:
    if req.gpu_count == 1 and req.cores_per_gpu < req.units_per_gpu:
        head = f"no single GPU with {req.cores_per_gpu} free vgpu-core"
    elif req.gpu_count == 1:
        head = "no whole free GPU"
    else:
        head = f"fewer than {req.gpu_count} whole free GPUs"
    if req.memory is not None:
        return f"{head} and {format_bytes_human(req.memory)} free vgpu-memory"
    if req.cores_per_gpu < req.units_per_gpu:
        return f"{head} and {req.cores_per_gpu}% of its memory free"
    return head


def reason_unhealthy_room(req: GpuRequest) -> str:
    """The node has GPUs with room for the pod, but they are unhealthy. The pod's numbers only, so the
    text is the same on every node; which GPUs and why is per node (the extender logs it at debug,
    `fracgpu inspect` shows each GPU's health)."""
    return f"the GPUs with room are unhealthy ({reason_capacity(req)} among the healthy ones)"


def reason_pod_limit(limit: int) -> str:
    return f"every fitting GPU already holds {limit} pods"


def reason_topology(req: GpuRequest) -> str:
    return f"no {req.gpu_count} free GPUs joined by the node's best link (topology: required)"


def reason_cpu(req: GpuRequest) -> str:
    return f"insufficient cpu for the pod's {req.cpu_milli}m"


def reason_memory(req: GpuRequest) -> str:
    return f"insufficient memory for the pod's {format_bytes_human(req.memory_bytes)}"


@dataclass(frozen=True, slots=True)
class FitOptions:
    check_host: bool = True  # CPU/RAM (kube-scheduler also checks them; the simulator relies on this)
    max_pods_per_gpu: int = 0  # 0 = no limit
    # Name the cause for every node that does not fit. The simulator, which needs only the nodes
    # that fit, turns this off: a per-node Python loop would dominate a 10,000-task replay.
    reasons: bool = True


@dataclass(slots=True)
class FitResult:
    rows: IntArray  # rows of nodes that fit, in the order given
    gpu_ok: BoolArray  # [len(rows), slots]: GPUs of those nodes that can hold the pod
    mem_need: IntArray  # [len(rows), slots]: VRAM the pod would hold on each GPU
    failed: dict[str, str] = field(default_factory=dict)  # preemption might help
    unresolvable: dict[str, str] = field(default_factory=dict)  # preemption cannot help


def allowed_models(state: ClusterState, req: GpuRequest) -> BoolArray:
    """allowed[model_id]: a lookup table, so a model rule costs one pass over distinct models.

    The last entry (index -1, the model id of absent slots) is always False."""
    table = np.zeros(max(1, len(state.models())) + 1, dtype=np.bool_)
    if not req.model_rule.allow and not req.model_rule.deny:
        table[: len(state.models())] = True
        return table
    for model, mid in state.models().items():
        table[mid] = req.model_rule.admits(model)
    return table


DEFAULT_FIT = FitOptions()


def fit(state: ClusterState, req: GpuRequest, rows: IntArray, opts: FitOptions = DEFAULT_FIT) -> FitResult:
    c = req.cores_per_gpu
    k = req.gpu_count
    present = state.present[rows]
    model_ok = present & allowed_models(state, req)[state.model[rows]]
    usable_gpu = model_ok & state.healthy[rows]
    total = state.total_memory[rows]
    unit = req.units_per_gpu
    mem_need = np.full_like(total, req.memory) if req.memory is not None else total * c // unit
    free = state.free_cores[rows]
    free_mem = state.free_memory[rows]
    room = usable_gpu & (free >= c) & (free_mem >= mem_need)
    if k > 1 or c == unit:
        # whole GPUs: nothing else may be on them
        room &= (free == unit) & (free_mem == total)
    capacity_ok = room.sum(axis=1) >= k
    node_ok = capacity_ok
    gpu_ok = room
    limit_hit = np.zeros(len(rows), dtype=np.bool_)
    if opts.max_pods_per_gpu > 0:
        gpu_ok = room & (state.gpu_pods[rows] < opts.max_pods_per_gpu)
        node_ok = gpu_ok.sum(axis=1) >= k
        limit_hit = capacity_ok & ~node_ok
    if c == 0:
        # a pod that asks for no GPU (the trace's CPU-only tasks): only host resources matter
        node_ok = np.ones(len(rows), dtype=np.bool_)
        capacity_ok = node_ok
    host_cpu = host_mem = np.ones(len(rows), dtype=np.bool_)
    if opts.check_host:
        host_cpu = state.cpu_free[rows] >= req.cpu_milli
        host_mem = state.mem_free[rows] >= req.memory_bytes
    usable = state.usable[rows]
    ok = node_ok & host_cpu & host_mem & usable
    topo_fail = np.zeros(len(rows), dtype=np.bool_)
    if k > 1 and req.topology == TOPOLOGY_REQUIRED:
        for i in np.flatnonzero(ok):
            if best_linked_set(state, int(rows[i]), gpu_ok[i], k, strict=True) is None:
                topo_fail[i] = True
        ok &= ~topo_fail

    result = FitResult(rows=rows[ok], gpu_ok=gpu_ok[ok], mem_need=mem_need[ok])
    bad = np.flatnonzero(~ok)
    if len(bad) == 0 or not opts.reasons:
        return result
    # GPUs that would have room if they were healthy (only computed to name the cause)
    room_any = model_ok & (free >= c) & (free_mem >= mem_need)
    if k > 1 or c == unit:
        room_any &= (free == unit) & (free_mem == total)
    unhealthy_room = ~capacity_ok & (room_any.sum(axis=1) >= k)
    # One cause per refused node, decided for all of them at once; the first true condition wins.
    causes = [
        ~usable,
        ~present.any(axis=1),
        ~model_ok.any(axis=1),
        ~usable_gpu.any(axis=1),
        unhealthy_room,
        ~capacity_ok,
        limit_hit,
        ~host_cpu,
        ~host_mem,
        topo_fail,
    ]
    texts = [
        "",  # the node's own reason, below
        NO_GPUS,
        reason_model(req),
        NO_HEALTHY,
        reason_unhealthy_room(req),
        reason_capacity(req),
        reason_pod_limit(opts.max_pods_per_gpu),
        reason_cpu(req),
        reason_memory(req),
        reason_topology(req),
    ]
    unresolvable_causes = 4  # the first four: preemption cannot cure them
    # (room on unhealthy GPUs is a capacity refusal: freeing a healthy GPU would cure it)
    cause = np.select([c[bad] for c in causes], list(range(len(causes))), default=5)
    for b, c in zip(bad.tolist(), cause.tolist(), strict=True):
        row = int(rows[b])
        spec = state.specs[row]
        assert spec is not None
        if c == 0:
            result.unresolvable[spec.name] = spec.unusable
        elif c < unresolvable_causes:
            result.unresolvable[spec.name] = texts[c]
        else:
            result.failed[spec.name] = texts[c]
    return result


def best_linked_set(
    state: ClusterState, row: int, gpu_ok: BoolArray, k: int, *, strict: bool
) -> tuple[int, ...] | None:
    """k usable GPU slots whose weakest pairwise link is as strong as possible, lowest indices first.

    With strict=True only a set whose weakest link equals the node's best link class counts.
    Nodes have at most a few dozen GPUs and k is small, so an exact search over combinations of
    the usable slots is cheap; the answer depends only on the node's links (fixed until its
    inventory changes) and on which slots are usable, so it is memoised on the state.
    """
    slots = tuple(int(s) for s in np.flatnonzero(gpu_ok))
    if len(slots) < k:
        return None
    if k == 1:
        return (slots[0],)
    key = (row, slots, k)
    hit = state.link_memo.get(key)
    if hit is None:
        hit = _search_linked_set(state, row, slots, k)
        state.link_memo[key] = hit
    best, best_score = hit
    if strict and best_score < int(state.best_link[row]):
        return None
    return best


def _search_linked_set(
    state: ClusterState, row: int, slots: tuple[int, ...], k: int
) -> tuple[tuple[int, ...], int]:
    link = state.link[row]
    best: tuple[int, ...] = slots[:k]
    best_score = -1
    target = int(state.best_link[row])
    for combo in itertools.combinations(slots, k):
        weakest = min(int(link[a, b]) for a, b in itertools.combinations(combo, 2))
        if weakest > best_score:
            best, best_score = combo, weakest
            if weakest >= target:
                break
    return best, best_score
