"""The rolling histogram of observed request shapes, seeded from a bundled prior. Pure: no I/O, no clock.

Fragmentation-aware placement (FGD, fracgpu's planner) needs to know what kinds of tasks tend to
arrive. The extender feeds every pod it sees (`observe`), the histogram decays old observations
geometrically (half-life in observations, not time, so tests need no clock), and `mix()` gives
the current "typical pods" (core.fragmentation.typical_mix rule: the most popular shapes that cover
95 % of the weight). Until real observations outweigh it, the prior dominates: the 35 typical
shapes of the openb production trace (Alibaba, the FGD paper's default workload), in milli-GPU,
converted to the cluster's units.

`version` changes only when the mix is rebuilt (every `rebuild_every` observations), so a policy
can keep its per-node caches until then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fracgpu.core.fragmentation import TaskShape, WorkloadMix, typical_mix

# (cpu_milli, milli-GPU per GPU, GPUs, count) in the openb default trace (8,152 tasks); CPU-only: 0 GPUs.
OPENB_PRIOR: tuple[tuple[int, int, int, int], ...] = (
    (3152, 810, 1, 1047), (11300, 1000, 1, 874), (11400, 1000, 1, 599), (3152, 1000, 1, 470),
    (11908, 470, 1, 388), (12500, 0, 0, 366), (8000, 470, 1, 360), (12000, 1000, 1, 326),
    (32000, 0, 0, 290), (18708, 1000, 1, 255), (11908, 650, 1, 237), (4000, 320, 1, 232),
    (9810, 1000, 1, 195), (8000, 0, 0, 185), (8000, 1000, 1, 164), (4000, 1000, 1, 159),
    (15700, 1000, 1, 158), (11908, 1000, 1, 153), (16000, 1000, 1, 150), (4000, 230, 1, 122),
    (6000, 460, 1, 120), (15400, 0, 0, 120), (16500, 0, 0, 95), (14200, 1000, 1, 93),
    (24200, 1000, 1, 84), (3152, 590, 1, 75), (8000, 320, 1, 72), (4152, 550, 1, 72),
    (11900, 1000, 1, 55), (4000, 160, 1, 54), (4152, 370, 1, 45), (4000, 220, 1, 43),
    (8200, 1000, 1, 41), (15200, 1000, 1, 36), (4152, 810, 1, 31),
)  # fmt: skip
PRIOR_UNITS = 1000


def prior_shapes(units_per_gpu: int) -> list[tuple[TaskShape, float]]:
    """The prior in the cluster's units (a share is rounded to the nearest unit, at least 1)."""
    out = []
    for cpu, milli, gpus, count in OPENB_PRIOR:
        units = 0 if gpus == 0 else max(1, round(milli * units_per_gpu / PRIOR_UNITS))
        out.append((TaskShape(cpu, units, gpus), float(count)))
    return out


@dataclass(slots=True)
class WorkloadHistogram:
    """Decayed counts of request shapes; `mix()` is the current typical mix."""

    units_per_gpu: int
    half_life: float = 5000.0  # observations after which an observation weighs half
    prior_weight: float = 1.0  # 1.0 = the prior counts as much as 8,152 fresh observations
    rebuild_every: int = 200
    coverage: float = 0.95
    version: int = field(default=0, init=False)
    _weights: dict[TaskShape, float] = field(default_factory=dict, init=False)
    _decay: float = field(default=1.0, init=False)
    _scale: float = field(default=1.0, init=False)
    _since: int = field(default=0, init=False)
    _mix: WorkloadMix = field(default=WorkloadMix((), ()), init=False)

    def __post_init__(self) -> None:
        self._weights: dict[TaskShape, float] = {}
        for shape, count in prior_shapes(self.units_per_gpu):
            self._weights[shape] = self._weights.get(shape, 0.0) + count * self.prior_weight
        self._decay = 0.5 ** (1.0 / self.half_life)
        self._scale = 1.0  # lazy decay: stored weights are in units of the current scale
        self._since = 0
        self.version = 0
        self._mix = self._build()

    def observe(self, shape: TaskShape) -> None:
        """One more arrival of `shape` (a pod the extender was asked to place)."""
        self._scale /= self._decay  # older weights shrink relative to the new one
        self._weights[shape] = self._weights.get(shape, 0.0) + self._scale
        if self._scale > 1e100:  # renormalise before floats overflow
            self._weights = {k: v / self._scale for k, v in self._weights.items()}
            self._scale = 1.0
        self._since += 1
        if self._since >= self.rebuild_every:
            self._since = 0
            self._mix = self._build()
            self.version += 1

    def mix(self) -> WorkloadMix:
        return self._mix

    def _build(self) -> WorkloadMix:
        shapes = sorted(self._weights.items(), key=lambda kv: -kv[1])
        total = sum(w for _, w in shapes) or 1.0
        picked: list[tuple[TaskShape, float]] = []
        cum = 0.0
        for shape, w in shapes:
            if cum >= self.coverage * total:
                break
            picked.append((shape, w))
            cum += w
        return WorkloadMix.of(picked)


def shape_of(cpu_milli: int, cores: int, units_per_gpu: int, models: tuple[str, ...] = ()) -> TaskShape:
    """The shape of a request of `cores` units (a share below one GPU, else whole GPUs)."""
    if cores <= 0:
        return TaskShape(cpu_milli, 0, 0, models)
    if cores < units_per_gpu:
        return TaskShape(cpu_milli, cores, 1, models)
    return TaskShape(cpu_milli, units_per_gpu, cores // units_per_gpu, models)


__all__ = ["OPENB_PRIOR", "WorkloadHistogram", "prior_shapes", "shape_of", "typical_mix"]
