"""GPU fragmentation against a workload mix (the FGD paper's measure), vectorised and cached per node.

A node's idle GPU capacity is *fragment* for a task shape when the node cannot host that shape
(too few GPUs with enough free units, too little CPU, a model the shape does not allow), and for
a shape it can host, the partly free GPUs too small for it are fragment. Weighted by how often
each shape arrives, that is the node's expected fragmentation F_n(M) (Weng et al., "Beware of
Fragmentation", USENIX ATC'23, and the authors' `pkg/utils/frag.go`):

    F_n(m) = G_n                                   if m uses no GPU, or n cannot host m
    F_n(m) = sum of g_i over GPUs with g_i < r_m   otherwise
    F_n(M) = sum_m p_m F_n(m)

Written as F_n(M) = G_n - sum_m p_m ok_n(m) big_n(m), where big_n(m) is the free capacity on the
GPUs large enough for m, so that placing a task changes only a few terms (`after_share`,
`after_whole`). Units are the state's (`units_per_gpu`). Memory is not part of the measure.
Pure: numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fracgpu.core.cluster import BoolArray, ClusterState, IntArray

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TaskShape:
    """One kind of task: CPU, units per GPU (0 = CPU only), GPU count, allowed GPU models."""

    cpu_milli: int
    units: int
    gpus: int
    models: tuple[str, ...] = ()  # empty = any model

    @property
    def uses_gpu(self) -> bool:
        return self.gpus > 0 and self.units > 0

    def admits(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True, slots=True)
class WorkloadMix:
    """Task shapes and how often each arrives (weights sum to 1)."""

    shapes: tuple[TaskShape, ...]
    weights: tuple[float, ...]

    @staticmethod
    def of(counts: Sequence[tuple[TaskShape, float]]) -> WorkloadMix:
        total = sum(c for _, c in counts) or 1.0
        return WorkloadMix(tuple(s for s, _ in counts), tuple(c / total for _, c in counts))


def typical_mix(shapes: Sequence[TaskShape], coverage: float = 0.95) -> WorkloadMix:
    """The paper's "typical pods": the most popular shapes covering `coverage` of the tasks, renormalised.

    Ties in popularity keep first-seen order (the authors' Go sorts a map, so their order among
    equally popular shapes is arbitrary; only a tie at the cut-off can differ).
    """
    counts: dict[TaskShape, int] = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    need = coverage * len(shapes)
    picked: list[tuple[TaskShape, float]] = []
    cum = 0
    for shape, n in ordered:
        if cum >= need:
            break
        picked.append((shape, float(n)))
        cum += n
    return WorkloadMix.of(picked)


class FragModel:
    """The GPU-using shapes of a mix as arrays, bound to one ClusterState's model ids and units."""

    def __init__(self, mix: WorkloadMix) -> None:
        self.mix = mix
        gpu = [(s, p) for s, p in zip(mix.shapes, mix.weights, strict=True) if s.uses_gpu]
        self.shapes = tuple(s for s, _ in gpu)
        self.r: IntArray = np.array([s.units for s in self.shapes], dtype=np.int64)
        self.k: IntArray = np.array([s.gpus for s in self.shapes], dtype=np.int64)
        self.c: IntArray = np.array([s.cpu_milli for s in self.shapes], dtype=np.int64)
        self.p: FloatArray = np.array([p for _, p in gpu], dtype=np.float64)
        self._allowed: BoolArray = np.zeros((1, len(self.shapes)), dtype=np.bool_)
        self._models_seen = -1

    @property
    def cpu_per_unit(self) -> float:
        """rho: CPU (milli) the mix's GPU tasks ask per GPU unit they ask, volume-weighted (0 without GPU
        shapes): the CPU a node needs per idle GPU unit to serve what arrives for its GPUs."""
        gpu = float((self.p * self.r * self.k).sum())
        return float((self.p * self.c).sum()) / gpu if gpu > 0 else 0.0

    @property
    def cpu_per_unit_all(self) -> float:
        """The same with the CPU-only tasks' CPU counted too: what the whole mix asks per GPU unit."""
        gpu = float((self.p * self.r * self.k).sum())
        cpu = sum(w * s.cpu_milli for s, w in zip(self.mix.shapes, self.mix.weights, strict=True))
        return cpu / gpu if gpu > 0 else 0.0

    def allowed(self, state: ClusterState) -> BoolArray:
        """allowed[model_id, shape] (last row: absent slot, never allowed)."""
        models = state.models()
        if len(models) != self._models_seen:
            table = np.zeros((len(models) + 1, len(self.shapes)), dtype=np.bool_)
            for name, mid in models.items():
                table[mid] = [s.admits(name) for s in self.shapes]
            self._allowed, self._models_seen = table, len(models)
        return self._allowed


