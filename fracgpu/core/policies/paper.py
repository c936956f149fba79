"""The FGD paper's scheduling policies, scored exactly as the authors' simulator codes them.

Source: github.com/hkust-adsl/kubernetes-scheduler-simulator, `pkg/simulator/plugin/*_score.go`
(see fracgpu/data/openb/SOURCE.md). Scores are integers 0-100 as in kube-scheduler (Go's int64
truncation is kept, because truncation makes ties, and ties go to the fixed node priority in
`ranking.rank`). Capacities are in the state's units (`units_per_gpu`, 1000 milli-GPU in the
trace), with the paper's normalising constants: 128 CPUs and 8 GPUs per node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fracgpu.core.cluster import BoolArray, ClusterState, IntArray
from fracgpu.core.fit import FitResult, allowed_models
from fracgpu.core.fragmentation import (
    FragCache,
    FragModel,
    WorkloadMix,
    after_share,
    after_whole,
    cpu_reserve,
    frag_from_terms,
    model_pressure,
    stranded,
)
from fracgpu.core.ranking import FloatArray, best_fit_choice, node_idle
from fracgpu.core.request import GpuRequest
from fracgpu.core.workload import WorkloadHistogram

MAX_SPEC_CPU = 128_000  # milli-CPU of the largest node the paper normalises by
MAX_SPEC_GPUS = 8  # GPUs of the largest node
MEMO_CELLS = 2_000_000  # FGD keeps per-shape [row, slot] results for at most this many cells (16 MB)


def request_units(req: GpuRequest) -> int:
    """R_t: the task's total GPU units (0 for a CPU-only task)."""
    return req.cores_per_gpu * req.gpu_count if req.cores > 0 else 0


def normalise_int(scores: IntArray) -> IntArray:
    """kube-scheduler's min-max normalisation to 0-100 in integer arithmetic (the simulator's NormalizeScore)."""
    if len(scores) == 0:
        return scores
    lo, hi = int(scores.min()), int(scores.max())
    if hi == lo:
        return np.zeros_like(scores)
    out: IntArray = (scores - lo) * 100 // (hi - lo)
    return out


def _float(x: IntArray) -> FloatArray:
    out: FloatArray = x.astype(np.float64)
    return out


@dataclass(slots=True)
class RandomPolicy:
    """One fitting node uniformly at random; a random fitting GPU on it (the paper's Random)."""

    seed: int = 0
    name: str = "random"
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        out = np.zeros(len(f.rows), dtype=np.float64)
        if len(f.rows):
            out[int(self.rng.integers(len(f.rows)))] = 100.0
        return out

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        if req.gpu_count > 1 or not req.is_share or len(f.rows) == 0:
            return None
        keys = np.where(f.gpu_ok, self.rng.random(f.gpu_ok.shape), -1.0)
        picked: IntArray = np.argmax(keys, axis=1).reshape(-1, 1).astype(np.int64)
        return picked


@dataclass(frozen=True, slots=True)
class PaperBestFit:
    """Prefer the node left with the least CPU and GPU: 100 (1 - [.5 (c_n - c_t)/128 CPUs + .5 (G_n - R_t)/8 GPUs]),
    then min-max normalised over the fitting nodes."""

    name: str = "best-fit"

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        cpu_left = (state.cpu_free[f.rows] - req.cpu_milli).astype(np.float64)
        gpu_left = (node_idle(state, f.rows) - request_units(req)).astype(np.float64)
        s = cpu_left / MAX_SPEC_CPU * 0.5
        s = s + gpu_left / (MAX_SPEC_GPUS * state.units_per_gpu) * 0.5
        raw = ((1.0 - s) * 100.0).astype(np.int64)  # Go's int64() truncates toward zero
        return _float(normalise_int(raw))

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return best_fit_choice(state, req, f)


@dataclass(frozen=True, slots=True)
class DotProduct:
    """Tetris-style: a smaller dot product of the node's free and the task's requested (CPU, GPU) wins."""

    name: str = "dot-product"

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        gmax = float(MAX_SPEC_GPUS * state.units_per_gpu)
        dot = (state.cpu_free[f.rows] / MAX_SPEC_CPU) * (req.cpu_milli / MAX_SPEC_CPU)
        dot = dot + (node_idle(state, f.rows) / gmax) * (request_units(req) / gmax)
        raw = (100.0 * (1.0 - dot / 2.0)).astype(np.int64)
        return _float(raw)

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return best_fit_choice(state, req, f)


