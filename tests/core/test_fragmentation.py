"""FGD's fragmentation measure on small worlds: F_n(m), F_n(M), the what-if after a placement, the cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.cluster import ClusterState, GpuUse, NodeSpec, PodUse
from fracgpu.core.fragmentation import (
    FragCache,
    FragModel,
    TaskShape,
    WorkloadMix,
    after_share,
    after_whole,
    typical_mix,
)

U = 1000  # milli-GPU, the trace's unit


def frag_now(s: ClusterState, model: FragModel) -> float:
    """F_n(M) of the node, computed from scratch by a fresh cache."""
    cache = FragCache(model)
    cache.refresh(s)
    return float(cache.frag[0])

HALF = TaskShape(cpu_milli=1000, units=500, gpus=1)
WHOLE = TaskShape(cpu_milli=1000, units=1000, gpus=1)
CPU = TaskShape(cpu_milli=1000, units=0, gpus=0)
MIX = WorkloadMix((HALF, WHOLE, CPU), (0.5, 0.25, 0.25))


def world(used: tuple[int, ...], cpu: int = 10_000, model: str = "A100") -> ClusterState:
    """One node "n" with len(used) GPUs of `model`; GPU i has used[i] milli taken by one pod."""
    s = ClusterState(units_per_gpu=U)
    gpus = tuple(GpuInfo(uuid=f"g{i}", index=i, model=model, memory=0, numa=-1) for i in range(len(used)))
    s.upsert_node(NodeSpec(name="n", gpus=gpus, cpu_milli=cpu, memory_bytes=1 << 30))
    for i, u in enumerate(used):
        if u:
            s.add_pod(f"p{i}", PodUse("n", (GpuUse(f"g{i}", u, 0),)))
    return s


@dataclass(frozen=True)
class Case:
    name: str
    used: tuple[int, ...]
    mix: WorkloadMix
    frag: float
    cpu: int = 10_000
    model: str = "A100"


T4_HALF = TaskShape(cpu_milli=1000, units=500, gpus=1, models=("T4",))
TWO = TaskShape(cpu_milli=1000, units=1000, gpus=2)

CASES = [
    # free [1000, 300], G = 1300. HALF fits GPU 0 -> fragment = the 300 too small: 300.
    # WHOLE fits GPU 0 -> 300. CPU-only -> all idle GPU, 1300. F = .5*300 + .25*300 + .25*1300 = 550
    Case("mixed shapes", (0, 700), MIX, 550.0),
    # CPU 500 < 1000: no GPU shape fits -> every shape sees 1300 as fragment
    Case("cpu short: everything is fragment", (0, 700), MIX, 1300.0, cpu=500),
    # HALF allows only T4 on an A100 node: 1300 for it; WHOLE fits (300) -> .5*1300 + .5*300 = 800
    Case("model not allowed", (0, 700), WorkloadMix((T4_HALF, WHOLE), (0.5, 0.5)), 800.0),
    # free [1000, 1000]: TWO fits, nothing too small -> 0
    Case("two whole GPUs fit", (0, 0), WorkloadMix((TWO,), (1.0,)), 0.0),
    # free [1000, 400]: TWO needs two free GPUs -> all 1400 is fragment
    Case("two whole GPUs do not fit", (0, 600), WorkloadMix((TWO,), (1.0,)), 1400.0),
    # fully used node: nothing idle, nothing fragmented
    Case("full node", (1000, 1000), MIX, 0.0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_node_frag(case: Case) -> None:
    s = world(case.used, cpu=case.cpu, model=case.model)
    assert frag_now(s, FragModel(case.mix)) == pytest.approx(case.frag)


@pytest.mark.parametrize(("used", "slot", "units"), [((0, 700), 0, 500), ((0, 700), 1, 300), ((200, 0, 0), 0, 800)])
def test_after_share_matches_recomputation(used: tuple[int, ...], slot: int, units: int) -> None:
    s = world(used)
    model = FragModel(MIX)
    cache = FragCache(model)
    cache.refresh(s)
    predicted = after_share(s, cache, np.array([0]), np.array([slot]), units, 1000)[0]
    s.add_pod("new", PodUse("n", (GpuUse(f"g{slot}", units, 0),), cpu_milli=1000))
    assert predicted == pytest.approx(frag_now(s, model))


def test_after_share_worked_example() -> None:
    # free [1000, 300]; a 500 share on GPU 0 leaves [500, 300], G = 800: HALF fits GPU 0 -> 300;
    # WHOLE fits nowhere -> 800; CPU-only -> 800. F = .5*300 + .25*800 + .25*800 = 550 (unchanged)
    s = world((0, 700))
    cache = FragCache(FragModel(MIX))
    cache.refresh(s)
    assert after_share(s, cache, np.array([0]), np.array([0]), 500, 1000)[0] == pytest.approx(550.0)


def test_after_whole_matches_recomputation() -> None:
    s = world((0, 0, 300))
    model = FragModel(MIX)
    cache = FragCache(model)
    cache.refresh(s)
    predicted = after_whole(s, cache, np.array([0]), np.array([[0]]), 2000)[0]
    s.add_pod("new", PodUse("n", (GpuUse("g0", U, 0),), cpu_milli=2000))
    assert predicted == pytest.approx(frag_now(s, model))


def test_cache_recomputes_only_changed_rows() -> None:
    s = world((0, 700))
    cache = FragCache(FragModel(MIX))
    frag, idle = cache.cluster(s)
    assert frag == pytest.approx(550.0)
    assert idle == 1300.0
    s.add_pod("x", PodUse("n", (GpuUse("g0", 1000, 0),)))
    frag, idle = cache.cluster(s)
    # free [0, 300]: no shape fits -> F = 300 for every shape
    assert frag == pytest.approx(300.0)
    assert idle == 300.0


def test_typical_mix_keeps_the_popular_shapes() -> None:
    # 19 x HALF, 1 x WHOLE: HALF alone covers 95 % of the tasks
    mix = typical_mix([HALF] * 19 + [WHOLE])
    assert mix.shapes == (HALF,) and mix.weights == (1.0,)
    # 18 + 2: 90 % is not enough, WHOLE joins; weights renormalised to 0.9 / 0.1
    mix = typical_mix([HALF] * 18 + [WHOLE] * 2)
    assert mix.shapes == (HALF, WHOLE) and mix.weights == pytest.approx((0.9, 0.1))
