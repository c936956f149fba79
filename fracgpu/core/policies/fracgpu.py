"""fracgpu's default policy: plan GPU fill patterns for the share sizes, then FGD.

Idea (fracgpu/data/openb/SOURCE.md, "How far any policy can go"): at high load nearly all idle
GPU sits in holes that shares left behind (an 810-unit share leaves a 190 hole only rare small
shares fill). Which shares end up together on a GPU is decided one placement at a time; FGD
looks one step ahead. The planner looks at the whole size histogram once: it solves the
cutting-stock linear program (fewest GPUs whose fill patterns cover the histogram; column
generation with an exact knapsack for new patterns) and then, online,

1. puts a share into a partly used GPU whose contents plus the share still fit a planned pattern
   (its own, or another one it is then re-tagged to; `any_pattern=False`: only its own);
2. else opens a free GPU for the pattern with that size that is furthest behind its planned share
   (the GPU is tagged with that pattern when the share lands);
3. else (sizes outside the plan, whole GPUs, CPU-only tasks, off-plan GPUs) does what FGD does.

Inside each step the FGD score orders the candidates, then the fixed node priority (ranking.rank).
The FGD here has two more terms in its gradient (paper.FGD, docs/packing.md): the growth of the
idle GPU a node's free CPU cannot serve (CPU-GPU co-fragmentation, fragmentation.stranded) and the
pressure on GPU models that model-bound tasks need (fragmentation.model_pressure).
Online: it sees the workload histogram (core.workload) and the current state, never future tasks.
The pattern tags are a cache over the state's pods: rebuilt from what is on each GPU after any
change of that node, so a restarted extender recovers them (a restored GPU takes the first pattern
its contents fit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fracgpu.core.cluster import ClusterState, IntArray
from fracgpu.core.fit import FitResult
from fracgpu.core.fragmentation import WorkloadMix
from fracgpu.core.policies.paper import FGD
from fracgpu.core.request import GpuRequest
from fracgpu.core.workload import WorkloadHistogram

FloatArray = npt.NDArray[np.float64]
Pattern = tuple[int, ...]  # counts per plan size
# Weights of the two terms fracgpu adds to FGD's gradient (paper.FGD; docs/packing.md): CPU-GPU
# co-fragmentation (fragmentation.stranded) and GPU-model pressure (fragmentation.model_pressure)
CPU_WEIGHT = 1.0
MODEL_WEIGHT = 1.0


def knapsack(sizes: Sequence[int], values: Sequence[float], cap: int) -> tuple[float, list[int]]:
    """Unbounded integer knapsack: the most value of items (with repetition) within `cap` units."""
    best = np.zeros(cap + 1)
    take = np.full(cap + 1, -1, dtype=np.int64)
    for c in range(1, cap + 1):
        best[c] = best[c - 1]
        take[c] = -1
        for j, (s, v) in enumerate(zip(sizes, values, strict=True)):
            if s <= c and best[c - s] + v > best[c] + 1e-12:
                best[c], take[c] = best[c - s] + v, j
    counts = [0] * len(sizes)
    c = cap
    while c > 0:
        j = int(take[c])
        if j < 0:
            c -= 1
            continue
        counts[j] += 1
        c -= sizes[j]
    return float(best[cap]), counts


def plan_patterns(
    sizes: Sequence[int], demand: Sequence[float], cap: int, rounds: int = 200
) -> list[tuple[Pattern, float]]:
    """Cutting-stock LP by column generation: patterns (counts per size) and how many GPUs of each.

    min sum_P x_P  s.t.  sum_P a_jP x_P >= d_j,  x >= 0;  new columns from the knapsack on the duals.
    """
    from scipy.optimize import linprog  # type: ignore[import-untyped]

    n = len(sizes)
    if n == 0:
        return []
    cols: list[list[int]] = []
    for j in range(n):
        col = [0] * n
        col[j] = max(1, cap // sizes[j])
        cols.append(col)
    x: FloatArray = np.zeros(0)
    for _ in range(rounds):
        a = np.array(cols, dtype=np.float64).T  # [n, P]
        res = linprog(np.ones(len(cols)), A_ub=-a, b_ub=-np.asarray(demand, dtype=np.float64),
                      bounds=(0, None), method="highs")
        if res.status != 0:
            break
        x = res.x
        duals = -np.asarray(res.ineqlin.marginals)
        value, counts = knapsack(sizes, list(duals), cap)
        if value <= 1 + 1e-9 or counts in cols:
            break
        cols.append(counts)
    return [(tuple(cols[i]), float(x[i])) for i in range(len(x)) if x[i] > 1e-9]


class PatternPlanner:
    """Plan-then-fill for shares (see the module doc), FGD for everything else."""

    def __init__(self, mix: WorkloadMix | WorkloadHistogram, name: str = "fracgpu", any_pattern: bool = True,
                 cpu_weight: float = CPU_WEIGHT, model_weight: float = MODEL_WEIGHT) -> None:
        self.name = name
        # a partly used GPU takes a share when its contents plus the share fit *any* planned pattern
        # (it is re-tagged), not only the pattern it was opened for
        self.any_pattern = any_pattern
        self.fgd = FGD(mix, name=name, cpu_weight=cpu_weight, model_weight=model_weight)
        self.mix = self.fgd.model.mix
        self._planned_for = -1
        self.sizes: list[int] = []
        self.patterns: list[Pattern] = []
        self.share: FloatArray = np.zeros(0)  # planned share of opened GPUs per pattern
        self.opened: IntArray = np.zeros(0, dtype=np.int64)
        self._pattern_matrix: IntArray = np.zeros((0, 0), dtype=np.int64)
        self.size_index: dict[int, int] = {}
        # per (row, slot): assigned pattern (-1 none) and share contents counts per plan size
        self.assigned: IntArray = np.zeros((0, 0), dtype=np.int64)
        self.room: npt.NDArray[np.bool_] = np.zeros((0, 0, 0), dtype=np.bool_)
        # [row, slot, size]: the contents plus one share of that size still fit some planned pattern
        self.room_any: npt.NDArray[np.bool_] = np.zeros((0, 0, 0), dtype=np.bool_)
        self.seen: IntArray = np.zeros(0, dtype=np.int64)
        self._last: tuple[FitResult, IntArray, IntArray] | None = None

    # ---- plan -----------------------------------------------------------------------------------
    def _plan(self, unit: int) -> None:
        if self._planned_for == unit:
            return
        hist: dict[int, float] = {}
        for s, p in zip(self.mix.shapes, self.mix.weights, strict=True):
            if s.gpus == 1 and 0 < s.units < unit:
                hist[s.units] = hist.get(s.units, 0.0) + p
        self.sizes = sorted(hist, reverse=True)
        self.size_index = {s: j for j, s in enumerate(self.sizes)}
        plan = plan_patterns(self.sizes, [hist[s] * 1000 for s in self.sizes], unit)
        self.patterns = [p for p, _ in plan]
        total = sum(x for _, x in plan) or 1.0
        self.share = np.array([x / total for _, x in plan], dtype=np.float64)
        self.opened = np.zeros(len(self.patterns), dtype=np.int64)
        self._pattern_matrix = np.array(self.patterns, dtype=np.int64).reshape(len(self.patterns), len(self.sizes))
        self._planned_for = unit

    # ---- per-GPU pattern tags, rebuilt for changed rows ------------------------------------------
    def _refresh(self, state: ClusterState) -> None:
        n, slots, nsz = state.rows, state.slots, len(self.sizes)
        if self.assigned.shape != (n, slots) or self.room.shape[2] != nsz:
            old_a, old_r, old_any, old_s = self.assigned, self.room, self.room_any, self.seen
            self.assigned = np.full((n, slots), -1, dtype=np.int64)
            self.room = np.zeros((n, slots, nsz), dtype=np.bool_)
            self.room_any = np.zeros((n, slots, nsz), dtype=np.bool_)
            self.seen = np.full(n, -1, dtype=np.int64)
            if old_a.shape[1:] == (slots,) and old_r.shape[2:] == (nsz,):
                m = min(len(old_a), n)
                self.assigned[:m], self.room[:m], self.seen[:m] = old_a[:m], old_r[:m], old_s[:m]
                self.room_any[:m] = old_any[:m]
        dirty = np.flatnonzero(self.seen[:n] != state.row_version[:n])
        unit = state.units_per_gpu
        for row in dirty:
            r = int(row)
            spec = state.specs[r]
            contents: list[list[int]] = [[] for _ in range(slots)]
            if spec is not None:
                slot_of = {g.uuid: i for i, g in enumerate(spec.gpus)}
                for key in state.pods_on(spec.name):
                    use = state.pods[key]
                    if len(use.gpus) == 1 and use.gpus[0].cores < unit and use.gpus[0].uuid in slot_of:
                        contents[slot_of[use.gpus[0].uuid]].append(use.gpus[0].cores)
            for s in range(slots):
                self._retag(r, s, contents[s])
            self.seen[r] = state.row_version[r]

    def _retag(self, row: int, slot: int, content: list[int]) -> None:
        old = int(self.assigned[row, slot])
        counts = [0] * len(self.sizes)
        off_plan = False
        for c in content:
            j = self.size_index.get(c)
            if j is None:
                off_plan = True
            else:
                counts[j] += 1
        new = -1
        if content and not off_plan:
            if old >= 0 and all(a <= b for a, b in zip(counts, self.patterns[old], strict=True)):
                new = old
            else:
                fitting = [i for i, p in enumerate(self.patterns)
                           if all(a <= b for a, b in zip(counts, p, strict=True))]
                if fitting:
                    total = int(self.opened.sum()) + 1
                    new = max(fitting, key=lambda i: (self.share[i] * total - self.opened[i], -i))
        if old != new:
            if old >= 0:
                self.opened[old] -= 1
            if new >= 0:
                self.opened[new] += 1
            self.assigned[row, slot] = new
        if new >= 0:
            self.room[row, slot] = [a < b for a, b in zip(counts, self.patterns[new], strict=True)]
        else:
            self.room[row, slot] = False
        self.room_any[row, slot] = False
        if content and not off_plan and len(self.patterns):
            spare = self._pattern_matrix - np.asarray(counts)  # [patterns, sizes]
            fits = (spare >= 0).all(axis=1)
            self.room_any[row, slot] = ((spare >= 1) & fits[:, None]).any(axis=0)

    # ---- Policy ---------------------------------------------------------------------------------
    def evaluate(self, state: ClusterState, req: GpuRequest, f: FitResult) -> tuple[IntArray, IntArray]:
        if self._last is not None and self._last[0] is f:
            return self._last[1], self._last[2]
        if self.fgd.follow():  # the workload changed: plan again, re-tag every GPU
            self.mix = self.fgd.model.mix
            self._planned_for = -1
            self.seen = np.full(len(self.seen), -1, dtype=np.int64)
            self.assigned = np.zeros((0, 0), dtype=np.int64)
        score, choice = self.fgd.evaluate(state, req, f)
        unit = state.units_per_gpu
        self._plan(unit)
        j = self.size_index.get(req.cores) if req.cores > 0 and req.is_share else None
        if j is not None and len(f.rows):
            self._refresh(state)
            grid = self.fgd.last_grid
            room = self.room_any if self.any_pattern else self.room
            planned = room[f.rows, :, j] & f.gpu_ok
            fresh = f.gpu_ok & (state.free_cores[f.rows] == unit) & any(p[j] > 0 for p in self.patterns)
            klass = np.where(planned, 2, np.where(fresh, 1, 0))
            combined = np.where(grid >= 0, klass * 1000 + grid, -1)
            score = combined.max(axis=1)
            choice = np.argmax(combined, axis=1).reshape(-1, 1).astype(np.int64)
        self._last = (f, score, choice)
        return score, choice

    def score(self, state: ClusterState, req: GpuRequest, f: FitResult) -> FloatArray:
        out: FloatArray = self.evaluate(state, req, f)[0].astype(np.float64)
        return out

    def choose(self, state: ClusterState, req: GpuRequest, f: FitResult) -> IntArray | None:
        return self.evaluate(state, req, f)[1]
