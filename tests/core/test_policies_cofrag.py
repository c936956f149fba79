"""fracgpu's two additions to FGD's gradient on small worlds (docs/packing.md, "The policies"):
CPU-GPU co-fragmentation (`fragmentation.stranded`) and GPU-model pressure (`fragmentation.model_pressure`).

Each case is a world where the paper's FGD sees no difference between the nodes (equal scores, so
the fixed node priority decides: the first node listed) and fracgpu's default does."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.cluster import ClusterState, GpuUse, NodeSpec, PodUse
from fracgpu.core.fit import FitOptions
from fracgpu.core.fragmentation import FragModel, TaskShape, WorkloadMix, cpu_reserve, model_pressure, stranded
from fracgpu.core.policies import make_policy
from fracgpu.core.ranking import Weighted, rank
from fracgpu.core.request import GpuRequest, ModelRule

U = 1000
OPTS = FitOptions(reasons=False)


@dataclass(frozen=True)
class Node:
    gpus: int
    cpu: int
    model: str = "A100"


def world(nodes: dict[str, Node]) -> ClusterState:
    """Idle nodes by name; priority = insertion order (the first node wins ties)."""
    s = ClusterState(units_per_gpu=U)
    for prio, (name, n) in enumerate(nodes.items()):
        gpus = tuple(GpuInfo(uuid=f"{name}-{i}", index=i, model=n.model, memory=0, numa=-1) for i in range(n.gpus))
        s.upsert_node(NodeSpec(name=name, gpus=gpus, cpu_milli=n.cpu, memory_bytes=1 << 40, priority=prio))
    return s


def req(units: int, gpus: int, cpu: int, models: tuple[str, ...] = ()) -> GpuRequest:
    rule = ModelRule(allow=models, text="|".join(models)) if models else ModelRule()
    return GpuRequest(cores=units * gpus, memory=None, cpu_milli=cpu, model_rule=rule, units_per_gpu=U)


WHOLE6 = TaskShape(cpu_milli=6000, units=1000, gpus=1)  # 6 CPUs per GPU: rho = 6000 / 1000 units
CPU_ONLY = TaskShape(cpu_milli=8000, units=0, gpus=0)
ANY = TaskShape(cpu_milli=1000, units=1000, gpus=1)
T4_ONLY = TaskShape(cpu_milli=1000, units=1000, gpus=1, models=("T4",))
A100_ONLY = TaskShape(cpu_milli=1000, units=1000, gpus=1, models=("A100",))
BOUND_MIX = WorkloadMix((ANY, T4_ONLY, A100_ONLY), (0.5, 0.25, 0.25))


@dataclass(frozen=True)
class Case:
    name: str
    nodes: dict[str, Node]
    mix: WorkloadMix
    task: GpuRequest
    fgd: str
    fracgpu: str


CASES = [
    # poor: 3 GPUs, 16 CPUs serve 16000 / 6 = 2667 units of GPU: 333 stranded; after a 1-GPU task with
    # 8 CPUs: 2000 idle, 8000 / 6 = 1333 served: 667 stranded (+333). FGD: WHOLE6 still fits either way.
    Case("a CPU-hungry GPU task goes where the CPU is",
         {"poor": Node(3, 16_000), "rich": Node(3, 64_000)}, WorkloadMix((WHOLE6,), (1.0,)),
         req(1000, 1, 8000), fgd="poor", fracgpu="rich"),
    # rho = 6 (WHOLE6; CPU-only tasks do not count). gpu: 3 idle GPUs, 20 CPUs serve 3333 units, none
    # stranded; a CPU-only task of 8 CPUs leaves 12: 2000 served, 1000 stranded. cpu-rich strands
    # nothing either way. FGD: WHOLE6 still fits, and a CPU-only shape sees all idle GPU anyway.
    Case("a CPU-only task goes where it strands no GPU",
         {"gpu": Node(3, 20_000), "cpu-rich": Node(3, 200_000)}, WorkloadMix((WHOLE6, CPU_ONLY), (0.5, 0.5)),
         req(0, 0, 8000), fgd="gpu", fracgpu="cpu-rich"),
    # a quarter of the demand can run only on T4, a quarter only on A100; the T4 node is the smaller:
    # pressure T4 = min(1, .25 x 8000 / 2000) = 1, A100 = .25 x 8000 / 6000 = .33. FGD: each node's F
    # falls by the same 250 (the other model's bound quarter of one GPU).
    Case("a task free to run anywhere leaves the scarcer model to the tasks bound to it",
         {"t4": Node(2, 64_000, "T4"), "a100": Node(6, 64_000, "A100")}, BOUND_MIX,
         req(1000, 1, 1000), fgd="t4", fracgpu="a100"),
    Case("a task bound to a model still gets it",
         {"t4": Node(2, 64_000, "T4"), "a100": Node(6, 64_000, "A100")}, BOUND_MIX,
         req(1000, 1, 1000, ("T4",)), fgd="t4", fracgpu="t4"),
    # both nodes CPU-rich and the mix unbound: nothing to add, the planner opens the first free GPU as FGD does
    Case("no CPU shortage, no bound models: as FGD",
         {"a": Node(2, 64_000), "b": Node(2, 64_000)}, WorkloadMix((ANY,), (1.0,)),
         req(1000, 1, 1000), fgd="a", fracgpu="a"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("policy", ["fgd", "fracgpu"])
def test_placement(case: Case, policy: str) -> None:
    s = world(case.nodes)
    r = rank(s, case.task, [Weighted(make_policy(policy, case.mix))], opts=OPTS)
    assert r.ranked[0].node == (case.fgd if policy == "fgd" else case.fracgpu)


@pytest.mark.parametrize(
    ("idle", "cpu_free", "cpu_total", "rho", "expect"),
    [
        (3000, 16_000, 16_000, 6.0, 3000 - 16_000 / 6),  # CPU serves 2667 of 3000 idle units
        (2000, 64_000, 64_000, 6.0, 0.0),  # CPU to spare
        (3000, 0, 0, 6.0, 0.0),  # CPU not tracked (allocatable 0): nothing stranded
        (3000, 1000, 16_000, 0.0, 0.0),  # a mix without GPU shapes
        (1000, -500, 16_000, 6.0, 1000 + 500 / 6),  # an over-committed node strands all its idle GPU, and more
    ],
)
def test_stranded(idle: int, cpu_free: int, cpu_total: int, rho: float, expect: float) -> None:
    got = stranded(np.array([idle]), np.array([cpu_free]), np.array([cpu_total]), rho)
    assert got[0] == pytest.approx(expect)


def test_cpu_per_unit_is_the_gpu_tasks_cpu_per_gpu_unit() -> None:
    # (.4 x 4000 + .4 x 12000) CPU over (.4 x 500 + .4 x 2 x 1000) units; CPU-only tasks do not count
    mix = WorkloadMix((TaskShape(4000, 500, 1), TaskShape(12_000, 1000, 2), CPU_ONLY), (0.4, 0.4, 0.2))
    assert FragModel(mix).cpu_per_unit == pytest.approx(6400 / 1000)
    assert FragModel(WorkloadMix((CPU_ONLY,), (1.0,))).cpu_per_unit == 0.0


@pytest.mark.parametrize(
    ("mix", "expect"),
    [
        (BOUND_MIX, {"T4": 1.0, "A100": 0.25 * 8000 / 6000}),
        (WorkloadMix((ANY,), (1.0,)), {"T4": 0.0, "A100": 0.0}),  # nothing bound: no pressure
        # bound to either model: spread by capacity (2:6), .5 x 8000 x 2/8 / 2000 = .5 on both
        (WorkloadMix((ANY, TaskShape(1000, 1000, 1, ("T4", "A100"))), (0.5, 0.5)), {"T4": 0.5, "A100": 0.5}),
    ],
)
def test_model_pressure(mix: WorkloadMix, expect: dict[str, float]) -> None:
    s = world({"t4": Node(2, 64_000, "T4"), "a100": Node(6, 64_000, "A100")})
    press = model_pressure(s, FragModel(mix))
    assert {m: press[i] for m, i in s.models().items()} == pytest.approx(expect)


def test_a_model_with_nothing_free_is_fully_pressed() -> None:
    s = world({"t4": Node(2, 64_000, "T4"), "a100": Node(6, 64_000, "A100")})
    for i in range(2):
        s.add_pod(f"p{i}", PodUse("t4", (GpuUse(f"t4-{i}", U, 0),), cpu_milli=1000))
    press = model_pressure(s, FragModel(BOUND_MIX))
    assert press[s.models()["T4"]] == 1.0
    assert press[s.models()["A100"]] == pytest.approx(0.25)  # .25 x 6000 free / 6000


@pytest.mark.parametrize(
    ("cpu_per_node", "rho"),
    [
        # the mix asks 6 CPUs per GPU for GPU tasks, 14 counting its CPU-only tasks; 6 GPUs in all
        (64_000, 6.0),  # 128 CPUs >= 14 x 6 GPUs: CPU-only tasks fit on spare CPU, keep only the GPU tasks'
        (40_000, 14.0),  # 80 CPUs < 84: keep CPU for the CPU-only tasks' share too
        (0, 6.0),  # CPU not tracked
    ],
)
def test_cpu_reserve(cpu_per_node: int, rho: float) -> None:
    s = world({"a": Node(3, cpu_per_node), "b": Node(3, cpu_per_node)})
    model = FragModel(WorkloadMix((WHOLE6, CPU_ONLY), (0.5, 0.5)))
    assert (model.cpu_per_unit, model.cpu_per_unit_all) == pytest.approx((6.0, 14.0))
    assert cpu_reserve(s, model) == pytest.approx(rho)