def gpu_free(state: ClusterState, rows: IntArray) -> IntArray:
    """Free units per GPU slot that can take work (absent or unhealthy slots count 0)."""
    ok = state.present[rows] & state.healthy[rows]
    out: IntArray = np.where(ok, state.free_cores[rows], 0)
    return out


@dataclass(slots=True)
class NodeTerms:
    """Per node and GPU shape: free units on big-enough GPUs (big), their count (cnt); idle units G."""

    big: IntArray  # [n, T]
    cnt: IntArray  # [n, T]
    idle: IntArray  # [n]


def node_terms(state: ClusterState, rows: IntArray, model: FragModel) -> NodeTerms:
    g = gpu_free(state, rows)
    fits = (g[:, :, None] >= model.r[None, None, :]) & model.allowed(state)[state.model[rows]]
    big = (g[:, :, None] * fits).sum(axis=1)
    return NodeTerms(big=big, cnt=fits.sum(axis=1), idle=g.sum(axis=1))


def frag_from_terms(model: FragModel, big: IntArray, cnt: IntArray, idle: IntArray, cpu: IntArray) -> FloatArray:
    """F_n(M) = G_n - sum_m p_m [k_m GPUs fit and CPU fits] big_n(m), for any leading shape."""
    ok = (cnt >= model.k) & (cpu[..., None] >= model.c)
    out: FloatArray = idle - (ok * big) @ model.p
    return out


class FragCache:
    """F_n(M) and its terms for every row of one ClusterState, recomputed only for changed rows."""

    def __init__(self, model: FragModel) -> None:
        self.model = model
        t = len(model.shapes)
        self.big: IntArray = np.zeros((0, t), dtype=np.int64)
        self.cnt: IntArray = np.zeros((0, t), dtype=np.int64)
        self.idle: IntArray = np.zeros(0, dtype=np.int64)
        self.frag: FloatArray = np.zeros(0, dtype=np.float64)
        self.seen: IntArray = np.zeros(0, dtype=np.int64)
        self._state_id = 0

    def refresh(self, state: ClusterState) -> None:
        n = state.rows
        if id(state) != self._state_id:
            self._state_id = id(state)
            self.seen = np.full(0, -1, dtype=np.int64)
        if len(self.seen) < n:
            grow = n - len(self.seen)
            t = len(self.model.shapes)
            self.big = np.concatenate([self.big, np.zeros((grow, t), dtype=np.int64)])
            self.cnt = np.concatenate([self.cnt, np.zeros((grow, t), dtype=np.int64)])
            self.idle = np.concatenate([self.idle, np.zeros(grow, dtype=np.int64)])
            self.frag = np.concatenate([self.frag, np.zeros(grow, dtype=np.float64)])
            self.seen = np.concatenate([self.seen, np.full(grow, -1, dtype=np.int64)])
        dirty = np.flatnonzero(self.seen[:n] != state.row_version[:n])
        if len(dirty) == 0:
            return
        terms = node_terms(state, dirty, self.model)
        self.big[dirty], self.cnt[dirty], self.idle[dirty] = terms.big, terms.cnt, terms.idle
        self.frag[dirty] = frag_from_terms(self.model, terms.big, terms.cnt, terms.idle, state.cpu_free[dirty])
        self.seen[dirty] = state.row_version[dirty]

    def cluster(self, state: ClusterState) -> tuple[float, float]:
        """(F, idle units) over active rows: the cluster's fragmentation amount and its idle capacity."""
        self.refresh(state)
        active = state.active[: state.rows]
        return float(self.frag[: state.rows][active].sum()), float(self.idle[: state.rows][active].sum())


def stranded(idle: IntArray, cpu_free: IntArray, cpu_total: IntArray, rho: float) -> FloatArray:
    """Idle GPU units a node's free CPU cannot serve when GPU tasks ask `rho` CPU per unit on average:
    max(0, G_n - c_n / rho). Nodes whose CPU is not tracked (allocatable 0) strand nothing.

    CPU-GPU co-fragmentation: FGD's F_n(M) sees CPU only through the shapes that no longer fit
    *now*; this is the fluid view of what the node's idle GPU will still be able to take."""
    if rho <= 0:
        return np.zeros(idle.shape, dtype=np.float64)
    out: FloatArray = np.where(cpu_total > 0, np.maximum(0.0, idle - cpu_free / rho), 0.0)
    return out