@dataclass(frozen=True, slots=True)
class GpuPacking:
    """Use partly used GPUs first, then free GPUs on used nodes, then idle nodes (GPU tasks only)."""

    name: str = "packing"

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        n = len(f.rows)
        if req.cores == 0 or n == 0:
            return np.zeros(n, dtype=np.float64)
        unit = state.units_per_gpu
        present = state.present[f.rows]
        free = state.free_cores[f.rows]
        fully_free = ((free == unit) & present).sum(axis=1)
        gpus = present.sum(axis=1)
        idle_node = fully_free == gpus
        case3 = np.maximum(33 - fully_free, fully_free)
        if req.is_share:
            least = np.where(f.gpu_ok, free, unit + 1).min(axis=1)
            case2 = np.full(n, max(50 - 1, 33))
            case1 = np.maximum(100 - (least * 100 // unit) // 10, 50)
            used = np.where(least == unit, case2, case1)
        else:
            used = np.full(n, max(50 - req.gpu_count, 33))
        return _float(np.where(idle_node, case3, used))

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return best_fit_choice(state, req, f)


def pod_tag(state: ClusterState, cores: tuple[int, ...]) -> str:
    """GpuClustering's tag of a GPU pod: "share" for a fraction of one GPU, "<k>-gpu" for k whole GPUs."""
    if len(cores) == 1 and cores[0] < state.units_per_gpu:
        return "share"
    return f"{len(cores)}-gpu"


@dataclass(slots=True)
class GpuClustering:
    """Keep tasks of one kind (share / k whole GPUs) together, fuller nodes first (GPU tasks only)."""

    name: str = "clustering"
    _tags: dict[int, tuple[int, frozenset[str]]] = field(default_factory=dict)

    def node_tags(self, state: ClusterState, row: int) -> frozenset[str]:
        version = int(state.row_version[row])
        hit = self._tags.get(row)
        if hit is not None and hit[0] == version:
            return hit[1]
        tags = set()
        for key in state.pods_on(state.name(row)):
            use = state.pods[key]
            if use.gpus:
                tags.add(pod_tag(state, tuple(g.cores for g in use.gpus)))
        out = frozenset(tags)
        self._tags[row] = (version, out)
        return out

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        n = len(f.rows)
        if req.cores == 0 or n == 0:
            return np.zeros(n, dtype=np.float64)
        tag = pod_tag(state, (req.cores_per_gpu,) * req.gpu_count)
        gmax = MAX_SPEC_GPUS * state.units_per_gpu
        fill = 25 * (gmax - node_idle(state, f.rows)) // gmax
        base = np.zeros(n, dtype=np.int64)
        for i, row in enumerate(f.rows):
            tags = self.node_tags(state, int(row))
            if tag in tags:
                base[i] = 75 if len(tags) == 1 else 50
            elif not tags:
                base[i] = 25
        return _float(base + fill)

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return best_fit_choice(state, req, f)


def sigmoid_score(delta: FloatArray, unit: int) -> IntArray:
    """FGD's score of a fragmentation decrease `delta` (units): int(100 * sigmoid(delta / one GPU))."""
    out: IntArray = (100.0 / (1.0 + np.exp(-delta / unit))).astype(np.int64)
    return out


class FGD:
    """Fragmentation gradient descent: the placement (node and GPU) that grows F_n(M) the least.

    With the default weights (0, 0) this is the paper's FGD exactly. fracgpu's planner turns on two
    more terms of the gradient (docs/packing.md), both subtracted from the fragmentation decrease
    before the sigmoid, in GPU units:
    - `cpu_weight` x the growth of the node's idle GPU that its free CPU cannot serve at the mix's
      CPU per GPU (fragmentation.stranded and cpu_reserve: CPU-GPU co-fragmentation);
    - `model_weight` x the task's GPU units x how much more pressed its GPU model is than the least
      pressed model the request admits (fragmentation.model_pressure: keep a model's free GPUs for
      the tasks that can only run there, in proportion to their expected demand).
    Like FragCache, an FGD object serves one ClusterState.
    """

    def __init__(self, mix: WorkloadMix | WorkloadHistogram, name: str = "fgd", cpu_weight: float = 0.0,
                 model_weight: float = 0.0) -> None:
        self.name = name
        self.cpu_weight = cpu_weight
        self.model_weight = model_weight
        # A WorkloadHistogram (the extender's rolling one) is followed: the mix is re-read when it changes.
        self.histogram = mix if isinstance(mix, WorkloadHistogram) else None
        self._version = self.histogram.version if self.histogram is not None else 0
        self.model = FragModel(mix.mix() if isinstance(mix, WorkloadHistogram) else mix)
        self.cache = FragCache(self.model)
        # (units, cpu) of a share -> (F_n(M) decrease per [row, slot], the row_version it is for): a
        # filter recomputes only the rows that changed since the last request of that shape
        self._memo: dict[tuple[int, int], tuple[FloatArray, IntArray]] = {}
        self._memo_state = 0
        self._last: tuple[FitResult, IntArray, IntArray] | None = None
        # [fitting nodes, slots]: the last share's score per GPU (-1 where it does not fit)
        self.last_grid: IntArray = np.zeros((0, 0), dtype=np.int64)

    def evaluate(self, state: ClusterState, req: GpuRequest, f: FitResult) -> tuple[IntArray, IntArray]:
        """(score per fitting node, GPU slots per fitting node), computed once per FitResult."""
        if self._last is not None and self._last[0] is f:
            return self._last[1], self._last[2]
        self.follow()
        self.cache.refresh(state)
        n = len(f.rows)
        unit = state.units_per_gpu
        if req.cores > 0 and req.is_share:
            ii, ss = np.nonzero(f.gpu_ok)
            rows = f.rows[ii]
            slots = ss.astype(np.int64)
            delta = self.share_delta(state, f.rows, req.cores, req.cpu_milli)[rows, slots]
            if self.cpu_weight or self.model_weight:
                delta = delta - self.penalty(state, f.rows, state.model[rows, slots], req.cores, req.cpu_milli,
                                             allowed_models(state, req), ii)
            sc = sigmoid_score(delta, unit)
            grid = np.full(f.gpu_ok.shape, -1, dtype=np.int64)
            grid[ii, ss] = sc
            self.last_grid = grid
            score: IntArray = grid.max(axis=1) if n else np.zeros(0, dtype=np.int64)
            choice: IntArray = np.argmax(grid, axis=1).reshape(-1, 1).astype(np.int64)
        elif req.cores > 0:
            choice = best_fit_choice(state, req, f)
            after = after_whole(state, self.cache, f.rows, choice, req.cpu_milli)
            delta = self.cache.frag[f.rows] - after
            if self.cpu_weight or self.model_weight:
                mids = state.model[f.rows, choice[:, 0]]
                delta = delta - self.penalty(state, f.rows, mids, request_units(req), req.cpu_milli,
                                             allowed_models(state, req))
            score = sigmoid_score(delta, unit)
        else:
            c = self.cache
            after = frag_from_terms(
                self.model, c.big[f.rows], c.cnt[f.rows], c.idle[f.rows], state.cpu_free[f.rows] - req.cpu_milli
            )
            delta = c.frag[f.rows] - after
            if self.cpu_weight:
                delta = delta - self.penalty(state, f.rows, None, 0, req.cpu_milli)
            score = sigmoid_score(delta, unit)
            choice = np.zeros((n, 1), dtype=np.int64)
        self._last = (f, score, choice)
        return score, choice

    def share_delta(self, state: ClusterState, rows: IntArray, units: int, cpu_milli: int) -> FloatArray:
        """[row, slot] -> F_n(M) before minus after putting a `units` share (and `cpu_milli`) on that GPU,
        valid for `rows` (the cache must be refreshed); only rows changed since the last call for this
        shape are recomputed (row-local: the same numbers as computing every candidate afresh)."""
        if self._memo_state != id(state):
            self._memo, self._memo_state = {}, id(state)
        key = (units, cpu_milli)
        memo = self._memo.pop(key, None)
        if memo is None or memo[0].shape[0] < state.rows or memo[0].shape[1] != state.slots:
            cap = max(state.rows, len(state.row_version))
            memo = (np.zeros((cap, state.slots), dtype=np.float64), np.full(cap, -1, dtype=np.int64))
        self._memo[key] = memo  # most recently used last
        while len(self._memo) > max(8, MEMO_CELLS // max(1, state.rows * state.slots)):
            del self._memo[next(iter(self._memo))]
        delta, seen = memo
        stale = rows[seen[rows] != state.row_version[rows]]
        if len(stale):
            ii, ss = np.nonzero(state.present[stale] & (state.free_cores[stale] >= units))
            r, sl = stale[ii], ss.astype(np.int64)
            delta[r, sl] = self.cache.frag[r] - after_share(state, self.cache, r, sl, units, cpu_milli)
            seen[stale] = state.row_version[stale]
        return delta

    def penalty(
        self, state: ClusterState, rows: IntArray, models: IntArray | None, units: int, cpu_milli: int,
        allowed: BoolArray | None = None, node_of: IntArray | None = None,
    ) -> FloatArray:
        """The extra terms (class doc) for placing `units` of GPU on a GPU of model id `models[e]` of
        node `rows[node_of[e]]` (`rows[e]` when node_of is None) and `cpu_milli` of its CPU, per
        candidate e; larger is worse. `allowed[model id]`: the models the request admits."""
        size = len(node_of) if node_of is not None else len(rows)
        out = np.zeros(size, dtype=np.float64)
        if size == 0:
            return out
        if self.cpu_weight:
            rho = cpu_reserve(state, self.model)
            idle, cpu, total = self.cache.idle[rows], state.cpu_free[rows], state.cpu_total[rows]
            grown = stranded(idle - units, cpu - cpu_milli, total, rho) - stranded(idle, cpu, total, rho)
            out += self.cpu_weight * (grown if node_of is None else grown[node_of])
        if self.model_weight and units > 0 and models is not None and allowed is not None:
            press = model_pressure(state, self.model)
            # relative to the least pressed model the request may use (not to the candidates at hand:
            # bind ranks one node, filter all, and both must choose the same GPUs)
            floor = float(press[:-1][allowed[: len(press) - 1]].min(initial=1.0))
            out += self.model_weight * units * np.maximum(0.0, press[models] - floor)
        return out

    def follow(self) -> bool:
        """Re-read the followed histogram's mix if it changed; True when it did."""
        if self.histogram is None or self.histogram.version == self._version:
            return False
        self._version = self.histogram.version
        self.model = FragModel(self.histogram.mix())
        self.cache = FragCache(self.model)
        self._memo = {}
        return True

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        return _float(self.evaluate(state, req, f)[0])

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return self.evaluate(state, req, f)[1]
