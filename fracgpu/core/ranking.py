"""The one deterministic ranking of nodes that the extender, bind and the simulator all use.

A policy scores every fitting node and picks the GPUs it would use there; the ranking sorts by
score, then by the fixed node priority (never at random: kube-scheduler's random tie-breaking is
what collapses packing quality, see docs/architecture.md "Decision fidelity"). Weighted policies combine
normalised scores; the first policy with a GPU choice decides the GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from fracgpu.api.v1beta1.names import TOPOLOGY_NONE
from fracgpu.core.cluster import ClusterState, IntArray
from fracgpu.core.fit import DEFAULT_FIT, FitOptions, FitResult, best_linked_set, fit
from fracgpu.core.request import GpuRequest

FloatArray = npt.NDArray[np.float64]


class Policy(Protocol):
    """Scores fitting nodes (higher is better) and may choose the GPU slots to use on each."""

    @property
    def name(self) -> str: ...

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray: ...

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        """[len(f.rows), gpu_count] slot indices, or None to leave the choice to the next policy."""
        ...


def node_idle(state: ClusterState, rows: IntArray) -> IntArray:
    """G_n: free GPU units summed over the node's GPUs."""
    out: IntArray = np.where(state.present[rows], state.free_cores[rows], 0).sum(axis=1)
    return out


def best_fit_choice(state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray:
    """Default GPU pick: a share goes to the fitting GPU with the least free cores (lowest index on
    ties); whole GPUs take the best-linked free set, lowest indices first."""
    k = req.gpu_count
    if len(f.rows) == 0:
        return np.zeros((0, k), dtype=np.int64)
    if k == 1:
        free = np.where(f.gpu_ok, state.free_cores[f.rows], state.units_per_gpu + 1)
        picked: IntArray = np.argmin(free, axis=1).reshape(-1, 1).astype(np.int64)
        return picked
    out = np.zeros((len(f.rows), k), dtype=np.int64)
    for i, row in enumerate(f.rows):
        ok = f.gpu_ok[i]
        chosen: tuple[int, ...] | None = None
        if req.topology != TOPOLOGY_NONE and state.best_link[row] > 0:
            chosen = best_linked_set(state, int(row), ok, k, strict=False)
        if chosen is None:
            chosen = tuple(int(s) for s in np.flatnonzero(ok)[:k])
        out[i] = chosen
    return out


@dataclass(frozen=True, slots=True)
class BestFit:
    """Binpack: prefer the node left with the least free GPU (and CPU), like the paper's BestFit."""

    name: str = "binpack"

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        gpu_free = node_idle(state, f.rows)
        gpu_left = (gpu_free - req.cores).astype(np.float64) / max(1, state.slots * state.units_per_gpu)
        cpu_total = np.maximum(state.cpu_total[f.rows], 1)
        cpu_left = (state.cpu_free[f.rows] - req.cpu_milli).astype(np.float64) / cpu_total
        scores: FloatArray = 1.0 - (0.5 * gpu_left + 0.5 * cpu_left)
        return scores

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return best_fit_choice(state, req, f)


@dataclass(frozen=True, slots=True)
class Spread:
    """Prefer the emptiest node: fewer pods per GPU, less interference, worse packing."""

    name: str = "spread"

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        present = state.present[f.rows]
        free = np.where(present, state.free_cores[f.rows], 0).sum(axis=1).astype(np.float64)
        scores: FloatArray = free / np.maximum(present.sum(axis=1), 1) / state.units_per_gpu
        return scores

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        if req.gpu_count > 1:
            return None
        free = np.where(f.gpu_ok, state.free_cores[f.rows], -1)
        picked: IntArray = np.argmax(free, axis=1).reshape(-1, 1).astype(np.int64)
        return picked


@dataclass(frozen=True, slots=True)
class TopologyQuality:
    """For multi-GPU pods: how strong the weakest link of the chosen set is (NVLink > switch > NUMA)."""

    name: str = "topology"

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        out = np.zeros(len(f.rows), dtype=np.float64)
        if req.gpu_count < 2 or req.topology == TOPOLOGY_NONE:
            return out
        for i, row in enumerate(f.rows):
            chosen = best_linked_set(state, int(row), f.gpu_ok[i], req.gpu_count, strict=False)
            if chosen is not None:
                links = state.link[row]
                out[i] = min(int(links[a, b]) for a in chosen for b in chosen if a != b) / 3.0
        return out

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return None


@dataclass(frozen=True, slots=True)
class Weighted:
    policy: Policy
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Ranked:
    node: str
    row: int
    score: float  # combined, higher is better
    gpus: tuple[int, ...]  # GPU slots on the node, as the policy chose them


@dataclass(slots=True)
class Ranking:
    ranked: list[Ranked]  # best first
    failed: dict[str, str]
    unresolvable: dict[str, str]
    unknown: list[str]


def _normalise(x: FloatArray) -> FloatArray:
    if len(x) == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


def rank(
    state: ClusterState,
    req: GpuRequest,
    policies: Sequence[Weighted],
    names: list[str] | None = None,
    opts: FitOptions = DEFAULT_FIT,
    limit: int | None = None,
    *,
    rows: IntArray | None = None,
) -> Ranking:
    """Fit the pod on the named nodes (every node when None) and rank the ones that fit, best first.

    `rows` (with `names` None): the candidates' rows, already resolved by a caller that caches the
    name lookup (the extender gets the same 5,000 names on every filter)."""
    unknown: list[str] = []
    if rows is None:
        rows, unknown = state.rows_of(names)
    f = fit(state, req, rows, opts)
    n = len(f.rows)
    total = np.zeros(n, dtype=np.float64)
    choice: IntArray | None = None
    single = len(policies) == 1
    for wp in policies:
        s = wp.policy.score(state, req, f)
        total += wp.weight * (s if single else _normalise(s))
        if choice is None:
            choice = wp.policy.choose(state, req, f)
    if choice is None:
        choice = best_fit_choice(state, req, f)
    # lexsort: last key is primary -> highest score, then lowest fixed priority, then row
    order = np.lexsort((f.rows, state.priority[f.rows], -total))
    if limit is not None:
        order = order[:limit]
    ranked = [
        Ranked(state.name(int(f.rows[i])), int(f.rows[i]), float(total[i]), tuple(int(s) for s in choice[i]))
        for i in order
    ]
    return Ranking(ranked, f.failed, f.unresolvable, unknown)
