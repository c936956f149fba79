"""Fit and ranking on small worlds: which node, which GPU, and why not."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fracgpu.api.v1beta1.inventory import GpuInfo, GpuLink, LinkClass
from fracgpu.core.cluster import ClusterState, GpuUse, NodeSpec, PodUse
from fracgpu.core.fit import FitOptions, fit
from fracgpu.core.ranking import BestFit, Spread, TopologyQuality, Weighted, rank
from fracgpu.core.request import GpuRequest, ModelRule

GI = 1024**3


def gpus(prefix: str, n: int, model: str = "A100-SXM4-80GB", memory: int = 80 * GI) -> tuple[GpuInfo, ...]:
    return tuple(GpuInfo(uuid=f"{prefix}-{i}", index=i, model=model, memory=memory, numa=i // 4) for i in range(n))


def node(name: str, n: int = 8, priority: int = 0, **kw: object) -> NodeSpec:
    return NodeSpec(name=name, gpus=gpus(name, n, **kw), cpu_milli=64000, memory_bytes=512 * GI,  # type: ignore[arg-type]
                    priority=priority)


def share(cores: int, memory: int | None = None, **kw: object) -> GpuRequest:
    return GpuRequest(cores=cores, memory=memory, **kw)  # type: ignore[arg-type]


def world_two_half_used() -> ClusterState:
    """Node a: 8 A100s, GPUs 0 and 1 half used. Node b: 8 idle A100s."""
    s = ClusterState()
    s.upsert_node(node("a", priority=0))
    s.upsert_node(node("b", priority=1))
    for i in (0, 1):
        s.add_pod(f"ns/p{i}", PodUse("a", (GpuUse(f"a-{i}", 50, 40 * GI),)))
    return s


@dataclass(frozen=True)
class Case:
    name: str
    req: GpuRequest
    best: str | None
    gpus: tuple[int, ...] = ()
    reason_b: str | None = None


CASES = [
    # a share fills a half-used GPU on a (binpack): GPU 0 has 50 free, the least that fits
    Case("50 cores go to a half-used GPU", share(50), "a", (0,)),
    # 60 cores fit no half-used GPU; a still has 6 idle GPUs and is fuller, so it wins over b
    Case("60 cores open an idle GPU on the fuller node", share(60), "a", (2,)),
    Case("8 whole GPUs only fit the idle node", share(800), "b", (0, 1, 2, 3, 4, 5, 6, 7)),
    Case("model rule excludes everything", share(10, model_rule=ModelRule.parse("H100*")), None,
         reason_b="no GPU of a model allowed by 'H100*'"),
    Case("memory larger than any GPU", share(10, memory=81 * GI), None,
         reason_b="no single GPU with 10 free vgpu-core and 81Gi free vgpu-memory"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_binpack_ranking(case: Case) -> None:
    s = world_two_half_used()
    r = rank(s, case.req, [Weighted(BestFit())])
    if case.best is None:
        assert r.ranked == []
        assert r.unresolvable.get("b", r.failed.get("b")) == case.reason_b
    else:
        assert r.ranked[0].node == case.best
        assert r.ranked[0].gpus == case.gpus


def test_identical_reasons_for_identical_causes() -> None:
    s = ClusterState()
    for i in range(5):
        s.upsert_node(node(f"n{i}", n=1))
        s.add_pod(f"ns/p{i}", PodUse(f"n{i}", (GpuUse(f"n{i}-0", 70, 10 * GI),)))
    r = rank(s, share(40), [Weighted(BestFit())])
    assert set(r.failed.values()) == {"no single GPU with 40 free vgpu-core and 40% of its memory free"}


def test_ties_break_on_fixed_priority_not_order() -> None:
    s = ClusterState()
    for name, prio in (("x", 3), ("y", 1), ("z", 2)):
        s.upsert_node(node(name, priority=prio))
    assert [r.node for r in rank(s, share(30), [Weighted(BestFit())]).ranked] == ["y", "z", "x"]


def test_unhealthy_and_unusable_nodes_are_unresolvable() -> None:
    s = ClusterState()
    sick = (GpuInfo(uuid="s-0", index=0, model="T4", memory=16 * GI, numa=0, healthy=False, reason="xid 79"),)
    s.upsert_node(NodeSpec("sick", sick, cpu_milli=1000, memory_bytes=GI))
    s.upsert_node(NodeSpec("stale", gpus("stale", 1), cpu_milli=1000, memory_bytes=GI, unusable="GPU heartbeat stale"))
    r = rank(s, share(10), [Weighted(BestFit())], opts=FitOptions(check_host=False))
    assert r.unresolvable == {"sick": "no healthy GPU of an allowed model", "stale": "GPU heartbeat stale"}


def test_spread_prefers_the_emptiest_gpu() -> None:
    s = world_two_half_used()
    top = rank(s, share(20), [Weighted(Spread())]).ranked[0]
    assert (top.node, top.gpus) == ("b", (0,))


def test_topology_prefers_nvlinked_pair() -> None:
    """Node t: GPUs 0-3, only 2 and 3 joined by NVLink. A 2-GPU pod should take 2 and 3."""
    base = list(gpus("t", 4))
    base[2] = GpuInfo("t-2", 2, base[2].model, base[2].memory, 0, links=(GpuLink("t-3", LinkClass.NVLINK, 12),))
    s = ClusterState()
    s.upsert_node(NodeSpec("t", tuple(base), cpu_milli=1000, memory_bytes=GI))
    r = rank(s, share(200, topology="required"), [Weighted(BestFit()), Weighted(TopologyQuality())])
    assert r.ranked[0].gpus == (2, 3)
    s.add_pod("ns/x", PodUse("t", (GpuUse("t-3", 10, GI),)))
    r = rank(s, share(200, topology="required"), [Weighted(BestFit())])
    assert r.failed == {"t": "no 2 free GPUs joined by the node's best link (topology: required)"}


def test_undo_restores_capacity_and_node_update_recharges_pods() -> None:
    s = world_two_half_used()
    before = s.free_cores.copy()
    undo = s.add_pod("ns/new", PodUse("b", (GpuUse("b-0", 100, 80 * GI),)))
    undo()
    assert (s.free_cores == before).all()
    s.upsert_node(node("a", priority=0))  # inventory rewritten: pods on it are charged again
    assert s.free_cores[s.index["a"], 0] == 50
    assert fit(s, share(10), s.rows_of(["a"])[0]).rows.tolist() == [s.index["a"]]


def test_linked_set_follows_an_inventory_change() -> None:
    """The best-linked pair is memoised per node; a new inventory with other links must not reuse it."""
    def with_nvlink(a: int, b: int) -> NodeSpec:
        base = list(gpus("m", 4))
        base[a] = GpuInfo(f"m-{a}", a, base[a].model, base[a].memory, 0, links=(GpuLink(f"m-{b}", LinkClass.NVLINK, 4),))
        return NodeSpec("m", tuple(base), cpu_milli=1000, memory_bytes=GI)

    s = ClusterState()
    s.upsert_node(with_nvlink(0, 1))
    assert rank(s, share(200), [Weighted(BestFit())]).ranked[0].gpus == (0, 1)
    s.upsert_node(with_nvlink(2, 3))
    assert rank(s, share(200), [Weighted(BestFit())]).ranked[0].gpus == (2, 3)