def cpu_reserve(state: ClusterState, model: FragModel) -> float:
    """rho for `stranded`: the CPU a node keeps per idle GPU unit. The GPU tasks' CPU per unit
    (FragModel.cpu_per_unit) while the cluster's CPU can also take the CPU-only tasks; the whole
    mix's (cpu_per_unit_all) when the mix, filling every GPU, would ask more CPU than the cluster
    (nodes with tracked CPU) has: then CPU-only tasks cannot all live on spare CPU, and each node
    keeps CPU for its share of them too."""
    rho = model.cpu_per_unit
    n = state.rows
    tracked = state.active[:n] & (state.cpu_total[:n] > 0)
    cpu = float(state.cpu_total[:n][tracked].sum())
    units = float(state.present[:n][tracked].sum()) * state.units_per_gpu
    rho_all = model.cpu_per_unit_all
    return rho_all if units > 0 and rho_all * units > cpu else rho


def model_pressure(state: ClusterState, model: FragModel) -> FloatArray:
    """pressure[model id] in [0, 1]: how much of a GPU model's free capacity the tasks that can run
    *only* on some models (shapes with a model constraint) are expected to need.

    The mix says what share d_mu of the GPU demand is bound to model mu (a shape allowed on several
    models spreads over them by capacity). The demand still to come is taken as the cluster's free
    GPU capacity (a filling cluster), so model mu's free capacity f_mu is asked for d_mu x F_free:
    pressure = min(1, d_mu x F_free / f_mu); a model with nothing free is at 1. No model constraint in
    the mix: all zero. The last entry (index -1: absent slots) is 1."""
    n = state.rows
    nm = len(state.models()) + 1
    out: FloatArray = np.zeros(nm, dtype=np.float64)
    bound = [j for j, s in enumerate(model.shapes) if s.models]
    if not bound or n == 0:
        return out
    ok = state.present[:n] & state.healthy[:n] & state.active[:n, None]
    mid = np.where(ok, state.model[:n], nm - 1).ravel()
    cap = np.bincount(mid, weights=ok.ravel().astype(np.float64), minlength=nm)
    free = np.bincount(mid, weights=np.where(ok, state.free_cores[:n], 0).ravel().astype(np.float64), minlength=nm)
    free[nm - 1] = 0.0
    vol = model.p * model.r * model.k
    total = float(vol.sum()) or 1.0
    need = np.zeros(nm, dtype=np.float64)
    ids_of = state.models()
    for j in bound:
        ids = sorted({ids_of[x] for x in model.shapes[j].models if x in ids_of})
        c = cap[ids]
        if c.sum() > 0:
            need[ids] += vol[j] / total * c / c.sum()
    asked = need * float(free.sum())
    out = np.where(free > 0, np.minimum(1.0, asked / np.maximum(free, 1.0)), 1.0)
    return out


def after_share(
    state: ClusterState, cache: FragCache, rows: IntArray, slots: IntArray, units: int, cpu_milli: int
) -> FloatArray:
    """F_n(M) after putting a `units` share on GPU `slots[e]` of node `rows[e]` (one entry per candidate)."""
    m = cache.model
    g = state.free_cores[rows, slots]
    g2 = g - units
    allowed = m.allowed(state)[state.model[rows, slots]]
    before = (g[:, None] >= m.r) & allowed
    after = (g2[:, None] >= m.r) & allowed
    big = cache.big[rows] - g[:, None] * before + g2[:, None] * after
    cnt = cache.cnt[rows] - before + after
    return frag_from_terms(m, big, cnt, cache.idle[rows] - units, state.cpu_free[rows] - cpu_milli)


def after_whole(
    state: ClusterState, cache: FragCache, rows: IntArray, chosen: IntArray, cpu_milli: int
) -> FloatArray:
    """F_n(M) after taking the whole free GPUs `chosen[e, :]` on node `rows[e]` (and the CPU)."""
    m = cache.model
    big = cache.big[rows].copy()
    cnt = cache.cnt[rows].copy()
    idle = cache.idle[rows].copy()
    allowed_all = m.allowed(state)
    for j in range(chosen.shape[1]):
        s = chosen[:, j]
        g = state.free_cores[rows, s]
        hit = (g[:, None] >= m.r) & allowed_all[state.model[rows, s]]
        big -= g[:, None] * hit
        cnt -= hit
        idle -= g
    return frag_from_terms(m, big, cnt, idle, state.cpu_free[rows] - cpu_milli)
