"""Killing and restarting the plugin never hands one slot to two pods."""

from __future__ import annotations

import grpc
import pytest

from fracgpu.api.v1beta1.names import ANN_PHASE, PHASE_ALLOCATED, PHASE_ALLOCATING
from fracgpu.deviceplugin.server import PluginServer, ServerConfig
from tests.deviceplugin.kubelet import Container
from tests.deviceplugin.world import World, gpu_uuid


def on_gpu(i: int) -> object:
    def choose(offer: list[str], must: list[str], size: int, preferred: list[str]) -> list[str]:
        return [d for d in offer if d.startswith(gpu_uuid(i))][:size]

    return choose


def test_restart_rebuilds_holdings_and_repairs_what_was_not_written(node: World) -> None:
    node.add_pod("a", [Container("main", 50)], [0])
    node.add_pod("b", [Container("main", 100)], [1])
    node.add_pod("c", [Container("main", 30)], [2])  # reserved, admitted only after the restart
    node.add_pod("d", [Container("main", 40)], [0])
    assert node.admit("a").error is None
    assert node.admit("b").error is None
    node.settle()
    # d is served on GPU 3 (the kubelet chose it) but the API server is down: the move is not recorded
    node.cluster.fail_writes = True
    assert node.admit("d", chooser=on_gpu(3)).error is None  # type: ignore[arg-type]
    node.stop_plugin()  # killed with its writes undone
    assert [g.uuid for g in node.assignment("d").gpus] == [gpu_uuid(0)]
    assert node.annotations("d")[ANN_PHASE] == PHASE_ALLOCATING
    node.cluster.fail_writes = False

    node.start_plugin()
    node.kubelet.wait_connected(registrations=2)
    node.settle()
    # rebuilt from PodResources: d's reservation follows the kubelet, and it is marked allocated
    assert [g.uuid for g in node.assignment("d").gpus] == [gpu_uuid(3)]
    assert node.annotations("d")[ANN_PHASE] == PHASE_ALLOCATED
    assert node.metrics.registry.get_sample_value("fracgpu_deviceplugin_reservation_repairs_total", {"kind": "moved"}) == 1
    # a stale kubelet offering a's devices again is refused: they are held
    with pytest.raises(grpc.RpcError) as err:
        node.kubelet.allocate_raw(sorted(node.assignment("a").device_ids))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # c is served its own reservation, disjoint from everything the kubelet holds
    adm = node.admit("c")
    assert adm.error is None
    held = {i for (pod, _), ids in node.kubelet.allocated.items() if pod != "default/c" for i in ids}
    assert not set(adm.devices["main"]) & held
    # and GPU 0's room is what is left after a (50): d no longer counts there
    assert node.app is not None
    usage = node.app.plugin.ledger.allocated()
    assert usage[gpu_uuid(0)][0] == 50 and usage[gpu_uuid(3)][0] == 40


def test_restart_without_podresources_keeps_reservations(node: World) -> None:
    node.add_pod("a", [Container("main", 50)], [0])
    assert node.admit("a").error is None
    node.stop_plugin()
    node.kubelet.podresources_enabled = False
    node.start_plugin()
    node.kubelet.wait_connected(registrations=2)
    node.add_pod("b", [Container("main", 50)], [0])
    adm = node.admit("b")
    assert adm.error is None
    assert not set(adm.devices["main"]) & set(node.kubelet.allocated[("default/a", "main")])


def test_a_second_plugin_waits_for_the_first_to_let_go(node: World) -> None:
    second = PluginServer(ServerConfig(socket_dir=node.dir, lock_file=node.lock_file, lock_timeout=0.2),
                          lambda server, stop: None)
    with pytest.raises(RuntimeError, match="another fracgpu device plugin"):
        second.start()
