"""The paper's policies and fracgpu's planner on small worlds, through the one ranking (core.ranking.rank)."""

from __future__ import annotations

import numpy as np
import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.cluster import ClusterState, GpuUse, NodeSpec, PodUse
from fracgpu.core.fit import FitOptions
from fracgpu.core.fragmentation import TaskShape, WorkloadMix
from fracgpu.core.policies import POLICIES, make_policy
from fracgpu.core.policies.fracgpu import knapsack, plan_patterns
from fracgpu.core.policies.paper import normalise_int, sigmoid_score
from fracgpu.core.ranking import Weighted, rank
from fracgpu.core.request import GpuRequest

U = 1000
HALF = TaskShape(cpu_milli=1000, units=500, gpus=1)
WHOLE = TaskShape(cpu_milli=1000, units=1000, gpus=1)
OPTS = FitOptions(reasons=False)


def world(nodes: dict[str, tuple[int, ...]], cpu: int = 64_000) -> ClusterState:
    """Nodes by name -> milli used on each GPU (one pod per used GPU); priority = insertion order."""
    s = ClusterState(units_per_gpu=U)
    for prio, (name, used) in enumerate(nodes.items()):
        gpus = tuple(GpuInfo(uuid=f"{name}-{i}", index=i, model="A100", memory=0, numa=-1) for i in range(len(used)))
        s.upsert_node(NodeSpec(name=name, gpus=gpus, cpu_milli=cpu, memory_bytes=1 << 40, priority=prio))
        for i, u in enumerate(used):
            if u:
                s.add_pod(f"{name}-p{i}", PodUse(name, (GpuUse(f"{name}-{i}", u, 0),), cpu_milli=1000))
    return s


def req(units: int, gpus: int = 1, cpu: int = 1000) -> GpuRequest:
    return GpuRequest(cores=units * gpus, memory=None, cpu_milli=cpu, units_per_gpu=U)


def test_fgd_takes_the_placement_that_fragments_least() -> None:
    # mix: HALF .5, WHOLE .5. Node a free [1000, 500]: F = .5*0 + .5*500 = 250 (WHOLE sees the 500 as fragment).
    # a/GPU0 -> [500, 500]: WHOLE fits nowhere, F = .5*0 + .5*1000 = 500, delta -250 -> int(100 sigmoid(-.25)) = 43
    # a/GPU1 -> [1000, 0]:  F = 0, delta +250 -> int(100 sigmoid(.25)) = 56   <- best
    # b free [1000, 1000]: F = 0; b/GPU0 -> [500, 1000]: F = 250, delta -250 -> 43
    s = world({"b": (0, 0), "a": (0, 500)})
    fgd = make_policy("fgd", WorkloadMix((HALF, WHOLE), (0.5, 0.5)))
    r = rank(s, req(500), [Weighted(fgd)], opts=OPTS)
    assert [(x.node, x.gpus, x.score) for x in r.ranked] == [("a", (1,), 56.0), ("b", (0,), 43.0)]


def test_sigmoid_score_truncates_like_go() -> None:
    # 100 / (1 + e^0) = 50; 100 / (1 + e^-1) = 73.1 -> 73; 100 / (1 + e^1) = 26.9 -> 26
    assert list(sigmoid_score(np.array([0.0, 1000.0, -1000.0]), 1000)) == [50, 73, 26]


def test_integer_min_max_normalisation() -> None:
    # (s - 90) * 100 // (95 - 90): 90 -> 0, 93 -> 60, 95 -> 100; equal scores -> all 0
    assert list(normalise_int(np.array([90, 93, 95]))) == [0, 60, 100]
    assert list(normalise_int(np.array([7, 7]))) == [0, 0]


@pytest.mark.parametrize(
    ("name", "best"),
    [
        # best-fit: a has 500 free GPU milli vs b 2000 -> a is left fuller
        ("best-fit", "a"),
        # packing: a's half-used GPU takes the share (case 1: 100 - 50/10 = 95) vs idle b (33 - 2 = 31)
        ("packing", "a"),
        # clustering: a hosts only shares (75 + fill) vs idle b (25 + 0)
        ("clustering", "a"),
        # dot-product: a's dot product (62000/128000 * 1000/128000 + 500/8000 * 300/8000 = .0061) is smaller
        # than b's (.0133), but int(100 * (1 - dot/2)) is 99 for both: Go's truncation ties them, and the
        # tie goes to the higher node priority, b
        ("dot-product", "b"),
    ],
)
def test_baselines_prefer_the_fuller_node(name: str, best: str) -> None:
    s = world({"b": (0, 0), "a": (500, 1000)})
    r = rank(s, req(300), [Weighted(make_policy(name, WorkloadMix((HALF,), (1.0,))))], opts=OPTS)
    assert r.ranked[0].node == best


