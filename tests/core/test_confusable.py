"""The confusable-allocating rule (DESIGN flow step 5) as a table."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from fracgpu.api.v1beta1.assignment import Assignment, ContainerShare, GpuShare
from fracgpu.core.confusable import AllocatingPod, blocker, confusable, is_stuck, reason_confusable

GI = 1024**3


def res(pod: str, gpus: tuple[tuple[str, int], ...], counts: tuple[int, ...], at: float = 1000.0) -> AllocatingPod:
    return AllocatingPod(pod, gpus, frozenset(counts), at)


@dataclass(frozen=True)
class Case:
    name: str
    a: AllocatingPod
    b: AllocatingPod
    confused: bool


CASES = [
    Case("same count, same GPU, same VRAM: interchangeable",
         res("p", (("g0", 8 * GI),), (50,)), res("q", (("g0", 8 * GI),), (50,)), False),
    Case("same count, other GPU", res("p", (("g0", 8 * GI),), (50,)), res("q", (("g1", 8 * GI),), (50,)), True),
    Case("same count, same GPU, other VRAM",
         res("p", (("g0", 8 * GI),), (50,)), res("q", (("g0", 4 * GI),), (50,)), True),
    Case("different counts never confuse", res("p", (("g0", 8 * GI),), (50,)), res("q", (("g1", GI),), (30,)), False),
    # a two-container pod (20 + 30) and a 30-core pod elsewhere: the 30-core containers look alike
    Case("one container count in common is enough",
         res("p", (("g0", 8 * GI),), (20, 30)), res("q", (("g1", 8 * GI),), (30,)), True),
    Case("whole GPUs: same count, other GPU set",
         res("p", (("g0", 80 * GI), ("g1", 80 * GI)), (200,)), res("q", (("g2", 80 * GI), ("g3", 80 * GI)), (200,)),
         True),
    Case("a pod is never confused with itself", res("p", (("g0", GI),), (50,)), res("p", (("g1", GI),), (50,)), False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_confusable(case: Case) -> None:
    assert confusable(case.a, case.b) is case.confused
    assert confusable(case.b, case.a) is case.confused


def test_stuck_allocating_pods_stop_blocking() -> None:
    old = res("q", (("g1", GI),), (50,), at=1000.0)
    new = res("p", (("g0", GI),), (50,), at=1100.0)
    assert blocker(new, [old], now=1100.0, timeout_s=300) == old
    assert not is_stuck(old, 1300.0, 300)
    assert blocker(new, [old], now=1300.1, timeout_s=300) is None


def test_allocating_pod_of_an_assignment_uses_container_counts() -> None:
    a = Assignment(
        node="n", tenant="ns/x", assigned_at="2026-11-22T22:17:15Z",
        gpus=(GpuShare("g0", 50, 8 * GI, tuple(f"g0::{k}" for k in range(50))),),
        containers=(ContainerShare("init", "init", tuple(f"g0::{k}" for k in range(50))),
                    ContainerShare("app", "app", tuple(f"g0::{k}" for k in range(20)))),
    )
    r = AllocatingPod.of("x/p", a)
    assert r.counts == frozenset({50, 20})
    assert r.gpus == (("g0", 8 * GI),)
    assert r.assigned_at == 1795385835.0  # 2026-11-22T22:17:15Z
    assert AllocatingPod.of("x/p", replace(a, assigned_at="garbage")).assigned_at == 0.0  # unreadable: long stuck


def test_reason_is_the_pods_own_numbers() -> None:
    assert reason_confusable([30, 20]).startswith("a pod with containers of the same vgpu-core count (20, 30)")
