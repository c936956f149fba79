"""Device IDs of a reservation and each container's share, following the kubelet's pooling."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fracgpu.core.request import ContainerDemand, GpuRequest
from fracgpu.core.reservation import NoFreeDeviceIds, build_assignment, free_indices, split_containers

GI = 1024**3


def c(name: str, kind: str, cores: int) -> ContainerDemand:
    return ContainerDemand(name, kind, cores, None)


@dataclass(frozen=True)
class Case:
    name: str
    containers: tuple[ContainerDemand, ...]
    total: int  # the pod's effective request (what the walk consumes)
    sizes: tuple[int, ...]
    overlap: tuple[tuple[str, str], ...] = ()  # container pairs that share ids (pooling)


CASES = [
    Case("one app container", (c("a", "app", 50),), 50, (50,)),
    Case("two app containers split the ids", (c("a", "app", 20), c("b", "app", 30)), 50, (20, 30)),
    # init 40 then app 30: effective max(40, 30) = 40; the app reuses 30 of the init pool
    Case("init pool reused by the app", (c("i", "init", 40), c("a", "app", 30)), 40, (40, 30), (("i", "a"),)),
    # sidecar 10 keeps its ids; init 20 pools; app 30 takes the 20 pooled + 10 fresh: 10 + 20 + 10 = 40
    Case("sidecar not pooled", (c("s", "sidecar", 10), c("i", "init", 20), c("a", "app", 30)), 40, (10, 20, 30),
         (("i", "a"),)),
    Case("containers without GPUs get nothing", (c("x", "app", 0), c("a", "app", 10)), 10, (10,)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda k: k.name)
def test_split_follows_kubelet_pooling(case: Case) -> None:
    ids = [f"g::{k}" for k in range(case.total)]
    shares = split_containers(case.containers, ids)
    assert tuple(len(s.device_ids) for s in shares) == case.sizes
    used = {i for s in shares for i in s.device_ids}
    assert used == set(ids)  # every reserved id is handed out, none invented
    by_name = {s.name: set(s.device_ids) for s in shares}
    for x, y in case.overlap:
        assert by_name[x] & by_name[y]
    for s in shares:
        assert len(set(s.device_ids)) == len(s.device_ids)


def test_free_indices_skip_held_ids() -> None:
    assert free_indices(0b1011, 3) == [2, 4, 5]
    with pytest.raises(NoFreeDeviceIds):
        free_indices((1 << 95) - 1, 6)


def test_build_assignment_whole_gpus() -> None:
    req = GpuRequest(cores=200, memory=None, containers=(c("a", "app", 200),))
    a = build_assignment(req, "n", "ns/x", "2026-01-01T00:00:00Z", [("g0", 80 * GI), ("g1", 80 * GI)], [0, 0])
    assert [(g.uuid, g.cores, g.memory) for g in a.gpus] == [("g0", 100, 80 * GI), ("g1", 100, 80 * GI)]
    assert len(a.containers[0].device_ids) == 200
    assert a.device_ids == {f"g{j}::{k}" for j in (0, 1) for k in range(100)}
