"""Device-plugin crash points over the real unix-socket gRPC with the in-test kubelet: several faults
in one run, then the node's books are checked from the pods' annotations.

(The single faults each have their own test in tests/deviceplugin/: test_restart.py,
test_registration.py. This one chains them.)
"""

from __future__ import annotations

import grpc
import pytest

from fracgpu.api.v1beta1.assignment import Assignment
from fracgpu.api.v1beta1.names import ANN_ASSIGNED, ANN_PHASE, PHASE_ALLOCATED, PHASE_ALLOCATING
from tests.deviceplugin.conftest import node, world  # noqa: F401  (the plugin's worlds, reused)
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import World


def books(w: World) -> dict[str, str]:
    """Device ID -> the pod whose reservation holds it; fails on an ID held twice or a GPU past 100."""
    owner: dict[str, str] = {}
    cores: dict[str, int] = {}
    for key, p in w.cluster.pods.items():
        text = (p["metadata"].get("annotations") or {}).get(ANN_ASSIGNED)
        if not text:
            continue
        for g in Assignment.from_json(text).gpus:
            cores[g.uuid] = cores.get(g.uuid, 0) + g.cores
            for i in g.device_ids:
                assert i not in owner, f"{i} held by {owner[i]} and {key}"
                owner[i] = key
    assert all(c <= 100 for c in cores.values()), cores
    return owner


def test_crash_between_allocate_and_phase_write_then_kubelet_restart(node: World) -> None:  # noqa: F811
    w = node
    w.add_pod("a", [Container("main", 40)], [0])
    w.add_pod("b", [Container("main", 60)], [0])
    w.cluster.fail_writes = True  # the API server is unreachable: the phase write after Allocate fails
    assert w.admit("a").error is None
    w.stop_plugin()  # the plugin dies before it could write `allocated`
    assert w.annotations("a")[ANN_PHASE] == PHASE_ALLOCATING
    w.cluster.fail_writes = False
    w.kubelet.restart()  # and the kubelet restarts meanwhile: kubelet.sock is recreated
    w.start_plugin()
    w.kubelet.wait_connected(registrations=2)
    w.settle()
    assert w.annotations("a")[ANN_PHASE] == PHASE_ALLOCATED  # re-marked from the kubelet's PodResources
    # a's devices are held: the kubelet offering them again (stale state) is refused
    with pytest.raises(grpc.RpcError) as err:
        w.kubelet.allocate_raw(sorted(w.assignment("a").device_ids))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # b, reserved before the crash, is admitted on its own IDs
    adm = w.admit("b")
    assert adm.error is None and not set(adm.devices["main"]) & set(w.assignment("a").device_ids)
    w.settle()
    owner = books(w)
    assert len(owner) == 100  # 40 + 60 on GPU 0, nothing twice
    held = {i for (_, _), ids in w.kubelet.allocated.items() for i in ids}
    assert held == set(owner)  # what the kubelet holds is what the reservations say