def test_packing_scores_by_case() -> None:
    # idle node with 2 GPUs: max(33 - 2, 2) = 31; share on a used GPU with 500 free: 100 - (50 // 10) = 95;
    # a free GPU on a used node: 50 - 1 = 49
    s = world({"idle": (0, 0), "used": (500, 0), "full-ish": (1000, 0)})
    r = rank(s, req(300), [Weighted(make_policy("packing", WorkloadMix((HALF,), (1.0,))))], opts=OPTS)
    assert {x.node: x.score for x in r.ranked} == {"used": 95.0, "full-ish": 49.0, "idle": 31.0}


def test_random_picks_one_fitting_node_reproducibly() -> None:
    s = world({"a": (0,), "b": (0,), "c": (900,)})
    picks = [rank(s, req(500), [Weighted(make_policy("random", WorkloadMix((), ()), seed=7))], opts=OPTS).ranked[0].node
             for _ in range(2)]
    assert picks[0] == picks[1] and picks[0] in ("a", "b")


def test_every_named_policy_places_a_task() -> None:
    s = world({"a": (0, 0), "b": (300, 0)})
    for name in POLICIES:
        r = rank(s, req(400), [Weighted(make_policy(name, WorkloadMix((HALF,), (1.0,))))], opts=OPTS)
        assert r.ranked, name
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", WorkloadMix((), ()))


def test_knapsack() -> None:
    # cap 1000: 600 + 400 = value 1.7 beats 3 x 300 = 1.5 and 600 + 300 = 1.5
    value, counts = knapsack([600, 400, 300], [1.0, 0.7, 0.5], 1000)
    assert value == pytest.approx(1.7)
    assert counts == [1, 1, 0]


def test_cutting_stock_plan_pairs_sizes() -> None:
    # 600s and 400s in equal numbers: the LP pairs them, one GPU per pair, no waste
    plan = plan_patterns([600, 400], [10.0, 10.0], 1000)
    assert [p for p, _ in plan] == [(1, 1)]
    assert plan[0][1] == pytest.approx(10.0)


def test_planner_fills_the_planned_slot() -> None:
    # Plan for equal numbers of 600s and 400s: pattern 600 + 400. Node a's GPU 0 already holds a 600
    # (tagged with that pattern); node b's GPU 0 holds a 500. FGD alone would weigh both; the planner
    # puts the 400 next to the 600, which completes the planned GPU.
    mix = WorkloadMix((TaskShape(1000, 600, 1), TaskShape(1000, 400, 1)), (0.5, 0.5))
    s = world({"b": (500, 0), "a": (600, 0)})
    r = rank(s, req(400), [Weighted(make_policy("fracgpu", mix))], opts=OPTS)
    assert (r.ranked[0].node, r.ranked[0].gpus) == ("a", (0,))


@pytest.mark.parametrize("name", ["fgd", "fracgpu"])
def test_memoised_scores_equal_fresh_ones_as_the_state_changes(name: str) -> None:
    """FGD memoises its share evaluation per request shape and node row version: a long-lived policy
    placing 60 tasks scores exactly as a fresh policy on the same state would, at every step."""
    rng = np.random.default_rng(3)
    s = world({f"n{i}": (0, 0, 0, 0) for i in range(6)})
    mix = WorkloadMix((HALF, WHOLE, TaskShape(2000, 300, 1), TaskShape(500, 200, 1)), (0.4, 0.2, 0.2, 0.2))
    live = make_policy(name, mix)
    for step in range(60):
        units = int(rng.choice([200, 300, 500, 1000]))
        task = req(units, cpu=int(rng.choice([500, 2000])))
        got = rank(s, task, [Weighted(live)], opts=OPTS)
        fresh = rank(s, task, [Weighted(make_policy(name, mix))], opts=OPTS)
        assert [(x.node, x.gpus, x.score) for x in got.ranked] == [(x.node, x.gpus, x.score) for x in fresh.ranked]
        if not got.ranked:
            break
        top = got.ranked[0]
        s.add_pod(f"t{step}", PodUse(top.node, tuple(GpuUse(f"{top.node}-{g}", units, 0) for g in top.gpus),
                                     cpu_milli=task.cpu_milli))
