"""`--protocol cluster`: GPU pods through the extender's path, CPU-only pods as kube-scheduler places them.

The extender narrows every GPU pod to the core's single best node (docs/architecture.md, "Decision fidelity",
k = 1), so a GPU pod lands exactly where `ranking.rank` puts it — as in the paper protocol. A pod
that asks for no GPU never reaches the extender: kube-scheduler's default scoring places it
(NodeResourcesFit LeastAllocated over CPU and memory, plus BalancedAllocation) and breaks ties at
random. That is what differs from the paper, which sends CPU-only tasks through the policy too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fracgpu.core.cluster import ClusterState, IntArray
from fracgpu.core.fit import FitResult
from fracgpu.core.fragmentation import WorkloadMix
from fracgpu.core.policies import make_policy
from fracgpu.core.ranking import FloatArray, Policy, Weighted
from fracgpu.core.request import GpuRequest


@dataclass(slots=True)
class KubeDefault:
    """kube-scheduler's default scores for a CPU-only pod, 0-100 integers, random tie-break."""

    seed: int = 0
    name: str = "kube-default"
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 2])

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        cpu_t = np.maximum(state.cpu_total[f.rows], 1)
        mem_t = np.maximum(state.mem_total[f.rows], 1)
        cpu_used = (cpu_t - state.cpu_free[f.rows] + req.cpu_milli) / cpu_t
        mem_used = (mem_t - state.mem_free[f.rows] + req.memory_bytes) / mem_t
        least = ((1 - cpu_used) * 100 + (1 - mem_used) * 100) // 2  # LeastAllocated
        balanced = (1 - np.abs(cpu_used - mem_used) / 2) * 100  # BalancedAllocation (two resources)
        total = least.astype(np.int64) + balanced.astype(np.int64)
        # kube-scheduler picks uniformly among the top scores: a random fraction below 1 does that
        out: FloatArray = total + self.rng.random(len(f.rows)) * 0.5
        return out

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return None


@dataclass(slots=True)
class SplitByGpu:
    """CPU-only pods to `cpu`, GPU pods to `gpu` (the extender's policy)."""

    gpu: Policy
    cpu: Policy
    name: str = "cluster"

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        return (self.cpu if req.cores == 0 else self.gpu).score(state, req, f)

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return (self.cpu if req.cores == 0 else self.gpu).choose(state, req, f)


def cluster_policies(name: str, seed: int, mix: WorkloadMix) -> list[Weighted]:
    return [Weighted(SplitByGpu(gpu=make_policy(name, mix, seed), cpu=KubeDefault(seed)))]
