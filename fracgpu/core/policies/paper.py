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

from fracgpu.core.cluster import ClusterState, IntArray
from fracgpu.core.fit import FitResult
from fracgpu.core.fragmentation import FragCache, FragModel, WorkloadMix, after_share, after_whole, frag_from_terms
from fracgpu.core.ranking import FloatArray, best_fit_choice
from fracgpu.core.request import GpuRequest
from fracgpu.core.workload import WorkloadHistogram

MAX_SPEC_CPU = 128_000  # milli-CPU of the largest node the paper normalises by
MAX_SPEC_GPUS = 8  # GPUs of the largest node


def node_idle(state: ClusterState, rows: IntArray) -> IntArray:
    """G_n: free GPU units summed over the node's GPUs."""
    out: IntArray = np.where(state.present[rows], state.free_cores[rows], 0).sum(axis=1)
    return out


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
    """Fragmentation gradient descent: the placement (node and GPU) that grows F_n(M) the least."""

    def __init__(self, mix: WorkloadMix | WorkloadHistogram, name: str = "fgd") -> None:
        self.name = name
        # A WorkloadHistogram (the extender's rolling one) is followed: the mix is re-read when it changes.
        self.histogram = mix if isinstance(mix, WorkloadHistogram) else None
        self._version = self.histogram.version if self.histogram is not None else 0
        self.model = FragModel(mix.mix() if isinstance(mix, WorkloadHistogram) else mix)
        self.cache = FragCache(self.model)
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
            after = after_share(state, self.cache, rows, ss.astype(np.int64), req.cores, req.cpu_milli)
            sc = sigmoid_score(self.cache.frag[rows] - after, unit)
            grid = np.full(f.gpu_ok.shape, -1, dtype=np.int64)
            grid[ii, ss] = sc
            self.last_grid = grid
            score: IntArray = grid.max(axis=1) if n else np.zeros(0, dtype=np.int64)
            choice: IntArray = np.argmax(grid, axis=1).reshape(-1, 1).astype(np.int64)
        elif req.cores > 0:
            choice = best_fit_choice(state, req, f)
            after = after_whole(state, self.cache, f.rows, choice, req.cpu_milli)
            score = sigmoid_score(self.cache.frag[f.rows] - after, unit)
        else:
            c = self.cache
            after = frag_from_terms(
                self.model, c.big[f.rows], c.cnt[f.rows], c.idle[f.rows], state.cpu_free[f.rows] - req.cpu_milli
            )
            score = sigmoid_score(c.frag[f.rows] - after, unit)
            choice = np.zeros((n, 1), dtype=np.int64)
        self._last = (f, score, choice)
        return score, choice

    def follow(self) -> bool:
        """Re-read the followed histogram's mix if it changed; True when it did."""
        if self.histogram is None or self.histogram.version == self._version:
            return False
        self._version = self.histogram.version
        self.model = FragModel(self.histogram.mix())
        self.cache = FragCache(self.model)
        return True

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        return _float(self.evaluate(state, req, f)[0])

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return self.evaluate(state, req, f)[1]
