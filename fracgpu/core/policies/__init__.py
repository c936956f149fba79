"""Placement policies by name: the FGD paper's baselines, FGD, and fracgpu's default.

Each is a `fracgpu.core.ranking.Policy` (score + GPU choice) used through `ranking.rank`, so the
extender and the simulator place pods by the very same code. Pure: numpy only, no I/O.
"""

from __future__ import annotations

from fracgpu.core.fragmentation import WorkloadMix
from fracgpu.core.policies.paper import FGD, DotProduct, GpuClustering, GpuPacking, PaperBestFit, RandomPolicy
from fracgpu.core.ranking import Policy, Weighted
from fracgpu.core.workload import WorkloadHistogram

DEFAULT_POLICY = "fracgpu"
PAPER_POLICIES = ("random", "dot-product", "clustering", "packing", "best-fit", "fgd")
POLICIES = (*PAPER_POLICIES, DEFAULT_POLICY)


def make_policy(name: str, mix: WorkloadMix | WorkloadHistogram, seed: int = 0) -> Policy:
    """A fresh policy object (policies keep per-state caches: one per ClusterState).

    `mix` is a fixed workload mix (the simulator: the trace's typical tasks) or the extender's
    rolling WorkloadHistogram, which FGD and fracgpu's planner follow as it changes."""
    if name == "random":
        return RandomPolicy(seed=seed)
    if name == "best-fit":
        return PaperBestFit()
    if name == "dot-product":
        return DotProduct()
    if name == "packing":
        return GpuPacking()
    if name == "clustering":
        return GpuClustering()
    if name == "fgd":
        return FGD(mix)
    if name == DEFAULT_POLICY:
        from fracgpu.core.policies.fracgpu import PatternPlanner

        return PatternPlanner(mix)
    raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}")


def live_default(units_per_gpu: int = 100) -> tuple[Policy, WorkloadHistogram]:
    """The extender's default: fracgpu's planner following a rolling histogram seeded from the prior.
    Feed the histogram every pod to place (`histogram.observe(workload.shape_of(...))`)."""
    histogram = WorkloadHistogram(units_per_gpu)
    return make_policy(DEFAULT_POLICY, histogram), histogram


def policy_list(name: str, seed: int, mix: WorkloadMix) -> list[Weighted]:
    return [Weighted(make_policy(name, mix, seed))]
