"""Replay a task sequence through the core's ranking, as the FGD paper's experiments do.

Protocol (fracgpu/data/openb/SOURCE.md, "Experiment protocol"): tasks sorted by name, shuffled
with the seed, inflated to 1.3x the cluster's GPU capacity by appending random copies (or thinned
by random removal when above), then placed one by one, never leaving; a task that fits nowhere
fails and is dropped. Node priority for ties is a per-seed random permutation.

Randomness: the authors' simulator uses Go's math/rand, whose streams Python cannot reproduce
bit for bit, so the shuffles, inflation draws and node priorities here are different draws from
the same distributions (numpy's PCG64 seeded with the seed). Per-seed figures therefore differ
from the published ones by the seed-to-seed spread; means over seeds agree (tests check this).

Every placement goes through `fracgpu.core.ranking.rank` — the extender's ranking and GPU choice —
with `limit=1`; nothing here re-implements a policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from fracgpu.core.cluster import ClusterState, GpuUse, PodUse
from fracgpu.core.fit import FitOptions
from fracgpu.core.fragmentation import FragCache, FragModel, WorkloadMix, typical_mix
from fracgpu.core.ranking import Weighted, rank
from fracgpu.core.request import GpuRequest
from fracgpu.sim.trace import MILLI, NodeRow, Task, build_cluster

SIM_FIT = FitOptions(check_host=True, reasons=False)
KINDS = ("cpu-only", "share", "1-gpu", "2-gpu", "4-gpu", "8-gpu")
Progress = Callable[[int, int], None]


def paper_sequence(tasks: Sequence[Task], seed: int, inflation: float, capacity: int) -> list[Task]:
    """The arrival sequence of one run: sort by name, shuffle, inflate (or thin) to inflation x capacity."""
    rng = np.random.default_rng(seed)
    ordered = sorted(tasks, key=lambda t: t.name)
    seq = [ordered[int(i)] for i in rng.permutation(len(ordered))]
    target = inflation * capacity
    total = sum(t.gpu_request for t in seq)
    if total < target and ordered and any(t.gpu_request for t in ordered):
        while True:
            t = ordered[int(rng.integers(len(ordered)))]
            if total + t.gpu_request > target:
                break
            seq.append(t)
            total += t.gpu_request
    while total > target and seq:
        t = seq.pop(int(rng.integers(len(seq))))
        total -= t.gpu_request
    return seq


def node_priority(n: int, seed: int) -> list[int]:
    """The per-seed fixed node priority (the simulator's random name prefix): a permutation of 0..n-1."""
    rng = np.random.default_rng([seed, 1])
    return [int(x) for x in rng.permutation(n)]


@dataclass(slots=True)
class RunResult:
    policy: str
    seed: int
    trace: str
    tasks: int
    capacity: int  # milli-GPU of the cluster
    alloc: dict[int, float] = field(default_factory=dict)  # arrived % bucket -> mean GPU allocation %
    frag_ratio: dict[int, float] = field(default_factory=dict)  # bucket -> mean fragmentation ratio %
    failed: dict[str, int] = field(default_factory=dict)  # kind -> tasks failed up to 100 % arrived
    failed_gpu: int = 0  # milli-GPU of the tasks failed up to 100 % arrived
    seconds: float = 0.0

    def at(self, bucket: int) -> float | None:
        """GPU allocation % at an arrived bucket (the nearest one below when none landed in it)."""
        keys = [k for k in self.alloc if k <= bucket]
        return self.alloc[max(keys)] if keys else None

    def unallocated(self, bucket: int = 100) -> float | None:
        a = self.at(bucket)
        return None if a is None else 100.0 - a

    def frag_at(self, bucket: int = 100) -> float | None:
        keys = [k for k in self.frag_ratio if k <= bucket]
        return self.frag_ratio[max(keys)] if keys else None


def replay(
    state: ClusterState,
    seq: Sequence[Task],
    policies: Sequence[Weighted],
    metric_mix: WorkloadMix,
    *,
    label: tuple[str, int, str] = ("", 0, ""),
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
    upto: float | None = None,
) -> RunResult:
    """Place `seq` in order on `state`; record allocation and fragmentation per arrived-% bucket.

    `upto` stops once arrived passes that % (e.g. 101 when only the 100 % point is wanted)."""
    start = clock()
    capacity = int(state.present[: state.rows].sum()) * state.units_per_gpu
    metric = FragCache(FragModel(metric_mix))
    requests: dict[Task, GpuRequest] = {}
    res = RunResult(policy=label[0], seed=label[1], trace=label[2], tasks=len(seq), capacity=capacity,
                    failed={k: 0 for k in KINDS})
    sums: dict[int, list[float]] = {}
    arrived = used = 0
    step = max(1, len(seq) // 200)
    for i, task in enumerate(seq):
        req = requests.get(task)
        if req is None:
            req = requests[task] = task.request()
        ranking = rank(state, req, policies, opts=SIM_FIT, limit=1)
        arrived += task.gpu_request
        bucket = round(arrived * 100 / capacity)
        if ranking.ranked:
            top = ranking.ranked[0]
            gpus: tuple[GpuUse, ...] = ()
            if req.cores > 0:
                gpus = tuple(GpuUse(state.gpu_uuid(top.row, s), req.cores_per_gpu, 0) for s in top.gpus)
            state.add_pod(f"t{i}", PodUse(top.node, gpus, req.cpu_milli, req.memory_bytes))
            used += task.gpu_request
        elif bucket <= 100:
            res.failed[task.kind] = res.failed.get(task.kind, 0) + 1
            res.failed_gpu += task.gpu_request
        frag, idle = metric.cluster(state)
        acc = sums.setdefault(bucket, [0.0, 0.0, 0.0])
        acc[0] += used * 100 / capacity
        acc[1] += 100 * frag / idle if idle else 0.0
        acc[2] += 1
        if progress is not None and (i % step == 0 or i == len(seq) - 1):
            progress(i + 1, len(seq))
        if upto is not None and arrived * 100 / capacity > upto:
            break
    res.alloc = {b: a[0] / a[2] for b, a in sorted(sums.items())}
    res.frag_ratio = {b: a[1] / a[2] for b, a in sorted(sums.items())}
    res.seconds = clock() - start
    return res


PolicyFactory = Callable[[str, int, WorkloadMix], Sequence[Weighted]]


def run_paper(
    nodes: list[NodeRow],
    tasks: list[Task],
    policy: str,
    seed: int,
    make: PolicyFactory,
    *,
    inflation: float = 1.3,
    trace: str = "",
    progress: Progress | None = None,
    upto: float | None = None,
) -> RunResult:
    """One run of the paper protocol: fresh cluster, per-seed priority and sequence, the named policy."""
    state = build_cluster(nodes, node_priority(len(nodes), seed))
    capacity = sum(n.gpus for n in nodes) * MILLI
    mix = typical_mix([t.shape() for t in tasks])
    seq = paper_sequence(tasks, seed, inflation, capacity)
    return replay(state, seq, make(policy, seed, mix), mix, label=(policy, seed, trace), progress=progress,
                  upto=upto)
